"""`advmem study random-labels-boundary --scale tiny`: grid runs, table from the run directories, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from advmem.errors import UserError
from advmem.studies import random_labels_boundary as rlb
from advmem.recipe import load_recipe
from advmem.sweep import SweepRun, expand, train_argv

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
                               ("--set", "name=x", "names its runs"), ("--parallel", "0", "--parallel"),
                               ("--seeds", "0", "--seeds 0"), ("--grid", "seed=0,1", "use --seeds"),
                               ("--grid", "data.label_noise.seed=0,1", "use --seeds"),
                               ("--set", "data.label_noise.seed=2", "use --seeds")):
        res = run_cli(["study", "random-labels-boundary", "--scale", "tiny", "--out", str(out), flag, grid],
                      tmp_path)
        assert res.returncode == 2, (grid, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
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
    run = SweepRun(name="a", point={}, seed=0, overrides=["seed=0"], recipe=None, spec="own.yaml")
    assert train_argv("sweep.yaml", run, Path("out"))[:2] == ["train", "own.yaml"]


def test_plan_seeds_set_init_order_and_labels_and_keep_seed0_names(tmp_path):
    runs = rlb.plan("tiny", {"attack.eps": ["0.2"]}, [], tmp_path, [0, 1, 2])
    assert sorted(r.name for r in runs) == sorted(f"random-labels-small-{m}_eps-0.2_seed{s}"
                                                  for m in ("pgd-at", "trades") for s in (0, 1, 2))
    for run in runs:
        recipe = load_recipe(run.spec, run.overrides)
        assert recipe.seed == run.seed and recipe.data.label_noise.seed == run.seed
        assert recipe.hash() == run.recipe_hash
    # seed 0 is the run the single-seed study (and the sweep without the label seed) would train: reused
    single = {r.name: r.recipe_hash for r in rlb.plan("tiny", {"attack.eps": ["0.2"]}, [], tmp_path)}
    assert single == {r.name: r.recipe_hash for r in runs if r.seed == 0}
    for method, spec in rlb.SCALES["tiny"]["recipes"].items():
        plain, _, _ = expand(spec, {"attack.eps": ["0.2"]}, None,
                             list(rlb.SCALES["tiny"]["overrides"]) + ["attack.step_size=0.05"], tmp_path / "runs")
        assert {r.name: r.recipe_hash for r in plain}.items() <= single.items()
    assert len({r.recipe_hash for r in runs}) == 6


def test_rows_and_verdicts_use_the_mean_over_seeds():
    def numbers(nat, rob, grad):
        return {"train_nat_acc": nat, "train_rob_acc": rob, "grad_norm_sq_last": grad}

    # seed 0 alone: PGD-AT near chance and TRADES memorized (the paper's pattern); the means say otherwise
    table = {("0.1",): {"pgd_at": [numbers(0.25, 0.1, 1.0), numbers(0.65, 0.3, 3.0)],
                        "trades": [numbers(0.95, 0.5, 2.0), numbers(0.75, 0.4, 2.0)]}}
    rows = rlb.rows(table, ["attack.eps"], 0.25)
    (row,) = rows
    assert row["pgd_at_seeds"] == 2 and row["pgd_at_train_nat"] == pytest.approx(0.45)
    assert row["pgd_at_train_nat_std"] == pytest.approx(0.4 / 2 ** 0.5)
    assert row["pgd_at_train_nat_per_seed"] == [0.25, 0.65]
    assert row["pgd_at_fit"] == "partly fitted" and row["trades_fit"] == "partly fitted"
    assert row["paper_pattern"] is False
    results = {"settings": {"scale": "tiny", "command": "c", "date": "d", "wall_min": 0.0, "last_epochs": 1,
                            "probe_directions": 2, "settings": "s", "fixed_step": False, "probe": False,
                            "seeds": [0, 1]},
               "keys": ["attack.eps"], "rows": rows, "chance": 0.25, "notes": []}
    text = rlb.markdown(results)
    assert "| 0.1 | 45.0 ± 28.3 / 20.0 ± 14.1 | partly fitted | 85.0 ± 14.1 / 45.0 ± 7.1 | partly fitted " \
           "| 2 ± 1.4 / 2 ± 0 |" in text
    assert "trained with 2 seeds" in text and "judged on the means over seeds" in text
    assert "- Both at once (the paper's Figure 1): none of the settings tried." in text
    # one seed: plain numbers, no ±
    one = rlb.rows({("0.1",): {m: v[:1] for m, v in table[("0.1",)].items()}}, ["attack.eps"], 0.25)
    results.update(rows=one, settings=dict(results["settings"], seeds=[0]))
    text = rlb.markdown(results)
    assert "| 0.1 | 25.0 / 10.0 | near chance | 95.0 / 50.0 | memorized | 1 / 2 |" in text
    assert "±" not in text.split("|", 1)[1]
    assert "- Both at once (the paper's Figure 1): eps 0.1." in text


def test_seeds_reuse_seed0_runs_and_report_mean_std(tiny_boundary, tmp_path):
    out, _, first = tiny_boundary
    copy = tmp_path / "out"
    shutil.copytree(out / "runs", copy / "runs")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-m", "advmem", "study", "random-labels-boundary", "--scale", "tiny",
                           "--grid", "attack.eps=0.1", "--seeds", "2", "--out", str(copy), "--no-reproduction",
                           "--no-probe", "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 runs (2 complete)" in proc.stderr  # seed 0 of eps 0.1 came from the single-seed study
    results = json.loads((copy / "results.json").read_text())
    (row,) = results["rows"]
    assert results["settings"]["seeds"] == [0, 1]
    readme = (copy / "README.md").read_text()
    labels = {}
    for method, stem in (("pgd_at", "pgd-at"), ("trades", "trades")):
        runs = [copy / "runs" / f"random-labels-small-{stem}_eps-0.1_seed{s}" for s in (0, 1)]
        nat = [[json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()][-1]["track_nat_acc"]
               for r in runs]
        assert row[f"{method}_seeds"] == 2 and row[f"{method}_train_nat_per_seed"] == pytest.approx(nat)
        assert row[f"{method}_train_nat"] == pytest.approx(sum(nat) / 2)
        assert row[f"{method}_train_nat_std"] == pytest.approx(abs(nat[0] - nat[1]) / 2 ** 0.5)
        assert f"{100 * row[method + '_train_nat']:.1f} ± {100 * row[method + '_train_nat_std']:.1f} / " in readme
        assert row[f"{method}_fit"] == rlb.rl.verdict(row[f"{method}_train_nat"], results["chance"])
        labels[method] = [np.load(r / "corruption.npz")["labels"] for r in runs]
    # the label draw follows the seed, and both methods of one seed train on the same labels
    assert (labels["pgd_at"][0] != labels["pgd_at"][1]).any()
    assert all((a == b).all() for a, b in zip(labels["pgd_at"], labels["trades"]))
