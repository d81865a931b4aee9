"""Scale: epoch time and peak memory against train-set size and batch size.

Each configuration runs in its own subprocess (`python -m advmem.bench.scale '<json>'`), so
peak memory is that configuration's alone. On CPU the peak is the process's resident-set
high-water mark (VmHWM) during the epoch, measured from the RSS after setup: Linux lets the
high-water mark be reset (`/proc/self/clear_refs` <- 5), which isolates the epoch from the
dataset-reading peak; where that is not possible, `resource.getrusage` maxrss is used and the
figure is an upper bound that includes setup. On CUDA it is `torch.cuda.max_memory_allocated`.
Expected: time linear in the number of images, working memory flat in it (the resident
dataset and any per-sample buffers, N x C floats, are the only parts that grow).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from advmem.bench.common import Section, Settings, data_section, fresh_sums, make_trainer, table

K_SCALE = 10


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(cfg: dict) -> dict:
    """Set up a trainer for `cfg`, warm up, reset the memory peak, time one epoch."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    settings = Settings(device=torch.device(cfg["device"]))
    recipe = {"data": cfg["data"], "model": cfg["model"], "method": {"name": "pgd_at"},
              "attack": {"steps": cfg["steps"]}, "optim": {"batch_size": cfg["batch_size"], "epochs": 1},
              "eval": {"train_subset": 0}, "perf": cfg.get("perf", {})}
    trainer = make_trainer(recipe, settings)
    warm = next(trainer.bundle.train.batches(cfg["batch_size"], shuffle=False))
    trainer.train_step(warm, 1, 1, fresh_sums(settings.device))
    del warm
    gc.collect()
    cuda = settings.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        method = "torch.cuda.max_memory_allocated"
    else:
        rss_after_setup = _status_kb("VmRSS")
        if rss_after_setup is not None and _reset_peak():
            base, method = rss_after_setup * 1024, "VmHWM reset after setup"
        else:
            base, method = 0, "getrusage maxrss (includes setup)"
    t0 = time.perf_counter()
    row = trainer.train_epoch(1)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    elif method.startswith("VmHWM"):
        peak = (_status_kb("VmHWM") or 0) * 1024 - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    train = trainer.bundle.train
    return {"n": len(train), "batch_size": cfg["batch_size"], "seconds": seconds, "peak_bytes": max(peak, 0),
            "memory_method": method, "dataset_bytes": train.x.numel() * train.x.element_size(),
            "num_classes": trainer.bundle.num_classes, "loss": row["train_loss"]}


def _run_config(cfg: dict) -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "advmem.bench.scale", json.dumps(cfg)], capture_output=True,
                          text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mb(b: float) -> str:
    return f"{b / 2**20:.1f}"


def run(settings: Settings) -> Section:
    section = Section("Scale: epoch time and memory vs train-set size and batch size")
    model = ({"name": "small_cnn", "kwargs": {"width": 8, "hidden": 64}} if not settings.tiny
             else {"name": "small_cnn", "kwargs": {"width": 4, "hidden": 16}})
    sizes = settings.pick([1_000, 10_000, 60_000], [500, 2_000, 8_000], [64])
    batches = settings.pick([32, 128, 512], [32, 128, 512], [32])
    n_fixed = settings.pick(10_000, 2_000, 64)
    steps = settings.pick(K_SCALE, K_SCALE, 2)

    def cfg(n: int, bs: int) -> dict:
        return {"device": settings.device.type, "data": data_section(settings, n, test_size=64), "model": model,
                "batch_size": bs, "steps": steps, "threads": torch.get_num_threads()}

    section.add(
        f"PGD-{steps} AT epoch of small_cnn {model['kwargs']} on "
        f"{cfg(sizes[0], 128)['data']['dataset']}, one subprocess per row (time includes no setup; one warm-up step "
        "is excluded). Peak = working memory of the epoch above the state after setup "
        "(method in the last column). Per-sample buffer = N x C float32, the size of one per-sample "
        "table such as TE's ensemble targets.",
        "",
    )
    rows = []
    by_size = []
    for n in sizes:
        r = _run_config(cfg(n, 128))
        by_size.append(r)
        rows.append(_row(r, n, 128))
    section.add("Against train-set size (batch 128):", "", *table(
        ["N", "batch", "epoch s", "ms / image", "peak working MB", "dataset MB (uint8, resident)",
         "per-sample buffer N x C MB", "memory method"], rows), "")
    ok = [r for r in by_size if "error" not in r]
    if len(ok) >= 2:
        per_img = [r["seconds"] / r["n"] for r in ok]
        section.add(f"Time per image from smallest to largest N: {per_img[-1] / per_img[0]:.2f}x "
                    "(1.00 = exactly linear in N); working memory from smallest to largest N: "
                    f"{_mb(ok[0]['peak_bytes'])} -> {_mb(ok[-1]['peak_bytes'])} MB.", "")
    rows = [_row(_run_config(cfg(n_fixed, bs)), n_fixed, bs) for bs in batches]
    section.add(f"Against batch size (N = {n_fixed}):", "", *table(
        ["N", "batch", "epoch s", "ms / image", "peak working MB", "dataset MB (uint8, resident)",
         "per-sample buffer N x C MB", "memory method"], rows))
    return section


def _row(r: dict, n: int, bs: int) -> list:
    if "error" in r:
        return [n, bs, "failed: " + r["error"][:80], "", "", "", "", ""]
    return [r["n"], r["batch_size"], f"{r['seconds']:.2f}", f"{1e3 * r['seconds'] / r['n']:.2f}",
            _mb(r["peak_bytes"]), _mb(r["dataset_bytes"]), _mb(r["n"] * r["num_classes"] * 4), r["memory_method"]]


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
