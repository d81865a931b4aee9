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
    args = ["study", "robust-overfitting", "--scale", "tiny", "--out", str(out), "--aa-n", "8", "--aa-seeds", "1",
            "--reproduction", str(repro), "--quiet", "--parallel", "2"]
    assert main(args) == 0
    assert "training 8 runs, 2 at a time" in capsys.readouterr().err  # 4 methods x 2 seeds, two worker processes
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["pgd_at", "pgd_at_te", "trades", "trades_te"]
    for key, res in results["methods"].items():
        assert res["seeds"] == [0, 1] and set(res["per_seed"]) == {"0", "1"}
        for seed, entry in res["per_seed"].items():
            ev = entry["eval"]
            assert {"best", "last"} <= set(ev)
            for stem in ev.values():
                assert 0 <= stem["natural"] <= 1 and 0 <= stem["pgd"] <= 1
                if seed == "0":  # --aa-seeds 1: AutoAttack on seed 0 only
                    assert 0 <= stem["autoattack"] <= stem["natural"] and stem["aa_evaluated"] == 8
                else:
                    assert stem["autoattack"] is None
            assert entry["hard"] and entry["hard"][0][0] == 2, key  # logged from the last epoch before the decay
            assert entry["run_minutes"] > 0  # the sum of the run's epoch times
    assert {"ema_best", "ema_last"} <= set(results["methods"]["pgd_at"]["per_seed"]["1"]["eval"])
    for name in ("pgd_at_te", "pgd_at_te_seed1"):
        assert (out / "runs" / name / "te_buffer.safetensors").is_file()
    # the evaluation went through advmem.evaluation: its records, with the sanity checks on the AutoAttack one
    record = json.loads((out / "runs" / "pgd_at" / "study_eval" / "autoattack" / "last.eval.json").read_text())
    assert record["sanity"]["enabled"] and record["autoattack_acc"] is not None
    assert (out / "runs" / "trades_seed1" / "study_eval" / "pgd" / "best.eval.json").is_file()
    paired = {p["compare"]: p for p in results["summary"]["paired"]}
    assert set(paired) == {"PGD-AT+TE - PGD-AT", "TRADES+TE - TRADES", "PGD-AT+EMA - PGD-AT"}
    assert paired["PGD-AT+TE - PGD-AT"]["last_pgd"]["seeds"] == [0, 1]
    for name in ("table.md", "table.csv", "robust_acc_vs_epoch.png", "hardest_train_rob_acc.png", "README.md"):
        assert (out / name).stat().st_size > 0, name
    text = repro.read_text()
    assert "<!-- other:begin -->\nkept\n<!-- other:end -->" in text
    assert text.count("<!-- robust-overfitting:begin -->") == 1
    assert "| PGD-AT+TE |" in text and "Early stopping (PGD-AT)" in text and "PGD-AT+EMA" in text
    assert "Paired differences" in text and "seed noise" in text
    total = sum(e["run_minutes"] for res in results["methods"].values() for e in res["per_seed"].values())
    assert f"; {total:.0f} run-minutes in all" in text and "Compute: minutes of training per run" in text
    assert "initialization and the data order;" in text  # the tiny base has clean labels: no noisy labels drawn
    # a second invocation skips the complete runs and reuses the cached evaluation
    capsys.readouterr()
    cache = out / "runs" / "trades_te_seed1" / "study_eval.json"
    before = cache.stat().st_mtime_ns
    assert main(args) == 0
    assert capsys.readouterr().err.count("complete, skipped") == 8
    assert cache.stat().st_mtime_ns == before
    assert repro.read_text().count("<!-- robust-overfitting:begin -->") == 1


def test_seeds_and_settings_make_the_recipes():
    from advmem.recipe import recipe_from_dict
    from advmem.studies.robust_overfitting import SMALL, build_recipe, method_specs

    specs = {s.key: s for s in method_specs("small", False)}
    base = build_recipe("small", specs["pgd_at_te"], "cpu", [], 0)
    # seed 0 of the default setting is the small base recipe with per-sample tracking of every sample
    plain = recipe_from_dict(dict(SMALL, name="pgd_at_te", method=specs["pgd_at_te"].method, device="cpu",
                                  track={"per_sample": {"every": 4, "subset": "all"}}))
    assert base.name == "pgd_at_te" and base.hash() == plain.hash()
    seeded = build_recipe("small", specs["pgd_at_te"], "cpu", [], 2)
    assert seeded.name == "pgd_at_te_seed2" and (seeded.seed, seeded.data.label_noise.seed) == (2, 2)
    assert build_recipe("small", specs["pgd_at"], "cpu", [], 2).seed == 2  # a method and its TE share the seed
    noisy = build_recipe("small", specs["trades"], "cpu", [], 0, "noise40")
    assert (noisy.data.label_noise.kind, noisy.data.label_noise.rate) == ("symmetric", 0.4)
    clean_specs = {s.key: s for s in method_specs("small", False, setting="clean")}
    clean = build_recipe("small", clean_specs["trades_te"], "cpu", [], 1, "clean")
    assert clean.data.label_noise.kind == "none" and clean.data.train_size == 300
    assert clean.optim.schedule.name == "constant" and clean.optim.batch_size == 16 and clean.optim.lr == 0.01
    assert (clean.method.start_epoch, clean.method.end_epoch) == (40, 80)
    for recipe in (base, seeded, noisy, clean):  # every setting tracks every training sample
        assert (recipe.track.per_sample.every, recipe.track.per_sample.subset) == (4, "all")


def test_bad_arguments_are_one_line_errors_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    base = ["study", "robust-overfitting", "--scale", "tiny", "--out", str(out), "--no-reproduction"]
    for extra in (["--aa-n", "-1"], ["--dataset", "svhn"], ["--set", "method.beta=3"], ["--set", "optim.lr=-1"],
                  ["--set", "data.label_noise.rate=0.2"], ["--parallel", "0"], ["--seeds", "0"],
                  ["--set", "seed=3"], ["--set", "data.label_noise.seed=1"], ["--aa-seeds", "-1"],
                  ["--scale", "paper", "--setting", "clean"], ["--setting", "nope"]):
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
    assert "symmetric label noise at rate 0.25" in settings_summary(recipes[0], SCALES["tiny"], SCALES["tiny"]["te"])


def test_interrupted_survives_pickling_across_processes():
    import pickle

    from advmem.errors import Interrupted

    err = pickle.loads(pickle.dumps(Interrupted("stopped by SIGTERM", 15)))
    assert isinstance(err, Interrupted) and err.exit_code == 143 and str(err) == "stopped by SIGTERM"
