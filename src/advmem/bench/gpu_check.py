"""`python -m advmem.bench gpu-check`: validate a CUDA machine in one call, within 9 minutes.

Why one call: GPU time comes in short loans, so everything that only a GPU can show runs
from one prepared command, and what it finds is written down even when a stage fails:

1. the GPU-marked tests (`pytest -m gpu`: no host sync in the step, bf16/fp16, compile and
   cuda_graphs against eager) in a subprocess;
2. PreActResNet-18 PGD-10 on CIFAR-10-shaped data (real CIFAR-10 when `--data-root` holds it,
   else synthetic), one timed epoch in fp32 and one in bf16 from the same weights, with
   images/s and model-FLOP utilisation (FLOP model in `gpu.py`), then natural and PGD-20
   accuracy of both models by one evaluator (fp32): bf16 must land within a stated tolerance
   of fp32;
3. a DDP smoke test under torchrun on NCCL (`ddp_worker.py`; advmem's DDP path forced on when
   there is one GPU): a run of 2 epochs, the same run stopped by SIGTERM after epoch 1 and
   resumed, and the resumed run's final weights against the uninterrupted run's.

It writes BENCHMARKS.md's GPU section in place (the rest of the file is kept, old GPU goal rows
are replaced) and a JSON of everything. Exit 0 when every stage passed, 1 when one failed,
2 without CUDA. `run_check` takes any device, so the plumbing is tested on CPU at tiny sizes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from advmem.bench.common import Goal, Section, Settings, common_evaluator, git_commit, make_trainer
from advmem.bench.common import python_module_command
from advmem.bench.gpu import cifar_data, device_peak, mfu, pgd_recipe, timed_epoch, warm_up
from advmem.io import atomic_write_text
from advmem.engine.checkpoint import build_from_checkpoint
from advmem.engine.distributed import child_env

BUDGET_S = 540  # 9 minutes for the whole check
REFUSAL = ("python -m advmem.bench gpu-check: needs a CUDA GPU, and torch sees none "
           "(torch.cuda.is_available() is False); run it on a GPU machine")
GPU_TITLE = "GPU: PreActResNet-18 PGD-10 epoch"
OLD_GPU_GOALS = ("| GPU check", "| PRN-18 PGD-10")  # goal rows this check replaces (its own and `gpu`'s)
SRC = Path(__file__).resolve().parents[2]
ROOT = SRC.parent


def main(args, argv: list[str]) -> int:
    if not torch.cuda.is_available():
        print(REFUSAL, file=sys.stderr)
        return 2
    settings = Settings(device=torch.device("cuda"), quick=args.quick, tiny=args.tiny, data_root=args.data_root,
                        peak_tflops=args.peak_tflops)
    out = Path(args.out)
    json_path = Path(args.json) if args.json else out.with_name("gpu-check.json")
    report = run_check(settings, command=python_module_command(argv))
    write(report, out, json_path)
    for name, stage in report["stages"].items():
        print(f"[gpu-check] {name}: {stage['status']}" + (f" ({stage['why']})" if stage.get("why") else ""),
              file=sys.stderr)
    print(f"[gpu-check] wrote {out} and {json_path}", file=sys.stderr)
    return 0 if report["ok"] else 1


def run_check(settings: Settings, *, command: str, budget_s: float = BUDGET_S,
              pytest_args: list[str] | None = None) -> dict[str, Any]:
    """Every stage, each under what is left of the budget; a failing stage is recorded, not fatal."""
    started = time.time()
    deadline = time.monotonic() + budget_s
    dev = settings.device
    report: dict[str, Any] = {
        "command": command, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
        "git_commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(dev) if settings.cuda else dev.type,
        "gpus": torch.cuda.device_count() if settings.cuda else 0, "budget_s": budget_s, "stages": {}}
    stages: list[tuple[str, float, Callable[[float], dict]]] = [
        ("tests", 60, lambda left: _tests(settings, min(240.0, left - 200), pytest_args)),
        ("epochs", 60, lambda left: _epochs(settings)),
        ("ddp", 45, lambda left: _ddp(settings, deadline)),
    ]
    for name, minimum, stage in stages:
        left = deadline - time.monotonic()
        t0 = time.perf_counter()
        if left < minimum:
            result = {"status": "skipped", "why": f"time budget: {left:.0f} s left, needs >= {minimum} s"}
        else:
            try:
                result = stage(left)
            except Exception as err:
                result = {"status": "failed", "why": f"{type(err).__name__}: {err}",
                          "traceback": traceback.format_exc()[-4000:]}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        report["stages"][name] = result
    report["seconds"] = round(time.time() - started, 1)
    report["ok"] = all(s["status"] == "passed" for s in report["stages"].values())
    return report


# -- 1. GPU-marked tests ---------------------------------------------------------------------------


def _tests(settings: Settings, timeout: float, pytest_args: list[str] | None) -> dict[str, Any]:
    tests = ROOT / "tests"
    if pytest_args is None and not tests.is_dir():
        return {"status": "skipped", "why": f"no tests/ folder at {ROOT} (an installed advmem); run from a checkout"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rfEs",
           *(pytest_args if pytest_args is not None else [str(tests)])]
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 30))
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-3000:]
        return {"status": "failed", "why": f"timed out after {max(timeout, 30):.0f} s", "output_tail": str(tail)}
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    ok = proc.returncode == 0 and counts.get("passed", 0) > 0
    why = None if ok else ("no GPU-marked test ran" if proc.returncode in (0, 5) else f"pytest exit {proc.returncode}")
    return {"status": "passed" if ok else "failed", "why": why, "summary": summary, "counts": counts,
            "command": " ".join(cmd), "output_tail": (proc.stdout + proc.stderr)[-4000:]}


# -- 2. timed epochs, fp32 and bf16, and their accuracy ---------------------------------------------


def accuracy_tolerance_pp(p: float, n: int) -> float:
    """max(3 pp, 2 SE of a difference of two accuracies on n points): one epoch of two precisions
    from the same weights differs by training noise, which this bounds; a broken bf16 path
    (an attack whose gradient underflows, a diverging loss) lands far outside it."""
    return max(3.0, 200 * math.sqrt(max(p * (1 - p), 1e-12) * 2 / max(n, 1)))


def _epochs(settings: Settings) -> dict[str, Any]:
    n = settings.pick(50_000, 10_000, 64)
    n_test = settings.pick(1000, 500, 16)
    batch = settings.pick(128, 128, 32)
    data, source = cifar_data(settings, n, test_size=n_test)
    model, steps = None, 10
    if settings.tiny:  # plumbing only: a PreActResNet-18 epoch takes minutes on a loaded CPU
        data = {"dataset": "synthetic", "synthetic": {"n_train": n, "n_test": n_test, "channels": 3, "image_size": 8}}
        model, steps, source = {"name": "small_cnn", "kwargs": {"width": 4, "hidden": 16}}, 2, "tiny synthetic data"
    peak, peak_text = device_peak(settings) if settings.cuda else (None, "none (not a GPU)")
    rows: dict[str, dict[str, Any]] = {}
    init = None
    for precision in ("fp32", "bf16"):
        trainer = make_trainer(pgd_recipe(data, {"precision": precision}, batch, model, steps), settings)
        if init is None:
            init = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        warm_up(trainer, batch)
        trainer.model.load_state_dict(init)  # the warm-up steps trained: back to the shared weights
        trainer.optimizer.state.clear()
        torch.manual_seed(0)
        seconds = timed_epoch(trainer)
        ips = len(trainer.bundle.train) / seconds
        acc = common_evaluator(trainer.model, trainer.bundle.test, trainer.recipe.attack.eps_value)
        u = mfu(ips, peak)
        rows[precision] = {"perf": trainer.perf.as_dict(), "seconds": seconds, "images_per_s": ips,
                           "s_per_50k": 50_000 / ips, "mfu": u, "nat_acc": acc["nat"], "pgd20_acc": acc["pgd20"],
                           "train_images": len(trainer.bundle.train), "test_images": len(trainer.bundle.test)}
        del trainer
        if settings.cuda:
            torch.cuda.empty_cache()
    a, b = rows["fp32"], rows["bf16"]
    n_eval = a["test_images"]
    diffs = {k: 100 * (b[k] - a[k]) for k in ("nat_acc", "pgd20_acc")}
    tol = {k: accuracy_tolerance_pp((a[k] + b[k]) / 2, n_eval) for k in diffs}
    within = all(abs(diffs[k]) <= tol[k] for k in diffs)
    finite = all(math.isfinite(r["seconds"]) and r["seconds"] > 0 for r in rows.values())
    return {"status": "passed" if within and finite else "failed",
            "why": None if within else "bf16 accuracy outside the tolerance of fp32's",
            "source": source, "model": model or {"name": "preact_resnet18"}, "steps": steps, "batch": batch, "peak": peak_text, "rows": rows, "bf16_minus_fp32_pp": diffs,
            "tolerance_pp": tol}


# -- 3. DDP smoke test with a resume ----------------------------------------------------------------


def _ddp_recipe(settings: Settings, root: Path) -> dict[str, Any]:
    cuda = settings.cuda
    data = ({"dataset": "synthetic", "synthetic": {"n_train": 1024, "n_test": 128, "channels": 3, "image_size": 32}}
            if cuda and not settings.tiny else
            {"dataset": "synthetic", "synthetic": {"n_train": 64, "n_test": 32, "image_size": 8}})
    model = ({"name": "preact_resnet18", "kwargs": {"width": 16}} if cuda and not settings.tiny
             else {"name": "small_cnn", "kwargs": {"width": 4, "hidden": 16}})
    return {"name": "ddp", "seed": 0, "device": "cuda" if cuda else "cpu", "deterministic": True,
            "output_root": str(root), "data": {**data, "val_size": 0}, "model": model, "method": {"name": "pgd_at"},
            "attack": {"steps": 3}, "optim": {"epochs": 2, "batch_size": 128 if cuda else 32, "lr": 0.05},
            "eval": {"train_subset": 0, "batch_size": 128, "attack": {"steps": 3}},
            "distributed": {"backend": "nccl" if cuda else "gloo"}}


def _ddp(settings: Settings, deadline: float) -> dict[str, Any]:
    nproc = min(2, torch.cuda.device_count()) if settings.cuda else 1
    root = settings.workdir / "ddp-check"
    root.mkdir(parents=True, exist_ok=True)
    recipe = root / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(_ddp_recipe(settings, root)))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                "-m", "advmem.bench.ddp_worker"]
    env = child_env(SRC)
    runs: dict[str, dict[str, Any]] = {}
    plan = (("full", ["--", "train", str(recipe), "--name", "full", "--quiet"]),
            ("stopped", ["--stop-after-epoch", "1", "--", "train", str(recipe), "--name", "resumed", "--quiet"]),
            ("resumed", ["--", "train", "--resume", str(root / "resumed"), "--quiet"]))
    for i, (name, args) in enumerate(plan):
        timeout = max(20.0, min(180.0, (deadline - time.monotonic()) / (len(plan) - i)))
        try:
            proc = subprocess.run(launcher + args, env=env, capture_output=True, text=True, timeout=timeout)
            runs[name] = {"exit": proc.returncode, "stderr_tail": proc.stderr[-2500:]}
        except subprocess.TimeoutExpired:
            runs[name] = {"exit": None, "stderr_tail": f"timed out after {timeout:.0f} s"}
    problems = []
    if runs["full"]["exit"] != 0:
        problems.append("the uninterrupted run failed")
    if runs["stopped"]["exit"] in (0, None) or "--resume" not in runs["stopped"]["stderr_tail"]:
        problems.append("the SIGTERM after epoch 1 did not stop the run cleanly with a resume hint")
    if runs["resumed"]["exit"] != 0:
        problems.append("the resume failed")
    result: dict[str, Any] = {"processes": nproc, "backend": "nccl" if settings.cuda else "gloo",
                              "forced_ddp_at_world_size_1": nproc == 1, "runs": runs}
    if not problems:
        rows = [json.loads(line) for line in (root / "resumed" / "metrics.jsonl").read_text().splitlines()]
        result["resumed_epochs"] = [r["epoch"] for r in rows]
        result["world_size"] = sorted({r.get("world_size") for r in rows}, key=str)
        if result["resumed_epochs"] != [1, 2] or result["world_size"] != [nproc]:
            problems.append(f"resumed run rows: epochs {result['resumed_epochs']}, world_size {result['world_size']}")
        full, _ = build_from_checkpoint(root / "full" / "checkpoints" / "last")
        resumed, _ = build_from_checkpoint(root / "resumed" / "checkpoints" / "last")
        pairs = list(zip(full.state_dict().values(), resumed.state_dict().values()))
        result["bitwise_equal"] = all(torch.equal(a, b) for a, b in pairs)
        result["max_abs_diff"] = max((a.double() - b.double()).abs().max().item() for a, b in pairs if a.numel())
        if not all(torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5) for a, b in pairs):
            problems.append(f"resumed weights differ from the uninterrupted run's (max abs {result['max_abs_diff']:.2e})")
    result.update(status="failed" if problems else "passed", why="; ".join(problems) or None)
    return result


# -- writing ---------------------------------------------------------------------------------------


def section_of(report: dict[str, Any]) -> Section:
    """BENCHMARKS.md's GPU section and its goal rows, from the report."""
    s = report["stages"]
    section = Section(GPU_TITLE)
    section.add(
        f"Written by `{report['command']}` on {report['date_utc']} UTC (git {report['git_commit']}; "
        f"{report['seconds'] / 60:.1f} min of a {report['budget_s'] / 60:.0f}-min budget); device {report['device']}, "
        f"{report['gpus']} GPU(s), torch {report['torch']}, CUDA {report['cuda']}. Every figure below is in the JSON "
        "written next to this file (gpu-check.json unless --json).", "")
    ep = s.get("epochs", {})
    if ep.get("rows"):
        kw = ep["model"].get("kwargs")
        section.add(f"{ep['model']['name']}{f' {kw}' if kw else ''}, PGD-{ep['steps']} (eps 8/255, step 2/255), "
                    f"{ep['source']}, "
                    f"{ep['rows']['fp32']['train_images']} images per epoch, batch {ep['batch']}; one timed epoch per "
                    f"precision after warm-up steps, both from the same weights; MFU = 23 x 1.11 GFLOP x images/s / "
                    f"peak, peak {ep['peak']} (for fp32 too). Accuracy: `common_evaluator` (fp32; PGD-20, step "
                    f"eps/4) on {ep['rows']['fp32']['test_images']} test images.", "",
                    "| precision | perf | epoch s | images/s | s per 50k images | MFU | natural % | PGD-20 % |",
                    "|---|---|---|---|---|---|---|---|")
        for precision, r in ep["rows"].items():
            u = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            perf = ", ".join(f"{k}={v}" for k, v in r["perf"].items())
            section.add(f"| {precision} | {perf} | {r['seconds']:.2f} | {r['images_per_s']:.0f} | "
                        f"{r['s_per_50k']:.1f} | {u} | {100 * r['nat_acc']:.1f} | {100 * r['pgd20_acc']:.1f} |")
        d, tol = ep["bf16_minus_fp32_pp"], ep["tolerance_pp"]
        section.add("", f"- bf16 - fp32 after one epoch: natural {d['nat_acc']:+.1f} pp (tolerance "
                        f"{tol['nat_acc']:.1f}), PGD-20 {d['pgd20_acc']:+.1f} pp (tolerance {tol['pgd20_acc']:.1f}): "
                        f"{ep['status']}.")
        bf16 = ep["rows"]["bf16"]
        section.goals.append(Goal("GPU check: PRN-18 PGD-10 s per 50k-image epoch, bf16", f"{bf16['s_per_50k']:.1f}",
                                  "<= 10 s on an H100 (bf16)", bf16["s_per_50k"] <= 10))
        section.goals.append(Goal("GPU check: MFU of the bf16 epoch", "-" if bf16["mfu"] is None
                                  else f"{100 * bf16['mfu']:.1f}%", "report (airbench: 30-45%)", None))
    else:
        section.add(f"- Timed epochs: {ep.get('status', 'not run')}" + (f" ({ep['why']})" if ep.get("why") else ""))
    section.goals.append(Goal("GPU check: bf16 vs fp32 accuracy after one epoch", ep.get("status", "not run"),
                              "within max(3 pp, 2 SE)", ep.get("status") == "passed"))
    t = s.get("tests", {})
    section.add(f"- GPU-marked tests (`pytest -m gpu`): {t.get('status', 'not run')}"
                + (f", `{t['summary']}`" if t.get("summary") else "") + (f" ({t['why']})" if t.get("why") else ""))
    section.goals.append(Goal("GPU check: GPU-marked tests", t.get("summary") or t.get("status", "not run"),
                              "all pass", t.get("status") == "passed"))
    dd = s.get("ddp", {})
    if "processes" in dd:
        forced = " (advmem's DDP path forced on at world size 1)" if dd["forced_ddp_at_world_size_1"] else ""
        same = ("" if "bitwise_equal" not in dd else
                f"; resumed vs uninterrupted final weights: {'bit for bit equal' if dd['bitwise_equal'] else 'max abs diff %.2e' % dd['max_abs_diff']}")
        section.add(f"- DDP smoke test: torchrun, {dd['processes']} process(es), {dd['backend']}{forced}; 2 epochs, "
                    f"the same run stopped by SIGTERM after epoch 1 and resumed{same}: {dd['status']}"
                    + (f" ({dd['why']})" if dd.get("why") else "") + ".")
    else:
        section.add(f"- DDP smoke test: {dd.get('status', 'not run')}" + (f" ({dd['why']})" if dd.get("why") else ""))
    section.goals.append(Goal("GPU check: DDP smoke test with a resume", dd.get("status", "not run"), "passed",
                              dd.get("status") == "passed"))
    return section


