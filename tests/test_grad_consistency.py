"""The per-epoch gradient-consistency signal (track.grad_consistency): logged, and free of side effects."""

from __future__ import annotations

import json

import pytest
import torch

from advmem.training import train
from advmem.methods import build_method
from advmem.models import build_model
from advmem.recipe import recipe_from_dict
from advmem.track.grad_consistency import step_consistency
from conftest import tiny_recipe

KEYS = ("grad_cos_step", "grad_cos_step_fixed", "grad_rel_step")


def final_weights(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run.path / "checkpoints" / "last.safetensors"))


@pytest.mark.parametrize("method", ["pgd_at", "trades"])
def test_the_signal_is_logged_and_changes_nothing_in_training(tmp_path, method):
    runs = {}
    for on in (False, True):
        body = tiny_recipe(**{"method.name": method, "name": f"{method}-{on}"})
        if on:
            body["track"] = {"grad_consistency": {"batch_size": 32}}
        recipe = recipe_from_dict(body)
        runs[on], _ = train(recipe, run_root=tmp_path, quiet=True)
        if on:
            assert recipe.hash() != recipe_from_dict(tiny_recipe(**{"method.name": method})).hash()
    off, on = (final_weights(runs[k]) for k in (False, True))
    assert off.keys() == on.keys() and all(torch.equal(off[k], on[k]) for k in off)
    rows = [json.loads(line) for line in (runs[True].path / "metrics.jsonl").read_text().splitlines()]
    assert all(all(k in row for k in KEYS) for row in rows)
    assert all(-1.0 <= row["grad_cos_step"] <= 1.0 and row["grad_rel_step"] >= 0 for row in rows)
    assert not any(k in row for row in (json.loads(line) for line in (runs[False].path / "metrics.jsonl")
                                        .read_text().splitlines()) for k in KEYS)


def test_a_smooth_loss_keeps_its_gradient_over_a_tiny_step():
    """Standard training has no inner maximizer: re-solved and fixed agree exactly, and the
    gradient's direction survives a step of 1e-6 (a loss with a Lipschitz gradient)."""
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, num_classes=4, image_size=8, mean=[0.5], std=[0.5],
                        width=4, hidden=16)
    r = recipe_from_dict({"method": {"name": "standard"}})
    method = build_method(r.method, r.attack, num_train=16, num_classes=4, device="cpu")
    from advmem.data.dataset import Batch

    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g), torch.arange(16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = step_consistency(model, method, batch, lr=1e-6, epoch=1, seed=0)
    assert out["grad_cos_step"] == out["grad_cos_step_fixed"]
    assert out["grad_cos_step"] > 0.9999 and out["grad_rel_step"] < 1e-3
    big = step_consistency(model, method, batch, lr=1.0, epoch=1, seed=0)
    assert big["grad_rel_step"] > out["grad_rel_step"]  # a real step does move the gradient
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights and BN restored
