"""`advmem study robust-overfitting --scale tiny` end to end: runs, table, figures, REPRODUCTION section, skip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advmem.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_study_runs_end_to_end_at_tiny_scale(tmp_path, capsys):
    out, repro = tmp_path / "study", tmp_path / "REPRODUCTION.md"
    repro.write_text("# Reproduction\n\n<!-- other:begin -->\nkept\n<!-- other:end -->\n")
    args = ["study", "robust-overfitting", "--scale", "tiny", "--out", str(out), "--aa-n", "8",
            "--reproduction", str(repro), "--quiet", "--parallel", "2"]
    assert main(args) == 0
    assert "training 4 runs, 2 at a time" in capsys.readouterr().err  # trained by the two worker processes
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["pgd_at", "pgd_at_te", "trades", "trades_te"]
    for key, res in results["methods"].items():
        ev = res["eval"]
        assert {"best", "last"} <= set(ev)
        for stem in ev.values():
            assert 0 <= stem["natural"] <= 1 and 0 <= stem["pgd"] <= 1 and 0 <= stem["autoattack"] <= 1
            assert stem["autoattack"] <= stem["natural"]
        assert res["hard"], key  # hardest-sample robust accuracy logged from the selection epoch on
        assert res["hard"][0][0] == 2  # the last epoch before the decay after epoch 2
    assert {"ema_best", "ema_last"} <= set(results["methods"]["pgd_at"]["eval"])
    assert (out / "runs" / "pgd_at_te" / "te_buffer.safetensors").is_file()
    assert (out / "runs" / "pgd_at" / "hardest_train.json").is_file()
    for name in ("table.md", "table.csv", "robust_acc_vs_epoch.png", "hardest_train_rob_acc.png", "README.md"):
        assert (out / name).stat().st_size > 0, name
    text = repro.read_text()
    assert "<!-- other:begin -->\nkept\n<!-- other:end -->" in text
    assert text.count("<!-- robust-overfitting:begin -->") == 1
    assert "| PGD-AT+TE |" in text and "Early stopping (PGD-AT)" in text and "PGD-AT+EMA" in text
    # a second invocation skips the complete runs and reuses the cached evaluation
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().err.count("complete, skipped") == 4
    assert repro.read_text().count("<!-- robust-overfitting:begin -->") == 1


def test_bad_arguments_are_one_line_errors_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    base = ["study", "robust-overfitting", "--scale", "tiny", "--out", str(out), "--no-reproduction"]
    for extra in (["--aa-n", "-1"], ["--dataset", "svhn"], ["--set", "method.beta=3"], ["--set", "optim.lr=-1"],
                  ["--set", "data.label_noise.rate=0.2"], ["--parallel", "0"]):
        assert main(base + extra) == 2
        assert "error" in capsys.readouterr().err
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-m", "advmem", *base, "--methods", "pgd_at,nope"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "--methods: unknown nope" in proc.stderr
    assert not out.exists()


def test_set_overrides_every_run_and_is_recorded():
    from advmem.studies.robust_overfitting import build_recipe, method_specs, settings_summary, SCALES

    sets = ["data.label_noise.kind=symmetric", "data.label_noise.rate=0.25", "optim.epochs=5"]
    recipes = [build_recipe("tiny", spec, "cpu", sets) for spec in method_specs("tiny", baselines=True)]
    assert len(recipes) == 6
    for r in recipes:
        assert (r.data.label_noise.kind, r.data.label_noise.rate, r.optim.epochs) == ("symmetric", 0.25, 5)
    assert {r.method.name for r in recipes} == {"pgd_at", "te", "trades", "mart", "awp"}
    assert "symmetric label noise at rate 0.25" in settings_summary(recipes[0], SCALES["tiny"])


def test_interrupted_survives_pickling_across_processes():
    import pickle

    from advmem.errors import Interrupted

    err = pickle.loads(pickle.dumps(Interrupted("stopped by SIGTERM", 15)))
    assert isinstance(err, Interrupted) and err.exit_code == 143 and str(err) == "stopped by SIGTERM"
