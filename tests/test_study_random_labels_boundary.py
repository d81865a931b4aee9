"""`advmem study random-labels-boundary --scale tiny`: grid runs, table from the run directories, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advmem.errors import UserError
from advmem.studies import random_labels_boundary as rlb
from advmem.sweep import SweepRun, train_argv

from conftest import run_cli

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def tiny_boundary(tmp_path_factory):
    root = tmp_path_factory.mktemp("boundary")
    out, repro = root / "out", root / "REPRODUCTION.md"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-m", "advmem", "study", "random-labels-boundary", "--scale", "tiny",
                           "--out", str(out), "--reproduction", str(repro), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, repro, json.loads((out / "results.json").read_text())


def test_grid_runs_and_table_match_run_directories(tiny_boundary):
    out, repro, results = tiny_boundary
    assert results["keys"] == ["attack.eps"]
    assert [r["attack.eps"] for r in results["rows"]] == ["0.1", "0.3"]
    for row in results["rows"]:
        for method, stem in (("pgd_at", "pgd-at"), ("trades", "trades")):
            run = out / "runs" / f"random-labels-small-{stem}_eps-{row['attack.eps']}_seed0"
            recipe = (run / "recipe.yaml").read_text()
            # the step follows eps (eps/4) and the labels are random
            assert f"step_size: '{float(row['attack.eps']) / 4!r}'" in recipe, recipe
            last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
            assert row[f"{method}_train_nat"] == pytest.approx(last["track_nat_acc"])
            assert row[f"{method}_train_rob"] == pytest.approx(last["track_rob_acc"])
            assert row[f"{method}_probe"] is not None and row[f"{method}_probe"] >= 0
            assert json.loads((run / "data.json").read_text())["corruption"]["label_noise"]["rate"] == 1.0
        assert row["paper_pattern"] == (row["pgd_at_fit"] == "near chance" and row["trades_fit"] == "memorized")
    readme = (out / "README.md").read_text()
    assert readme.strip() in repro.read_text()
    assert (out / "boundary.png").stat().st_size > 0 and (out / "table.csv").read_text().startswith("attack.eps,")
    assert (out / "grad-stability" / "grad_stability.json").exists()


def test_rerun_trains_nothing(tiny_boundary):
    out, repro, _ = tiny_boundary
    runs = sorted(p for p in (out / "runs").iterdir() if p.name != "logs")
    before = {p.name: (p / "metrics.jsonl").stat().st_mtime_ns for p in runs}
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-m", "advmem", "study", "random-labels-boundary", "--scale", "tiny",
                           "--out", str(out), "--no-reproduction", "--no-probe", "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 runs (4 complete)" in proc.stderr
    assert before == {p.name: (p / "metrics.jsonl").stat().st_mtime_ns for p in runs}


def test_bad_grid_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    for flag, grid, needle in (("--grid", "method.name=pgd_at", "not varied by this study"),
                               ("--grid", "attack.eps=x", "attack.eps"), ("--grid", "optim.lr=-1", "optim.lr"),
                               ("--set", "name=x", "names its runs"), ("--parallel", "0", "--parallel")):
        res = run_cli(["study", "random-labels-boundary", "--scale", "tiny", "--out", str(out), flag, grid],
                      tmp_path)
        assert res.returncode == 2, (grid, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr
        assert not out.exists()


def test_plan_ties_step_to_eps_unless_fixed(tmp_path):
    runs = rlb.plan("tiny", {"attack.eps": ["0.2"]}, [], tmp_path)
    assert {r.extra["method"] for r in runs} == {"pgd_at", "trades"}
    def step(run):  # the last override wins
        return [o for o in run.overrides if o.startswith("attack.step_size=")][-1]

    assert {step(r) for r in runs} == {"attack.step_size=0.05"}
    fixed = rlb.plan("tiny", {"attack.eps": ["0.2"]}, ["attack.step_size=0.01"], tmp_path)
    assert {step(r) for r in fixed} == {"attack.step_size=0.01"}
    with pytest.raises(UserError, match="labels are not random"):
        rlb.plan("tiny", {"attack.eps": ["0.2"]}, ["data.label_noise.rate=0.5"], tmp_path)


def test_sweep_run_uses_its_own_recipe():
    run = SweepRun(name="a", point={}, seed=0, overrides=["seed=0"], recipe_hash="h", epochs=1, spec="own.yaml")
    assert train_argv("sweep.yaml", run, Path("out"))[:2] == ["train", "own.yaml"]
