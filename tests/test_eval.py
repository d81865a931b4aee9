"""`advmem eval`: agreement with pyautoattack, PGD-CW vs APGD-T, clean accuracy, resume, outputs."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from _eval_helpers import cli, cli_env, digits_run, eval_points

EPS = 0.1  # scikit-learn digits (8x8): at this budget about half the test points break


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return digits_run(tmp_path_factory)


def test_cli_autoattack_flags_equal_direct_pyautoattack(run, tmp_path):
    """advmem eval --attack autoattack-lite == calling pyautoattack directly (same seed, settings, batches)."""
    from pyautoattack import AutoAttack

    n, bs = 32, 16
    proc = subprocess.run(cli("eval", run, "--checkpoint", "last", "--attack", "autoattack-lite", "--eps", str(EPS),
                              "--n-examples", n, "--batch-size", bs, "--seed", 3, "--no-checks", "--device", "cpu",
                              "--out-dir", tmp_path, "--quiet"), env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    flags = np.load(tmp_path / "last.eval.flags.npz")
    result = json.loads((tmp_path / "last.eval.json").read_text())

    model, x, y = eval_points(run, n)
    aa = AutoAttack(model, version="custom", attacks=["apgd-ce", "apgd-t"], eps=EPS, norm="Linf", seed=3, device="cpu")
    aa.apgd.n_restarts = 1
    aa.apgd_targeted.n_restarts = 1
    aa.apgd_targeted.n_target_classes = 9
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=bs)
    direct = (y_adv == y).numpy()
    assert 0 < direct.mean() < 1, "the budget should break some points and not others"
    np.testing.assert_array_equal(flags["autoattack_lite"], direct)
    np.testing.assert_array_equal(flags["robust"], direct)
    assert result["autoattack_acc"] == pytest.approx(direct.mean())
    assert (tmp_path / "last.autoattack.log").read_text().count("apgd-t") > 0
    for key in ("clean_acc", "autoattack_acc", "eps", "threat_model", "dataset", "architecture", "n_examples",
                "seed", "versions"):
        assert key in result
    assert result["eps"] == str(EPS) and result["n_examples"] == n and result["threat_model"] == "Linf"
    assert "worst case" in result["robust_acc_is"]
    assert not (tmp_path / "last.eval.state.json").exists()


def test_pgd_cw_close_to_apgd_t_and_clean_is_plain_forward(run):
    from advmem.evaluation import evaluate_model
    from advmem.evaluation.attacks import AttackSettings
    from advmem.evaluation.autoattack import make_autoattack

    model, x, y = eval_points(run, 96)
    res = evaluate_model(model, x, y, attacks=["clean", "pgd-cw", "pgd"], settings=AttackSettings(eps=EPS, steps=20),
                         num_classes=10, checks=False)
    with torch.no_grad():
        plain = (model(x).argmax(1) == y).float().mean().item()
    assert res["clean_acc"] == plain
    aa = make_autoattack(model, tier="lite", eps=EPS, norm="Linf", seed=0, num_classes=10, device="cpu")
    aa.attacks_to_run = ["apgd-t"]
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=256)
    apgd_t = (y_adv == y).float().mean().item()
    assert res["attacks"]["pgd-cw"] <= apgd_t + 0.05, (res["attacks"], apgd_t)
    # the worst case is never above any single attack
    assert res["robust_acc"] <= min(res["attacks"].values())


def test_eval_resumes_after_interruption(run, tmp_path, monkeypatch):
    """An interrupted evaluation restarts after the last completed attack / AutoAttack component."""
    import pyautoattack.autoattack as aa_module

    from advmem.evaluation import evaluate_target

    kw = dict(attacks=["fgsm", "autoattack-lite", "pgd"], n_examples=24, batch_size=12, eps=str(EPS), steps=5,
              checks=False, which="last", device="cpu", quiet=True)
    reference = evaluate_target(str(run), out_dir=str(tmp_path / "ref"), **kw)[0]
    ref_flags = np.load(tmp_path / "ref" / "last.eval.flags.npz")

    original = aa_module.AutoAttack.run_standard_evaluation

    def interrupt_in_apgd_t(self, x, y, **k):
        if self.attacks_to_run == ["apgd-t"]:
            raise KeyboardInterrupt
        return original(self, x, y, **k)

    monkeypatch.setattr(aa_module.AutoAttack, "run_standard_evaluation", interrupt_in_apgd_t)
    with pytest.raises(KeyboardInterrupt):
        evaluate_target(str(run), out_dir=str(tmp_path / "res"), **kw)
    saved = json.loads((tmp_path / "res" / "last.eval.state.json").read_text())
    assert set(saved["attacks"]) == {"clean", "fgsm"} and list(saved["autoattack"]["lite"]) == ["apgd-ce"]

    calls = []

    def count(self, x, y, **k):
        calls.append(list(self.attacks_to_run))
        return original(self, x, y, **k)

    monkeypatch.setattr(aa_module.AutoAttack, "run_standard_evaluation", count)
    resumed = evaluate_target(str(run), out_dir=str(tmp_path / "res"), **kw)[0]
    assert ["apgd-ce"] not in calls  # restored, not rerun
    flags = np.load(tmp_path / "res" / "last.eval.flags.npz")
    for key in ref_flags.files:
        np.testing.assert_array_equal(flags[key], ref_flags[key])
    assert resumed["robust_acc"] == reference["robust_acc"]


def test_bad_eval_options_are_user_errors(run, tmp_path, capsys):
    from advmem.cli import main

    assert main(["eval", str(run), "--attack", "bogus"]) == 2
    assert "unknown attack 'bogus'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing.pt")]) == 2
    assert "no such" in capsys.readouterr().err
    assert main(["eval", str(run), "--steps", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
