"""advmem's PGD-20 against an independent implementation (pyautoattack's APGD-CE).

On a small_cnn adversarially trained for a few epochs on real Fashion-MNIST, PGD-20 robust
accuracy must be within 2 points of APGD-CE at the same eps (APGD is the stronger attack, so it
should be at most equal or slightly lower). A large gap would mean our PGD is wired wrong.
"""

from __future__ import annotations

import pytest
import torch

from advmem.engine.evaluate import EvalAttack, clean_per_sample, robust_per_sample
from advmem.training import train
from advmem.recipe import recipe_from_dict
from conftest import FMNIST, FMNIST_SKIP

pytestmark = pytest.mark.skipif(not FMNIST.exists(), reason=FMNIST_SKIP)


def test_pgd20_within_two_points_of_apgd_ce(tmp_path):
    pyautoattack = pytest.importorskip("pyautoattack")
    recipe = recipe_from_dict({
        "name": "xcheck", "seed": 0, "device": "cpu",
        "data": {"dataset": "fashion-mnist", "train_size": 3000, "test_size": 500},
        "model": {"name": "small_cnn", "kwargs": {"width": 8, "hidden": 64}},
        "method": {"name": "pgd_at"},
        "attack": {"eps": "0.1", "step_size": "0.025", "steps": 5},
        "optim": {"epochs": 3, "batch_size": 100, "lr": 0.05, "schedule": {"name": "constant"}},
        "eval": {"train_subset": 0, "batch_size": 500, "attack": {"steps": 1}},
    })
    run, _ = train(recipe, run_root=tmp_path, quiet=True)
    from advmem.engine.checkpoint import build_from_checkpoint
    from advmem.data import build_data

    model, _ = build_from_checkpoint(run.checkpoints / "last", "cpu")
    test = build_data(recipe.data, "cpu").test
    x, y = test.all_float(), test.y
    eps = 0.1
    clean = clean_per_sample(model, test, 500)["correct"].float().mean().item()
    ours = robust_per_sample(model, test, EvalAttack(eps=eps, step_size=eps / 4, steps=20), 500,
                             generator=torch.Generator().manual_seed(0))["correct"].float().mean().item()
    adversary = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version="custom", attacks=["apgd-ce"],
                                        seed=0, device="cpu")
    adversary.apgd.n_restarts = 1  # as in AutoAttack's standard version
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=500)
    with torch.no_grad():
        apgd = (model(x_adv).argmax(1) == y).float().mean().item()
    assert clean > 0.5, "the model did not train; the cross-check would be meaningless"
    assert ours < clean - 0.05, "PGD barely moved accuracy"
    assert abs(ours - apgd) <= 0.02, f"PGD-20 {ours:.3f} vs APGD-CE {apgd:.3f}"
    assert apgd <= ours + 0.005, f"APGD-CE {apgd:.3f} should not be weaker than PGD-20 {ours:.3f}"
