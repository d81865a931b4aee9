"""`advmem eval` of a run whose best and last checkpoints are the same weights evaluates once and
reports both; the table names checkpoints best/last, not a truncated path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from _eval_helpers import trained_run


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    return trained_run(tmp_path_factory, "one", epochs=1)  # best is epoch 1, the last


def _count_attacks(monkeypatch):
    import advmem.evaluation.runner as runner

    calls = []
    real = runner.run_white_box

    def counting(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(runner, "run_white_box", counting)
    return calls


def test_identical_best_and_last_are_evaluated_once_and_reported_for_both(one_epoch, tmp_path, monkeypatch, capsys):
    from advmem.cli import main

    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    ckpts = run / "checkpoints"
    assert (ckpts / "best.safetensors").read_bytes() == (ckpts / "last.safetensors").read_bytes()
    calls = _count_attacks(monkeypatch)
    assert main(["eval", str(run), "--attack", "pgd", "--n-examples", "24", "--steps", "2", "--no-checks",
                 "--device", "cpu"]) == 0
    assert calls == ["clean", "pgd"]  # once, not once per checkpoint
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:3]] == ["best", "last"]
    assert "last is the same weights as best (epoch 1): evaluated once, reported for both" in out
    best, last = (json.loads((ckpts / f"{s}.eval.json").read_text()) for s in ("best", "last"))
    assert last["same_weights_as"].endswith("best.safetensors") and "same_weights_as" not in best
    assert last["checkpoint"].endswith("last.safetensors") and last["flags_file"].endswith("last.eval.flags.npz")
    assert {k: v for k, v in last.items() if k not in ("checkpoint", "flags_file", "same_weights_as")} == \
        {k: v for k, v in best.items() if k not in ("checkpoint", "flags_file")}
    with np.load(ckpts / "best.eval.flags.npz") as a, np.load(ckpts / "last.eval.flags.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)

    # a later evaluation adds to both the same way, still once
    calls.clear()
    assert main(["eval", str(run), "--attack", "fgsm", "--n-examples", "24", "--no-checks", "--quiet",
                 "--device", "cpu"]) == 0
    assert calls == ["clean", "fgsm"]
    assert list(json.loads((ckpts / "last.eval.json").read_text())["attacks"]) == ["pgd", "fgsm"]


def test_different_best_and_last_are_each_evaluated(one_epoch, tmp_path, monkeypatch):
    from advmem.evaluation import evaluate_target

    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    for suffix in (".safetensors", ".json"):  # best := the initial weights
        shutil.copy(run / "checkpoints" / f"init{suffix}", run / "checkpoints" / f"best{suffix}")
    calls = _count_attacks(monkeypatch)
    results = evaluate_target(str(run), attacks=["pgd"], n_examples=24, steps=2, checks=False, device="cpu",
                              quiet=True)
    assert calls == ["clean", "pgd"] * 2 and not any("same_weights_as" in r for r in results)


def test_table_names_run_checkpoints_and_external_files():
    from advmem.evaluation.cli import checkpoint_name

    assert checkpoint_name("/a/very/long/path/runs/x/checkpoints/best.safetensors") == "best"
    assert checkpoint_name("runs/x/checkpoints/epoch-5.safetensors") == "epoch-5"
    assert checkpoint_name("/downloads/Wong2020Fast.pt") == "Wong2020Fast.pt"
