#!/usr/bin/env python
"""Fault injection for advmem training runs: the probes too long for the test suite.

    python scripts/fault_injection.py            # default: about 2 minutes on 2 CPU cores
    python scripts/fault_injection.py --quick    # one of each, about a minute
    python scripts/fault_injection.py --series 4 --kills 6 --out results.md

Every probe trains a tiny run (an MLP on synthetic data, CPU, deterministic) in subprocesses
(`python -m advmem train`, OMP_NUM_THREADS=1) under a temporary directory, and compares it with
an uninterrupted reference run of the same recipe:

- sigkill: `--series` series of `--kills` SIGKILLs each, at random moments once the process
  holds the run's lock (so also in the middle of checkpoint and resume-state writes), each
  followed by `train --resume`; after every kill every file present must load, and the final
  weights and metrics must be bitwise equal to the reference.
- sigterm: `--stops` SIGTERMs at random moments (mid-epoch or mid-evaluation): exit code 143
  (or 0 if the run had just finished), the lock released, within `STOP_LIMIT_S` seconds; the
  resumed run bitwise equal to the reference.
- disk-full: ENOSPC injected into the n-th file write (random n) in-process (there is no small
  tmpfs to fill here): one line naming the file and the committed epoch, exit 1, nothing
  torn; the resume after "freeing space" bitwise equal to the reference.
- ddp-rank-death: two gloo ranks (WORLD_SIZE=2, as tests/test_ddp.py launches them); rank 1 is
  SIGKILLed after the first epoch; rank 0 must exit 1 with a one-line message naming the run
  to resume, within `DDP_LIMIT_S` seconds.

It prints a table (probe, trials, passed, detail) and exits 1 if any trial failed. Results of
the last run are in docs/reliability.md ("Fault injection").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))  # this checkout's advmem, also when it is not installed
from advmem.engine.distributed import child_env, free_port  # noqa: E402

STOP_LIMIT_S = 10.0
DDP_LIMIT_S = 60.0
TIMING = {"train_time", "images_per_s", "eval_time", "epoch_time", "world_size"}


def recipe(root: Path, name: str, epochs: int = 8, ddp: bool = False) -> dict:
    return {
        "name": name, "seed": 3, "device": "cpu", "deterministic": True, "output_root": str(root),
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 256, "n_test": 64, "image_size": 8},
                 "val_size": 32, "test_size": 32},
        "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "method": {"name": "pgd_at"},
        "attack": {"eps": "0.1", "step_size": "0.05", "steps": 3} | ({"start": "none"} if ddp else {}),
        "optim": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "schedule": {"milestones": [4]}},
        "eval": {"train_subset": 32, "batch_size": 64, "attack": {"steps": 2}},
    }


def advmem(*args: str, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "advmem", "train", *args, "--quiet"], env=child_env(SRC, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_recipe(root: Path, name: str, **kw) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe(root / "runs", name, **kw)))
    return path


def lock_pid(run: Path):
    try:
        return json.loads((run / ".lock").read_text())["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wait_for_lock(run: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (lock_pid(run) == proc.pid and (run / "recipe.yaml").exists()) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.005)


def rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines if line.strip()]


def consistent(run: Path) -> str | None:
    """None if every file present in the run directory loads and agrees; else what is wrong."""
    sys.path.insert(0, str(SRC))
    from advmem.engine.checkpoint import build_from_checkpoint, load_resume_state

    try:
        if (run / "resume.pt").exists():
            state = load_resume_state(run / "resume.pt")
            if [r["epoch"] for r in state["rows"]] != list(range(1, state["epoch"] + 1)):
                return "resume.pt rows do not match its epoch"
        for stem in ("init", "last", "best"):
            if (run / "checkpoints" / f"{stem}.safetensors").exists():
                build_from_checkpoint(run / "checkpoints" / stem)
        if (run / "metrics.jsonl").exists():
            epochs = [r["epoch"] for r in rows(run)]
            if epochs != list(range(1, len(epochs) + 1)):
                return f"metrics.jsonl epochs {epochs}"
    except Exception as err:  # noqa: BLE001 - a probe reports, it does not crash
        return f"{type(err).__name__}: {str(err)[:120]}"
    return None


def same_as(run: Path, ref: Path) -> str | None:
    from safetensors.torch import load_file
    import torch

    a = load_file(str(run / "checkpoints" / "last.safetensors"))
    b = load_file(str(ref / "checkpoints" / "last.safetensors"))
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        return "final weights differ from the uninterrupted run"
    if rows(run) != rows(ref):
        return "metrics differ from the uninterrupted run"
    return None


def finish(run: Path) -> str | None:
    proc = advmem("--resume", str(run))
    _, err = proc.communicate(timeout=600)
    return None if proc.returncode == 0 else f"final resume exit {proc.returncode}: {err.strip()[-200:]}"


# ------------------------------------------------------------------------------------ probes


def probe_sigkill(tmp: Path, ref: Path, rng: random.Random, series: int, kills: int) -> tuple[int, int, str]:
    trials = ok = landed = 0
    problems: list[str] = []
    for s in range(series):
        name = f"kill{s}"
        rfile = write_recipe(tmp, name)
        run = tmp / "runs" / name
        bad = None
        for k in range(kills):
            proc = advmem("--resume", str(run)) if k else advmem(str(rfile))
            wait_for_lock(run, proc)
            time.sleep(rng.uniform(0.0, 3.0))
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=120)
            trials += 1
            landed += proc.returncode == -signal.SIGKILL
            if proc.returncode not in (-signal.SIGKILL, 0):
                bad = f"kill {k}: exit {proc.returncode}: {err.strip()[-200:]}"
            bad = bad or consistent(run)
            if bad:
                break
            ok += 1
        if bad is None:
            bad = finish(run) or same_as(run, ref)
            if bad:
                ok -= 1  # the series failed at its end: count its last kill as failed
        if bad:
            problems.append(f"series {s}: {bad}")
    detail = "; ".join(problems) or (f"{series} series x {kills} kills ({landed} landed before the run ended), every "
                                     "file loadable after each, final weights and metrics bitwise")
    return trials, ok, detail


def probe_sigterm(tmp: Path, ref: Path, rng: random.Random, stops: int) -> tuple[int, int, str]:
    rfile = write_recipe(tmp, "term")
    run = tmp / "runs" / "term"
    ok, worst, problems = 0, 0.0, []
    for k in range(stops):
        proc = advmem("--resume", str(run)) if k else advmem(str(rfile))
        wait_for_lock(run, proc)
        time.sleep(rng.uniform(0.2, 2.5))
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
        worst = max(worst, took)
        if proc.returncode not in (143, 0) or (proc.returncode == 143 and "--resume" not in err) \
                or "Traceback" in err or (run / ".lock").exists() or took > STOP_LIMIT_S or consistent(run):
            problems.append(f"stop {k}: exit {proc.returncode} after {took:.1f}s: {err.strip()[-160:]}")
        else:
            ok += 1
    end = finish(run) or same_as(run, ref)
    if end:
        problems.append(end)
        ok = min(ok, stops - 1)
    return stops, ok, "; ".join(problems) or f"exit 143, lock released, stopped within {worst:.1f}s; resume bitwise"


DISK_FULL_CHILD = r"""
import errno, os, sys
import advmem.io as io
n, count, real = int(sys.argv[1]), [0], io.atomic_write
def atomic_write(path, write, mode="wb"):
    count[0] += 1
    if count[0] == n:
        def full(fh):
            write(fh)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, full, mode)
    return real(path, write, mode)