def splice(text: str | None, section: Section) -> str:
    """`text` (a BENCHMARKS.md, or None) with its GPU section and GPU goal rows replaced by `section`'s."""
    body = section.markdown().rstrip() + "\n"
    rows = [g.row() for g in section.goals]
    if text is None:
        return "\n".join(["# advmem benchmarks", "", "Generated by `python -m advmem.bench gpu-check`; regenerate "
                          "rather than edit. The CPU figures come from `python -m advmem.bench all`.", "",
                          "## Goal metrics", "", "| metric | value | goal | verdict |", "|---|---|---|---|", *rows,
                          "", body])
    lines = text.split("\n")
    if "## Goal metrics" in lines:
        start = lines.index("## Goal metrics")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        kept = [line for line in lines[start:end] if not line.startswith(OLD_GPU_GOALS)]
        last_row = max(i for i, line in enumerate(kept) if line.startswith("|"))
        lines = lines[:start] + kept[:last_row + 1] + rows + kept[last_row + 1:] + lines[end:]
    text = "\n".join(lines)
    match = re.search(r"^## GPU:.*?(?=^## |\Z)", text, flags=re.M | re.S)
    if match:
        rest = text[match.end():]
        return text[:match.start()] + body + ("\n" + rest if rest else "")
    return text.rstrip() + "\n\n" + body


def write(report: dict[str, Any], out: Path, json_path: Path) -> None:
    section = section_of(report)
    atomic_write_text(out, splice(out.read_text() if out.is_file() else None, section))
    atomic_write_text(json_path, json.dumps(report, indent=2, default=str) + "\n")
