"""The random-labels study's along-training protocol: replays that reproduce a run's early epochs
bitwise, the refusal when they could not, and the verdict arithmetic on a constructed table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advmem.errors import UserError
from advmem.studies import grad_along, random_labels


def tiny(method: str, extra: list[str]):
    return random_labels.build_recipes("tiny", "cpu", extra, [1])[(method, "random", 1)]


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("method", ["pgd_at", "trades"])
def test_replay_reproduces_the_runs_early_epochs_bitwise(tmp_path, one_thread, method):
    from advmem.training import train

    # the full run evaluates and tracks every epoch (both draw random starts) and keeps epochs 1, 2
    full = tiny(method, ["log.checkpoint_epochs=[1, 2]", "track.grad_consistency=null"])
    assert full.optim.epochs == 3 and full.eval.every == 1 and full.track.per_sample is not None
    train(full, run_root=tmp_path / "runs", quiet=True)
    sets = grad_along.replay_sets(full, (1, 2), 8)
    replay = tiny(method, sets)
    assert replay.optim.epochs == 2 and replay.track.per_sample is None and replay.track.grad_consistency
    train(replay, run_root=tmp_path / "along", quiet=True)
    for name in ("init", "epoch-1", "epoch-2"):
        a = weights(tmp_path / "runs" / full.name / "checkpoints" / f"{name}.safetensors")
        b = weights(tmp_path / "along" / replay.name / "checkpoints" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # and the replay logged the training-time signal every epoch
    curve = grad_along.consistency_curve(tmp_path / "along" / replay.name)
    assert [p["epoch"] for p in curve] == [1, 2]
    assert all(-1 <= p["grad_cos_step"] <= 1 and p["grad_rel_step"] >= 0 for p in curve)


def test_replay_refuses_a_schedule_that_changes_the_lr_early():
    recipe = tiny("pgd_at", ["optim.schedule={name: multistep, milestones: [1]}"])
    with pytest.raises(UserError, match="changes it at epoch 2"):
        grad_along.replay_sets(recipe, (1, 2), 8)
    with pytest.raises(UserError, match="after the run's last epoch 3"):
        grad_along.replay_sets(tiny("pgd_at", []), (1, 5), 8)
    # a milestone at the last replayed epoch changes the lr only after it: accepted
    ok = tiny("pgd_at", ["optim.schedule={name: multistep, milestones: [2]}"])
    assert "optim.epochs=2" in grad_along.replay_sets(ok, (1, 2), 8)


def row(pgd: list[float], trades: list[float], name: str = "init") -> dict:
    def loss(values):
        return {"rel_small": values, "rel_small_fixed": [1e-6] * len(values), "slope": [0.25] * len(values),
                "slope_fixed": [1.0] * len(values), "grad_norm": [1.0] * len(values)}
    return {"checkpoint": name, "epoch": [0] * len(pgd), "losses": {"pgd_at": loss(pgd), "trades": loss(trades)}}


def test_verdicts_count_the_seeds_where_pgd_at_is_less_stable():
    curve = [{"epoch": 1, "grad_cos_step": 0.5, "grad_cos_step_fixed": 0.9, "grad_rel_step": 1.0}]
    steady = [{"epoch": 1, "grad_cos_step": 0.9, "grad_cos_step_fixed": 0.95, "grad_rel_step": 0.3}]
    along = {"epochs": ["init", "last"], "runs": {
        "pgd_at/random": {"checkpoints": [row([3e-3, 1e-3, 5e-5], [1e-4, 2e-4, 1e-4]),
                                          row([1e-3, 1e-3, 1e-3], [2e-3, 2e-3, 2e-3], "last")],
                          "consistency": [curve, curve, curve]},
        "trades/random": {"checkpoints": [row([1e-3] * 3, [1e-4] * 3), row([1e-3] * 3, [1e-4] * 3, "last")],
                          "consistency": [steady, steady, steady]},
    }}
    text = "\n".join(grad_along.markdown_lines(along, random_labels.METHODS, random_labels.LABELS,
                                               grad_along.PROBES["small"]))
    assert "| PGD-AT, random labels | init | 0.00135 ± 0.0015 (1e-06 ± 0) | 0.25 ± 0 |" in text
    assert "| 2 of 3 seeds |" in text and "| 0 of 3 seeds |" in text
    assert "in **8 of 12** (run, checkpoint, seed) cases" in text  # 2 + 0 + 3 + 3
    # the signal's verdict is a paired difference over the seeds: constant -0.4 is distinguishable
    assert "random labels): PGD-AT − TRADES mean cosine -0.4000 [-0.4000, -0.4000] (paired over 3 seeds" in text
    assert "PGD-AT's gradient is **less** consistent" in text
