"""`advmem study random-labels --scale tiny` end to end, resumability, and REPRODUCTION.md sections."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from argparse import Namespace
from pathlib import Path

import pytest

from advmem.errors import UserError
from advmem.studies import random_labels
from advmem.studies.reproduction import update_reproduction

SRC = Path(__file__).resolve().parents[1] / "src"
RUNS = ["pgd-at-true", "pgd-at-random", "trades-true", "trades-random"]


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
        assert (run_dir / "corruption.npz").exists() == run.endswith("random")
    if has_module("advmem.analysis.grad_stability"):
        assert (out / "grad-stability" / "grad_stability.json").exists()
        assert (out / "grad-stability" / "grad_stability.png").exists()
    else:
        assert "gradient-stability probe skipped" in proc.stderr
    if has_module("advmem.analysis.measures"):
        assert any((out / "measures").iterdir())
    results = json.loads((out / "results.json").read_text())
    assert results["chance"] == pytest.approx(0.25)
    readme = (out / "README.md").read_text()
    # README numbers are the run directories' numbers
    for key, run in zip(("pgd_at/true", "pgd_at/random", "trades/true", "trades/random"), RUNS):
        last = [json.loads(line) for line in (out / "runs" / run / "metrics.jsonl").read_text().splitlines()][-1]
        assert results["runs"][key]["train_rob_acc"] == pytest.approx(last["track_rob_acc"])
        assert f"{100 * last['track_nat_acc']:.1f}%" in readme
    # true-label runs train on clean labels, random-label runs on the recorded random ones
    rand = json.loads((out / "runs" / "pgd-at-random" / "data.json").read_text())
    assert rand["corruption"]["label_noise"]["redrawn"] == 48
    text = repro.read_text()
    assert "<!-- other-study:begin -->\nkeep me\n<!-- other-study:end -->" in text
    assert text.count("<!-- random-labels-tiny:begin -->") == 1
    assert readme.strip() in text


def test_rerun_skips_complete_runs_and_calls_analyses(tiny_study, monkeypatch, capsys):
    out, repro, _ = tiny_study
    mtimes = {run: (out / "runs" / run / "metrics.jsonl").stat().st_mtime_ns for run in RUNS}
    calls = {}

    def probe_runs(run_dirs, out_dir, **opts):
        calls["probe"] = [Path(p).name for p in run_dirs]
        return {"runs": [{"run": Path(p).name, "alphas": [0.0, 1e-3, 1e-2], "regenerated": {"mean": [0, 0.1, 2.0 + i]},
                          "fixed": {"mean": [0, 0.01, 0.1]}} for i, p in enumerate(run_dirs)]}

    def measure_runs(run_dirs, out_dir, **opts):
        calls["measures"] = len(run_dirs)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "measures.md").write_text("| run | measure |\n|---|---|\n| x | 1 |\n")
        return [{"run": Path(p).name} for p in run_dirs]

    monkeypatch.setitem(sys.modules, "advmem.analysis.grad_stability", types.SimpleNamespace(probe_runs=probe_runs))
    monkeypatch.setitem(sys.modules, "advmem.analysis.measures", types.SimpleNamespace(measure_runs=measure_runs))
    args = Namespace(scale="tiny", out=str(out), device=None, set=[], reproduction=str(repro),
                     no_reproduction=False, quiet=True)
    assert random_labels.run(args) == 0
    err = capsys.readouterr().err
    assert err.count("complete, skipped") == 4
    assert mtimes == {run: (out / "runs" / run / "metrics.jsonl").stat().st_mtime_ns for run in RUNS}
    assert calls == {"probe": RUNS, "measures": 4}
    readme = (out / "README.md").read_text()
    # in the fake, TRADES random has the larger re-solved change (5 vs 3 for PGD-AT random): not reproduced
    assert "Reproduced: **no** (PGD-AT 3 vs TRADES 5)" in readme
    assert "PGD-AT random labels: 3 (x_adv fixed: 0.1)" in readme
    assert "| x | 1 |" in readme
    assert repro.read_text().count("<!-- random-labels-tiny:begin -->") == 1


def test_changed_settings_refuse_to_reuse_runs(tiny_study):
    out, _, _ = tiny_study
    before = sorted(p.name for p in (out / "runs").iterdir())
    args = Namespace(scale="tiny", out=str(out), device=None, set=["optim.lr=0.02"], reproduction=None,
                     no_reproduction=True, quiet=True)
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
