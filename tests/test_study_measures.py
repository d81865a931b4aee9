"""`advmem study measures --scale tiny`: the family, the per-measure statistics, the files, skip and cache."""

from __future__ import annotations

import json
import math

import pytest
import torch

from advmem.cli import main
from advmem.studies import measures as study


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("measures")
    out, repro = root / "out", root / "REPRODUCTION.md"
    repro.write_text("# Reproduction\n\n<!-- other:begin -->\nkept\n<!-- other:end -->\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["study", "measures", "--scale", "tiny", "--out", str(out), "--reproduction", str(repro),
                     "--n-boot", "200", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, repro


def test_family_names_and_seeds():
    points = study.family("tiny", [0, 1])
    names = [study.run_name(p, "tiny") for p in points]
    assert len(points) == 2 * 3 * 2 + 2 and len(set(names)) == len(names)
    assert {"pgd-at-noise0", "pgd-at-noise0.5_seed1", "trades-noise1", "trades-noise0-n24"} <= set(names)
    recipes = {r.name: r for _, r, _ in study.build_recipes("tiny", None, [], [0, 1])}
    noisy, seeded = recipes["trades-noise0.5_seed1"], recipes["trades-noise0"]
    assert (noisy.data.label_noise.kind, noisy.data.label_noise.rate) == ("symmetric", 0.5)
    assert (noisy.seed, noisy.data.label_noise.seed) == (1, 1)  # the seed draws init, order and labels
    assert seeded.data.label_noise.kind == "none" and seeded.seed == 0
    assert recipes["pgd-at-noise0-n24"].data.synthetic.n_train == 24
    assert recipes["pgd-at-noise0"].track.per_sample is None  # no per-epoch tracking: the family is trained cheaply


def test_tiny_study_writes_the_family_the_statistics_and_the_section(tiny_study):
    out, repro = tiny_study
    results = json.loads((out / "results.json").read_text())
    models = results["models"]
    assert len(models) == 14 and all((out / "runs" / m["run"] / "study_measures.json").is_file() for m in models)
    assert all(isinstance(m["converged"], bool) for m in models)
    assert {m["noise"] for m in models} == {0.0, 0.5, 1.0} and {m["train_size"] for m in models} == {24, 48}
    by = {e["measure"]: e for e in results["measures"]}
    assert by["robust_gap"]["reference"] and by["robust_gap"]["tau_robust_gap"]["tau"] == pytest.approx(1.0)
    for name in ("frobenius_sq_sum", "path_norm_over_adv_margin", "pacbayes_sigma_robust", "input_grad_adv"):
        e = by[name]
        t = e["tau_robust_gap"]
        assert t["n"] >= 3 and t["n_boot"] == 200, name
        assert not math.isfinite(t["tau"]) or -1 <= t["lo"] <= t["hi"] <= 1, name
        assert set(e["granulated_robust_gap"]["per_axis"]) == {"method", "noise", "train_size"}
        assert set(e["sanity"]["groups"]) == {"pgd_at", "trades"}
    assert by["pacbayes_sigma_robust"]["sign"] == -1.0 and by["path_norm"]["sign"] == 1.0
    # the noise axis: one group per (method, size, seed), of which the 2 at the small size have one
    # noise rate only; the size axis: one group per (method, noise, seed), 2 with two sizes
    axes = by["frobenius_sq_sum"]["granulated_robust_gap"]["per_axis"]
    assert axes["noise"]["groups"] + axes["noise"]["skipped"] == 6
    assert axes["train_size"]["groups"] + axes["train_size"]["skipped"] == 12
    assert (out / "measures" / "measures.csv").is_file() and (out / "measures_vs_robust_gap.png").stat().st_size > 0
    readme = (out / "README.md").read_text()
    assert "Smoke test" in readme and "| measure | sign | tau robust gap |" in readme and "Reproduced:" in readme
    text = repro.read_text()
    assert "<!-- other:begin -->\nkept\n<!-- other:end -->" in text and text.count("<!-- measures-tiny:begin -->") == 1


def test_adversarial_margin_variants_are_defined_by_default(tiny_study):
    """--margin-over correct (the study's default): every model with a correctly classified
    adversarial sample gets a positive adversarial margin, so its normalized variants are numbers."""
    out, _ = tiny_study
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["measure_settings"]["margin_over"] == "correct"
    for m in results["models"]:
        row = json.loads((out / "runs" / m["run"] / "study_measures.json").read_text())["row"]
        if row["train_rob_acc_sample"] > 0:
            assert row["adv_margin"] > 0 and math.isfinite(m["path_norm_over_adv_margin"]), m["run"]


def test_rerun_skips_runs_and_reuses_the_measures(tiny_study, capsys):
    out, repro = tiny_study
    caches = sorted((out / "runs").glob("*/study_measures.json"))
    before = {p: p.stat().st_mtime_ns for p in caches}
    capsys.readouterr()
    assert main(["study", "measures", "--scale", "tiny", "--out", str(out), "--reproduction", str(repro),
                 "--n-boot", "200", "--quiet"]) == 0
    assert capsys.readouterr().err.count("complete, skipped") == 14
    assert {p: p.stat().st_mtime_ns for p in caches} == before  # cached measures, not recomputed
    assert repro.read_text().count("<!-- measures-tiny:begin -->") == 1


@pytest.mark.parametrize("extra", [["--seeds", "0"], ["--parallel", "0"], ["--set", "data.label_noise.rate=0.3"],
                                   ["--set", "seed=3"], ["--set", "data.synthetic.n_train=10"], ["--n-boot", "5"],
                                   ["--set", "optim.lr=-1"]])
def test_bad_arguments_are_one_line_errors_and_write_nothing(tmp_path, capsys, extra):
    out = tmp_path / "never"
    assert main(["study", "measures", "--scale", "tiny", "--out", str(out), "--no-reproduction", *extra]) == 2
    err = capsys.readouterr().err
    assert "error" in err and err.strip().count("\n") == 0
    assert not out.exists()


def test_measures_study_is_listed(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert "measures" in capsys.readouterr().out
