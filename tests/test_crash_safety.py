"""Crash safety: SIGKILL at random moments never costs more than the current epoch and never
corrupts the run; SIGTERM stops cleanly; the run-directory lock; atomic writes."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from advmem.engine.checkpoint import build_from_checkpoint, load_resume_state
from advmem.io import atomic_write_bytes
from advmem.engine.rundir import RunDir
from advmem.engine.safety import LOCK_NAME, RunLock, check_unlocked
from advmem.training import train
from advmem.errors import UserError
from advmem.recipe import recipe_from_dict

SRC = Path(__file__).resolve().parents[1] / "src"
TIMING_KEYS = {"train_time", "images_per_s", "eval_time", "epoch_time"}


def recipe_dict(root: Path, name: str = "crash", epochs: int = 6) -> dict:
    return {
        "name": name, "seed": 3, "device": "cpu", "deterministic": True, "output_root": str(root),
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 256, "n_test": 64, "image_size": 8}, "val_size": 32},
        "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "method": {"name": "pgd_at"},  # uniform random starts: the global RNG must be restored exactly
        "attack": {"eps": "0.1", "step_size": "0.05", "steps": 3},
        "optim": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "schedule": {"milestones": [4] if epochs > 4 else []}},
        "eval": {"train_subset": 32, "batch_size": 64, "attack": {"steps": 2}},
    }


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(SRC) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def metric_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def lock_pid(run: Path) -> int | None:
    try:
        return json.loads((run / LOCK_NAME).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def assert_consistent(run: Path) -> None:
    """Whatever the moment of the kill, everything present in the run directory loads."""
    assert yaml.safe_load((run / "recipe.yaml").read_text())["name"] == run.name
    if (run / "resume.pt").exists():
        state = load_resume_state(run / "resume.pt")
        assert [r["epoch"] for r in state["rows"]] == list(range(1, state["epoch"] + 1))
    for stem in ("init", "last", "best"):
        if (run / "checkpoints" / f"{stem}.safetensors").exists():
            build_from_checkpoint(run / "checkpoints" / stem)
    if (run / "metrics.jsonl").exists():
        epochs = [r["epoch"] for r in metric_rows(run)]
        assert epochs == list(range(1, len(epochs) + 1))


def test_sigkill_five_times_then_resume_is_bitwise_identical(tmp_path, one_thread):
    ref_run, _ = train(recipe_from_dict(recipe_dict(tmp_path / "ref")), quiet=True)
    recipe_file = tmp_path / "crash.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe_dict(tmp_path / "runs")))
    run = tmp_path / "runs" / "crash"
    rng = random.Random(1234)
    took_over = 0
    # Five SIGKILLs at random moments (the first one as soon as training starts, before any
    # epoch has completed), then one SIGTERM, then a resume that runs to the end.
    plan = [("KILL", 0.0)] + [("KILL", rng.uniform(0.0, 1.5)) for _ in range(4)] + [("TERM", 0.3), (None, 0)]
    for i, (sig, delay) in enumerate(plan):
        args = ["--resume", str(run)] if i else [str(recipe_file)]
        proc = subprocess.Popen([sys.executable, "-m", "advmem", "train", *args, "--quiet"], env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if sig is not None:
            deadline = time.monotonic() + 60
            while not (lock_pid(run) == proc.pid and (run / "recipe.yaml").exists()) and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.01)  # until this process holds the lock, i.e. training is starting
            time.sleep(delay)
            proc.send_signal(getattr(signal, f"SIG{sig}"))
        out, err = proc.communicate(timeout=120)
        took_over += "taking over the stale lock" in err
        if sig == "KILL":
            assert proc.returncode in (-signal.SIGKILL, 0), err
            if i == 0:
                assert not (run / "resume.pt").exists(), "the first kill should land before epoch 1 ends"
        elif sig == "TERM" and proc.returncode != 0:  # 0 only if the run had already finished
            assert proc.returncode == 143, err
            assert f"advmem train --resume {run}" in err and "Traceback" not in err
            assert not (run / LOCK_NAME).exists(), "a clean stop releases the lock"
        else:
            assert proc.returncode == 0, err
        assert_consistent(run)
    assert took_over >= 1, "a resume after SIGKILL should report taking over the stale lock"
    assert not (run / LOCK_NAME).exists()
    assert not list(run.rglob("*.tmp")), "temporaries of killed writers are cleaned up on resume"
    got, want = weights(run), weights(ref_run.path)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert [r["epoch"] for r in metric_rows(run)] == list(range(1, 7))
    assert metric_rows(run) == metric_rows(ref_run.path)
    assert json.loads((run / "summary.json").read_text())["best"] == json.loads(
        (ref_run.path / "summary.json").read_text())["best"]


def test_resume_without_completed_epoch_restarts_from_scratch(tmp_path, one_thread, capsys):
    ref_run, _ = train(recipe_from_dict(recipe_dict(tmp_path / "ref", epochs=2)), quiet=True)
    recipe = recipe_from_dict(recipe_dict(tmp_path / "runs", epochs=2))
    run = RunDir(tmp_path / "runs" / "crash")
    run.prepare(recipe, {}, overwrite=False)  # as left by a kill during epoch 1
    train(recipe, resume=True, quiet=True)
    assert "starting it again from epoch 1" in capsys.readouterr().err
    for key, value in weights(ref_run.path).items():
        assert torch.equal(weights(run.path)[key], value)


def test_lock_refuses_live_holder_and_takes_over_dead_one(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        info = json.loads((run / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["hostname"] == socket.gethostname()
        # another process checking the run sees it busy (simulate by a child's view of our pid)
        child = subprocess.run([sys.executable, "-c",
                                "import sys; from advmem.engine.safety import check_unlocked; check_unlocked(sys.argv[1])",
                                str(run)], env=env(), capture_output=True, text=True)
        assert child.returncode != 0 and "is being written by pid" in child.stderr
    assert not (run / LOCK_NAME).exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "hostname": socket.gethostname(), "start_time": None}))
    messages: list[str] = []
    with RunLock(run, log=messages.append):
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert messages and "stale lock" in messages[0] and str(dead.pid) in messages[0]

    (run / LOCK_NAME).write_text(json.dumps({"pid": 1, "hostname": "elsewhere", "start_time": None}))
    with pytest.raises(UserError, match="another machine.*delete"):
        check_unlocked(run)
    with pytest.raises(UserError, match="another machine"):
        RunLock(run).acquire()


def test_train_refuses_a_locked_run_and_changes_nothing(tmp_path):
    recipe = recipe_from_dict(recipe_dict(tmp_path / "runs", epochs=1))
    run = RunDir(tmp_path / "runs" / "crash")
    run.prepare(recipe, {}, overwrite=False)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run.path / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "hostname": socket.gethostname(),
                                                      "start_time": None}))
        before = sorted((p.name, p.stat().st_mtime_ns) for p in run.path.rglob("*"))
        with pytest.raises(UserError, match=f"being written by pid {holder.pid}"):
            train(recipe, resume=True, quiet=True)
        with pytest.raises(UserError, match="being written"):
            train(recipe, overwrite=True, quiet=True)
        assert sorted((p.name, p.stat().st_mtime_ns) for p in run.path.rglob("*")) == before
    finally:
        holder.kill()
        holder.wait()


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"old")

    def failing(fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    from advmem.io import atomic_write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]  # no temporary left behind
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() would create it, not mkstemp's 0600