io.atomic_write = atomic_write
from advmem.cli import main
sys.exit(main(sys.argv[2:]))
"""


def probe_disk_full(tmp: Path, ref: Path, rng: random.Random, trials: int) -> tuple[int, int, str]:
    ok, problems, seen = 0, [], []
    for t in range(trials):
        name = f"full{t}"
        rfile = write_recipe(tmp, name)
        run = tmp / "runs" / name
        n = rng.randint(2, 50)  # about 8 files are written per epoch
        proc = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, str(n), "train", str(rfile), "--quiet"],
                              env=child_env(SRC), capture_output=True, text=True, timeout=600)
        err = proc.stderr.strip()
        if proc.returncode == 0:  # the n-th write came after the run had finished
            seen.append(f"write {n}: none failed")
            ok += 1
            continue
        line = err.splitlines()[-1] if err else ""
        bad = None
        if proc.returncode != 1 or "Traceback" in err or "disk full" not in line or "while writing" not in line:
            bad = f"write {n}: exit {proc.returncode}: {err[-200:]}"
        bad = bad or consistent(run) or (None if not list(run.rglob(".*.tmp")) else "temporary left behind")
        bad = bad or finish(run) or same_as(run, ref)
        if bad:
            problems.append(bad)
        else:
            ok += 1
            seen.append(f"write {n}: " + line.split("while writing ")[-1].split(";")[0].replace(str(run) + "/", ""))
    return trials, ok, "; ".join(problems) or ("one line, resume bitwise (" + ", ".join(seen) + ")")


def probe_ddp(tmp: Path, trials: int) -> tuple[int, int, str]:
    ok, times, problems = 0, [], []
    for t in range(trials):
        name = f"ddp{t}"
        rfile = tmp / f"{name}.yaml"
        rfile.write_text(yaml.safe_dump(recipe(tmp / "runs", name, epochs=500, ddp=True)))
        run = tmp / "runs" / name
        port = free_port()
        procs = [advmem(str(rfile), RANK=r, LOCAL_RANK=r, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
                 for r in (0, 1)]
        deadline = time.monotonic() + 180
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size) \
                and time.monotonic() < deadline and procs[0].poll() is None:
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        try:
            _, err = procs[0].communicate(timeout=DDP_LIMIT_S + 60)
        except subprocess.TimeoutExpired:
            procs[0].kill()
            _, err = procs[0].communicate()
        took = time.monotonic() - killed
        procs[1].communicate()
        last = err.strip().splitlines()[-1] if err.strip() else ""
        if procs[0].returncode == 1 and "lost contact" in last and f"--resume {run}" in last and took < DDP_LIMIT_S \
                and "Traceback" not in err and not (run / ".lock").exists() and not consistent(run):
            ok += 1
            times.append(took)
        else:
            problems.append(f"trial {t}: exit {procs[0].returncode} after {took:.1f}s: {last[:160]}")
    detail = "; ".join(problems) or (f"rank 0 exits 1 with one line in {min(times):.1f}-{max(times):.1f}s, "
                                     "last epoch intact")
    return trials, ok, detail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=3, help="SIGKILL series (default 3)")
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs per series (default 5)")
    ap.add_argument("--stops", type=int, default=4, help="SIGTERMs (default 4)")
    ap.add_argument("--disk-full", type=int, default=4, help="ENOSPC injections (default 4)")
    ap.add_argument("--ddp", type=int, default=2, help="DDP rank-death trials (default 2; 0 skips)")
    ap.add_argument("--quick", action="store_true", help="one of each (1 series of 2 kills)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the random kill times (default: random)")
    ap.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.series, args.kills, args.stops, args.disk_full, args.ddp = 1, 2, 1, 1, 1
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    results = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="advmem-faults-") as tmp_name:
        tmp = Path(tmp_name)
        ref_proc = advmem(str(write_recipe(tmp, "ref")))
        _, err = ref_proc.communicate(timeout=600)
        if ref_proc.returncode != 0:
            print(f"reference run failed: {err[-500:]}", file=sys.stderr)
            return 1
        ref = tmp / "runs" / "ref"
        probes = [("sigkill + resume", lambda: probe_sigkill(tmp, ref, rng, args.series, args.kills)),
                  ("sigterm mid-epoch", lambda: probe_sigterm(tmp, ref, rng, args.stops)),
                  ("disk full (ENOSPC)", lambda: probe_disk_full(tmp, ref, rng, args.disk_full))]
        if args.ddp:
            probes.append(("ddp gloo rank death", lambda: probe_ddp(tmp, args.ddp)))
        for name, fn in probes:
            t0 = time.monotonic()
            trials, ok, detail = fn()
            results.append((name, trials, ok, time.monotonic() - t0, detail))
            print(f"{name}: {ok}/{trials} passed ({time.monotonic() - t0:.0f}s)", file=sys.stderr)
    table = ["| probe | trials | passed | time | detail |", "|---|---|---|---|---|"]
    table += [f"| {n} | {t} | {o} | {s:.0f} s | {d} |" for n, t, o, s, d in results]
    table.append(f"\nseed {seed}, {time.monotonic() - start:.0f} s in all, {os.cpu_count()} CPUs, "
                 f"python {sys.version.split()[0]}")
    text = "\n".join(table)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if all(t == o for _, t, o, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
