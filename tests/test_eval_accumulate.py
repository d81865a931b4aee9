"""`advmem eval` twice: results accumulate per (attack, settings) on the same points; --overwrite or
different points replace them with a message; a bad target is refused before anything is written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from _eval_helpers import digits_run

EPS = "0.1"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return digits_run(tmp_path_factory)


def evaluate(run, out, attacks, **kw):
    from advmem.evaluation import evaluate_target

    args = dict(n_examples=24, batch_size=12, eps=EPS, steps=3, checks=False, which="last", device="cpu", quiet=True)
    args.update(kw)
    return evaluate_target(str(run), attacks=attacks, out_dir=str(out), **args)[0]


def load(out):
    return json.loads((out / "last.eval.json").read_text()), np.load(out / "last.eval.flags.npz")


def test_second_eval_adds_to_the_first_and_the_worst_case_covers_both(run, tmp_path, capsys):
    first = evaluate(run, tmp_path, ["autoattack-lite"])
    log = (tmp_path / "last.autoattack.log").read_text()
    assert "tier=lite" in log
    evaluate(run, tmp_path, ["pgd"], checks=True, n_check=8)
    result, flags = load(tmp_path)
    assert set(result["attacks"]) == {"autoattack-lite", "pgd"}
    assert result["autoattack_acc"] == first["autoattack_acc"] is not None  # not erased by the PGD evaluation
    assert result["autoattack_version"] == "lite"
    worst = flags["clean"] & flags["autoattack_lite"] & flags["pgd"]
    np.testing.assert_array_equal(flags["robust"], worst)
    assert result["robust_acc"] == pytest.approx(worst.mean())
    assert result["robust_acc"] <= min(result["attacks"].values())
    assert "autoattack-lite" in result["robust_acc_is"] and "pgd" in result["robust_acc_is"]
    assert [r["attack"] for r in result["results"]] == ["autoattack-lite", "pgd"]
    assert result["sanity"]["enabled"] and result["replaced"] is None
    assert (tmp_path / "last.autoattack.log").read_text() == log  # the AutoAttack log still matches
    assert not (tmp_path / "last.autoattack.log.partial").exists()

    # an attack already recorded with the same settings is kept, not rerun; other settings add a record
    capsys.readouterr()
    evaluate(run, tmp_path, ["pgd", "fgsm"], quiet=False)
    assert "pgd: already in last.eval.json with these settings, kept" in capsys.readouterr().err
    evaluate(run, tmp_path, ["pgd"], steps=6)
    result, flags = load(tmp_path)
    labels = list(result["attacks"])
    assert labels[0] == "autoattack-lite" and "fgsm" in labels and len(labels) == 4
    pgd_labels = [lab for lab in labels if lab.startswith("pgd(")]
    assert len(pgd_labels) == 2 and any("steps=6" in lab for lab in pgd_labels)
    keys = [r["flags_key"] for r in result["results"]]
    assert sorted(keys + ["clean", "index", "label", "robust"]) == sorted(flags.files)
    worst = flags["clean"].copy()
    for k in keys:
        worst &= flags[k]
    np.testing.assert_array_equal(flags["robust"], worst)
    assert result["robust_acc"] == pytest.approx(worst.mean())

    # compare/report read the accumulated file
    from advmem.report.tables import RunInfo, comparison_rows

    info = RunInfo(path=run, name="r", is_run=True, evals={"last": result})
    row = [r for r in comparison_rows([info]) if r["checkpoint"] == "last"][0]
    assert row["eval_autoattack"] == f"{100 * first['autoattack_acc']:.2f}"
    assert row["eval_robust"] == f"{100 * result['robust_acc']:.2f}"


def test_overwrite_drops_the_earlier_results_with_a_message(run, tmp_path, capsys):
    evaluate(run, tmp_path, ["autoattack-lite"])
    evaluate(run, tmp_path, ["fgsm"])
    capsys.readouterr()
    evaluate(run, tmp_path, ["pgd"], overwrite=True)
    err = capsys.readouterr().err
    line = [m for m in err.splitlines() if "replacing" in m]
    assert len(line) == 1 and "--overwrite" in line[0] and "autoattack-lite, fgsm" in line[0]
    result, flags = load(tmp_path)
    assert list(result["attacks"]) == ["pgd"] and result["autoattack_acc"] is None
    assert "fgsm" not in flags.files and "autoattack_lite" not in flags.files
    assert not (tmp_path / "last.autoattack.log").exists()  # no stale log of a dropped AutoAttack
    assert "--overwrite" in result["replaced"]


def test_different_points_replace_with_a_message(run, tmp_path, capsys):
    evaluate(run, tmp_path, ["fgsm"])
    capsys.readouterr()
    evaluate(run, tmp_path, ["pgd"], n_examples=16)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different points (n_examples 24 -> 16)" in err and "fgsm" in err
    result, flags = load(tmp_path)
    assert list(result["attacks"]) == ["pgd"] and result["n_examples"] == 16 and len(flags["robust"]) == 16
    capsys.readouterr()
    evaluate(run, tmp_path, ["fgsm"], n_examples=16, seed=1)
    assert "seed 0 -> 1" in capsys.readouterr().err
    assert list(load(tmp_path)[0]["attacks"]) == ["fgsm"]


def test_unusable_earlier_results_are_refused_not_destroyed(run, tmp_path, capsys):
    from advmem.cli import main

    base = ["eval", str(run), "--checkpoint", "last", "--n-examples", "8", "--steps", "1", "--no-checks",
            "--eps", EPS, "--device", "cpu", "--out-dir", str(tmp_path), "--quiet"]
    (tmp_path / "last.eval.json").write_text("{truncated")
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not readable JSON" in err and "--overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.eval.json"]
    assert main(base + ["--overwrite"]) == 0
    assert "unreadable" in capsys.readouterr().err
    (tmp_path / "last.eval.flags.npz").unlink()
    before = (tmp_path / "last.eval.json").read_bytes()
    assert main(base + ["--attack", "fgsm"]) == 2
    assert "per-sample flags" in capsys.readouterr().err
    assert (tmp_path / "last.eval.json").read_bytes() == before
    # a file of an earlier advmem (no per-attack records) is not silently replaced either
    legacy = json.loads(before)
    for key in ("results", "points"):
        legacy.pop(key)
    (tmp_path / "last.eval.json").write_text(json.dumps(legacy))
    assert main(base + ["--attack", "fgsm"]) == 2
    assert "earlier advmem without per-attack records" in capsys.readouterr().err
    assert json.loads((tmp_path / "last.eval.json").read_text()) == legacy


@pytest.mark.parametrize("damage", ["truncated-weights", "bad-sidecar"])
def test_a_bad_checkpoint_is_refused_before_any_result_is_written(run, tmp_path, capsys, damage):
    from advmem.cli import main

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ckpts = copy / "checkpoints"
    for f in ckpts.glob("*.eval.*"):
        f.unlink()
    if damage == "truncated-weights":
        data = (ckpts / "last.safetensors").read_bytes()
        (ckpts / "last.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (ckpts / "last.json").write_text("{not json")
    before = sorted(p.name for p in ckpts.iterdir())
    assert main(["eval", str(copy), "--n-examples", "8", "--steps", "1", "--no-checks", "--device", "cpu",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "last" in err
    assert sorted(p.name for p in ckpts.iterdir()) == before  # best.eval.* not written either
