"""`advmem sweep`: grid x seeds, local runs N at a time, skip complete / resume incomplete, the
comparison table (mean and std over seeds), and the Slurm path through submitit's local executor."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import pytest
import yaml

from advmem.cli import main
from advmem.sweep import key_labels, parse_grid, split_values

SRC = Path(__file__).resolve().parents[1] / "src"

RECIPE = {
    "name": "sw", "seed": 0, "device": "cpu", "deterministic": True,
    "data": {"dataset": "synthetic", "synthetic": {"n_train": 96, "n_test": 32, "image_size": 4}, "val_size": 16},
    "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
    "method": {"name": "pgd_at"},
    "attack": {"eps": "0.1", "step_size": "0.05", "steps": 1},
    "optim": {"epochs": 2, "batch_size": 16, "lr": 0.05},
    "eval": {"train_subset": 16, "batch_size": 64, "attack": {"steps": 1}},
}


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "output_root": str(tmp_path / "runs")}))
    return path


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_expansion_helpers():
    assert split_values("[50,75],[100,150]") == ["[50,75]", "[100,150]"]
    assert parse_grid(["optim.lr=0.05,0.1", "attack.eps=8/255,4/255"]) == {
        "optim.lr": ["0.05", "0.1"], "attack.eps": ["8/255", "4/255"]}
    assert key_labels(["attack.steps", "eval.attack.steps", "optim.lr"]) == {
        "attack.steps": "attack_steps", "eval.attack.steps": "eval_attack_steps", "optim.lr": "lr"}


def test_local_sweep_skips_resumes_and_tabulates(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ADVMEM_PROGRESS_INTERVAL", "0.05")  # the progress lines of a sweep in a log
    out = tmp_path / "sweep"
    argv = ["sweep", str(recipe), "--grid", "optim.lr=0.05,0.1", "--seeds", "0,1", "--parallel", "2",
            "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.startswith("sw_"))
    assert names == ["sw_lr-0.05_seed0", "sw_lr-0.05_seed1", "sw_lr-0.1_seed0", "sw_lr-0.1_seed1"]
    for name in names:
        recorded = yaml.safe_load((out / name / "recipe.yaml").read_text())
        assert recorded["seed"] == int(name[-1]) and str(recorded["optim"]["lr"]) in name
    captured = capsys.readouterr()
    printed = captured.out
    assert "| optim.lr | seeds |" in printed and "2/2" in printed
    lines = [line for line in captured.err.splitlines() if line.startswith("sweep: ")]
    assert lines and re.fullmatch(r"sweep: 100% 8/8 \[.*, 4/4 runs done\]", lines[-1]), captured.err
    assert any(re.search(r"running sw_lr-\S+ \d/2", line) for line in lines), lines

    with open(out / "sweep.csv") as fh:
        table = {row["optim.lr"]: row for row in csv.DictReader(fh)}
    for lr in ("0.05", "0.1"):
        rob = [summary(out / f"sw_lr-{lr}_seed{s}")["best"]["test_rob_acc"] for s in (0, 1)]
        mean = sum(rob) / 2
        std = math.sqrt(sum((v - mean) ** 2 for v in rob))  # sample std of two values
        assert float(table[lr]["best_test_rob_acc_mean"]) == pytest.approx(mean)
        assert float(table[lr]["best_test_rob_acc_std"]) == pytest.approx(std)
        assert table[lr]["seeds_complete"] == "2"

    # Again, through the Slurm path with submitit's local executor: complete runs are skipped, an
    # interrupted one is resumed as a job (not retrained).
    untouched = (out / "sw_lr-0.1_seed1" / "summary.json").stat().st_mtime_ns
    (out / "sw_lr-0.05_seed0" / "summary.json").unlink()  # as if killed after its last epoch
    rows_before = (out / "sw_lr-0.05_seed0" / "metrics.jsonl").read_text()
    assert main(argv + ["--launcher", "submitit-local", "--time-min", "10", "--partition", "gpu"]) == 0
    err = capsys.readouterr().err
    assert "4 runs" in err and "3 complete" in err and "1 incomplete" in err
    assert err.count("[submitted]") == 1 and "[submitted] sw_lr-0.05_seed0: job" in err
    assert (out / "slurm").is_dir()
    assert (out / "sw_lr-0.1_seed1" / "summary.json").stat().st_mtime_ns == untouched
    assert (out / "sw_lr-0.05_seed0" / "metrics.jsonl").read_text() == rows_before  # resumed after epoch 2
    assert summary(out / "sw_lr-0.05_seed0")["last"]["epoch"] == 2
    with open(out / "sweep.csv") as fh:
        assert [row["seeds_complete"] for row in csv.DictReader(fh)] == ["2", "2"]


@pytest.mark.parametrize("args, match", [
    (["--grid", "optim.lr"], "malformed --grid"),
    (["--grid", "optim.lrr=0.1,0.2"], "unknown key 'optim.lrr'"),
    (["--grid", "optim.lr=0.1,-1"], "optim.lr"),
    (["--grid", "optim.lr=0.1,0.1"], "repeated value"),
    (["--grid", "attack.eps=8/255,8-255"], "same run name"),
    (["--seeds", "0,x"], "--seeds"),
    (["--grid", "seed=1,2", "--seeds", "0"], "not both"),
    (["--parallel", "0"], "--parallel"),
    (["--launcher", "pbs"], "invalid choice"),
])
def test_bad_sweeps_are_refused_before_anything_is_written(recipe, tmp_path, capsys, args, match):
    out = tmp_path / "sweep"
    assert main(["sweep", str(recipe), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_slurm_launcher_without_slurm_fails_cleanly_before_writing(recipe, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)  # no sbatch on this machine
    out = tmp_path / "sweep"
    assert main(["sweep", str(recipe), "--grid", "optim.lr=0.05", "--launcher", "slurm", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "sbatch not found" in err[-1] and "Traceback" not in "".join(err)
    assert not out.exists()
