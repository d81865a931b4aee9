"""`advmem study random-labels --scale tiny` end to end (two seeds), seeding, resumability, REPRODUCTION.md sections."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

from advmem.errors import UserError
from advmem.studies import random_labels
from advmem.studies.reproduction import update_reproduction

from conftest import run_cli

SRC = Path(__file__).resolve().parents[1] / "src"
KEYS = ["pgd_at/true", "pgd_at/random", "trades/true", "trades/random"]
BASES = ["pgd-at-true", "pgd-at-random", "trades-true", "trades-random"]
SEEDS = [0, 1]  # the tiny scale's default
# seed 0 keeps the single-seed names (completed runs are reused), seed S > 0 gets _seedS
RUNS = [b if s == 0 else f"{b}_seed{s}" for b in BASES for s in SEEDS]


def last_row(run_dir: Path) -> dict:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    out, repro = root / "out", root / "REPRODUCTION.md"
    repro.write_text("# Reproduction\n\n<!-- other-study:begin -->\nkeep me\n<!-- other-study:end -->\n")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-m", "advmem", "study", "random-labels", "--scale", "tiny",
                           "--out", str(out), "--reproduction", str(repro), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, repro, proc


def test_tiny_study_writes_everything(tiny_study):
    out, repro, proc = tiny_study
    for name in ("training_curves.png", "grad_norm.png", "results.json", "README.md"):
        assert (out / name).stat().st_size > 0, name
    for run in RUNS:
        run_dir = out / "runs" / run
        for name in ("summary.json", "metrics.jsonl", "per_sample.parquet"):
            assert (run_dir / name).exists(), (run, name)
        assert (run_dir / "corruption.npz").exists() == ("-random" in run)
    if has_module("advmem.analysis.grad_stability"):
        assert (out / "grad-stability" / "grad_stability.json").exists()
        assert (out / "grad-stability" / "grad_stability.png").exists()
    else:
        assert "gradient-stability probe skipped" in proc.stderr
    if has_module("advmem.analysis.measures"):
        assert any((out / "measures").iterdir())
    results = json.loads((out / "results.json").read_text())
    assert results["chance"] == pytest.approx(0.25)
    # the along-training protocol: both losses at init, the replayed epoch 1 and the run's last weights
    along = results["along"]
    assert along["epochs"] == ["init", "epoch-1", "last"] and (out / "grad_along.png").stat().st_size > 0
    for key in KEYS:
        entry = along["runs"][key]
        assert [r["epoch"] for r in entry["checkpoints"]] == [[0, 0], [1, 1], [3, 3]]
        assert all(set(r["losses"]) == {"pgd_at", "trades"} for r in entry["checkpoints"])
        assert [[p["epoch"] for p in c] for c in entry["consistency"]] == [[1], [1]]
    assert results["settings"]["seeds"] == SEEDS and "--seeds 2" in results["settings"]["command"]
    readme = (out / "README.md").read_text()
    assert "2 seeds: 0, 1" in readme
    assert "Verdict (same weights)" in readme and "Verdict (training-time signal, random labels)" in readme
    # README and results.json numbers are mean ± sample std over the seeds' run directories
    for key, base in zip(KEYS, BASES):
        entry = results["runs"][key]
        assert [Path(p).name for p in entry["runs"]] == [base, f"{base}_seed1"]
        cells = []
        for metric, col in (("train_nat_acc", "track_nat_acc"), ("train_rob_acc", "track_rob_acc"),
                            ("test_nat_acc", "test_nat_acc"), ("test_rob_acc", "test_rob_acc")):
            a, b = (last_row(out / "runs" / Path(p).name)[col] for p in entry["runs"])
            st = entry[metric]
            assert st["n"] == 2 and st["values"] == pytest.approx([a, b])
            assert st["mean"] == pytest.approx((a + b) / 2)
            assert st["std"] == pytest.approx(abs(a - b) / 2 ** 0.5)  # sample std of two values
            cells.append(f"{100 * st['mean']:.1f} ± {100 * st['std']:.1f}%")
        g = entry["grad_norm_sq_last"]
        assert g["n"] == 2 and g["mean"] == pytest.approx(sum(g["values"]) / 2)
        assert f"| {' | '.join(cells)} | {g['mean']:.3g} ± {g['std']:.2g} |" in readme, (key, cells)
        # the plotted curve is the mean over seeds, with its std
        final = entry["curve"][-1]
        assert final["train_nat_acc"] == pytest.approx(entry["train_nat_acc"]["mean"])
        assert final["train_nat_acc_std"] == pytest.approx(entry["train_nat_acc"]["std"])
        assert final["train_nat_acc_n"] == 2
    # true-label runs train on clean labels, random-label runs on the recorded random ones
    for run in ("pgd-at-random", "pgd-at-random_seed1"):
        rand = json.loads((out / "runs" / run / "data.json").read_text())
        assert rand["corruption"]["label_noise"]["redrawn"] == 48
    text = repro.read_text()
    assert "<!-- other-study:begin -->\nkeep me\n<!-- other-study:end -->" in text
    assert text.count("<!-- random-labels-tiny:begin -->") == 1
    assert readme.strip() in text


def test_seeds_draw_labels_init_and_order(tiny_study):
    out, _, _ = tiny_study
    runs = out / "runs"

    def labels(run):
        with np.load(runs / run / "corruption.npz") as z:
            return z["labels"].copy()

    # the label draw follows the seed: different across seeds, the same for both methods of one seed
    assert (labels("pgd-at-random") != labels("pgd-at-random_seed1")).mean() > 0.3
    assert np.array_equal(labels("pgd-at-random"), labels("trades-random"))
    assert np.array_equal(labels("pgd-at-random_seed1"), labels("trades-random_seed1"))
    recipes = random_labels.build_recipes("tiny", None, [], SEEDS)
    assert recipes[("pgd_at", "random", 1)].seed == 1 and recipes[("pgd_at", "random", 1)].data.label_noise.seed == 1
    assert recipes[("pgd_at", "random", 0)].seed == 0 and recipes[("pgd_at", "random", 0)].data.label_noise.seed == 0
    # the initialization follows the seed (the same for both methods of one seed: same model)
    init = {run: weights(runs / run / "checkpoints" / "init.safetensors") for run in RUNS}
    for base in BASES:
        a, b = init[base], init[f"{base}_seed1"]
        assert a.keys() == b.keys()
        assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))
    for seed_suffix in ("", "_seed1"):
        a, b = init[f"pgd-at-random{seed_suffix}"], init[f"trades-random{seed_suffix}"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    # and so do the final weights of the random-label runs
    a, b = (weights(runs / r / "checkpoints" / "last.safetensors") for r in ("pgd-at-random", "pgd-at-random_seed1"))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))


def test_same_seed_gives_bitwise_the_same_run(tiny_study, tmp_path):
    """Retrain the seed-1 random-label PGD-AT run from its recipe: the final weights are bitwise equal."""
    out, _, _ = tiny_study
    overrides = random_labels.recipe_overrides("tiny", "pgd_at", "random", 1, None, [])
    args = ["train", random_labels.SCALES["tiny"]["recipes"]["pgd_at"], "--quiet"]
    for o in overrides + [f"output_root={tmp_path}"]:
        args += ["--set", o]
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-m", "advmem", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again, first = tmp_path / "pgd-at-random_seed1", out / "runs" / "pgd-at-random_seed1"
    for ckpt in ("init", "last"):
        a = weights(first / "checkpoints" / f"{ckpt}.safetensors")
        b = weights(again / "checkpoints" / f"{ckpt}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), ckpt
    with np.load(first / "corruption.npz") as x, np.load(again / "corruption.npz") as y:
        assert np.array_equal(x["labels"], y["labels"])
    assert [r["train_loss"] for r in map(json.loads, (first / "metrics.jsonl").read_text().splitlines())] == \
        [r["train_loss"] for r in map(json.loads, (again / "metrics.jsonl").read_text().splitlines())]


def test_more_seeds_reuse_the_completed_ones_and_train_in_parallel(tiny_study, tmp_path):
    out, _, _ = tiny_study
    copy = tmp_path / "out"
    shutil.copytree(out / "runs", copy / "runs")
    before = {run: (copy / "runs" / run / "metrics.jsonl").read_bytes() for run in RUNS}
    res = run_cli(["study", "random-labels", "--scale", "tiny", "--seeds", "3", "--parallel", "2", "--out", str(copy),
                   "--no-reproduction", "--skip", "along", "--quiet"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("complete, skipped") == 8
    assert before == {run: (copy / "runs" / run / "metrics.jsonl").read_bytes() for run in RUNS}
    for base in BASES:
        assert (copy / "runs" / f"{base}_seed2" / "summary.json").exists()
        assert (copy / "runs" / "logs" / f"{base}_seed2.log").exists()
    results = json.loads((copy / "results.json").read_text())
    assert results["settings"]["seeds"] == [0, 1, 2]
    assert all(results["runs"][k]["train_nat_acc"]["n"] == 3 for k in KEYS)
    assert "3 seeds: 0, 1, 2" in (copy / "README.md").read_text()


def test_bad_seed_options_are_one_line_errors(tmp_path):
    out = tmp_path / "out"
    for extra, needle in ((["--seeds", "0"], "--seeds 0"), (["--set", "seed=3"], "use --seeds"),
                          (["--set", "data.label_noise.seed=3"], "use --seeds"), (["--parallel", "0"], "--parallel"),
                          (["--skip", "probes"], "--skip probes")):
        res = run_cli(["study", "random-labels", "--scale", "tiny", "--out", str(out), *extra], tmp_path)
        assert res.returncode == 2, (extra, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not out.exists()


def test_rerun_skips_complete_runs_and_calls_analyses(tiny_study, monkeypatch, capsys):
    out, repro, _ = tiny_study
    mtimes = {run: (out / "runs" / run / "metrics.jsonl").stat().st_mtime_ns for run in RUNS}
    calls = {}

    # re-solved change per run: seed 0 alone says TRADES random is the less stable (3 > 1), the means
    # over the two seeds say PGD-AT random is (5 > 3): the verdict must follow the means
    fake = {"pgd-at-random": 1.0, "pgd-at-random_seed1": 9.0, "trades-random": 3.0, "trades-random_seed1": 3.0}

    def probe_runs(run_dirs, out_dir, **opts):
        calls["probe"] = [Path(p).name for p in run_dirs]
        return {"runs": [{"run": Path(p).name, "alphas": [0.0, 1e-3, 1e-2],
                          "regenerated": {"mean": [0, 0.1, fake.get(Path(p).name, 0.5)]},
                          "fixed": {"mean": [0, 0.01, 0.1]}} for p in run_dirs]}

    def measure_runs(run_dirs, out_dir, **opts):
        calls["measures"] = len(run_dirs)
        calls["margin_over"] = opts["settings"]["margin_over"]
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "measures.md").write_text("# Complexity measures\n\n| run | measure |\n|---|---|\n| x | 1 |\n")
        return [{"run": Path(p).name} for p in run_dirs]

    monkeypatch.setitem(sys.modules, "advmem.analysis.grad_stability", types.SimpleNamespace(probe_runs=probe_runs))
    monkeypatch.setitem(sys.modules, "advmem.analysis.measures", types.SimpleNamespace(measure_runs=measure_runs,
                                                                                    MeasureSettings=dict))
    args = Namespace(scale="tiny", out=str(out), device=None, set=[], reproduction=str(repro),
                     no_reproduction=False, quiet=True, seeds=None, parallel=1)
    assert random_labels.run(args) == 0
    err = capsys.readouterr().err
    assert err.count("complete, skipped") == 16  # the 8 runs and their 8 along-training replays
    assert "same-weights probe along training" not in err  # every probed checkpoint is cached
    assert mtimes == {run: (out / "runs" / run / "metrics.jsonl").stat().st_mtime_ns for run in RUNS}
    # margins over the correctly classified samples, as `advmem study measures` (no NaN measures)
    assert calls == {"probe": RUNS, "measures": 8, "margin_over": "correct"}
    readme = (out / "README.md").read_text()
    # the measures table sits in the section, before its Files line, without the analysis's own title
    assert "\n# Complexity measures" not in readme
    assert readme.index("| x | 1 |") < readme.index("Files: ")
    assert "Reproduced: **yes** (PGD-AT 5 vs TRADES 3, means)" in readme
    assert "PGD-AT random labels: 5 ± 5.7 (x_adv fixed: 0.1 ± 0)" in readme
    assert "TRADES random labels: 3 ± 0 (x_adv fixed: 0.1 ± 0)" in readme
    results = json.loads((out / "results.json").read_text())
    assert results["runs"]["pgd_at/random"]["probe_regenerated"]["values"] == [1.0, 9.0]
    assert "| x | 1 |" in readme
    assert repro.read_text().count("<!-- random-labels-tiny:begin -->") == 1


def test_changed_settings_refuse_to_reuse_runs(tiny_study):
    out, _, _ = tiny_study
    before = sorted(p.name for p in (out / "runs").iterdir())
    args = Namespace(scale="tiny", out=str(out), device=None, set=["optim.lr=0.02"], reproduction=None,
                     no_reproduction=True, quiet=True, seeds=None, parallel=1)
    with pytest.raises(UserError, match="trained with different settings"):
        random_labels.run(args)
    assert sorted(p.name for p in (out / "runs").iterdir()) == before


def test_update_reproduction_sections_coexist(tmp_path):
    path = tmp_path / "REPRODUCTION.md"
    update_reproduction("random-labels-small", "first", path)
    update_reproduction("robust-overfitting", "other study", path)
    update_reproduction("random-labels-small", "second\n\nwith lines", path)
    text = path.read_text()
    assert text.startswith("# Reproduction")
    assert "first" not in text and "second\n\nwith lines" in text and "other study" in text
    assert text.index("random-labels-small:begin") < text.index("robust-overfitting:begin")
