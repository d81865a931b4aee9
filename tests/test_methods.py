"""TRADES and PGD-AT losses against hand computation on tiny fixed cases."""

from __future__ import annotations

import math

import torch
from torch import nn

from advmem.data import Batch
from advmem.methods import build_method
from advmem.methods.base import AdvContext
from advmem.methods.trades import trades_kl
from advmem.recipe import AttackConfig, recipe_from_dict


class FixedLogits(nn.Module):
    """Returns preset logits for the natural and the adversarial input (identified by value)."""

    def __init__(self, nat, adv):
        super().__init__()
        self.nat, self.adv = nat, adv
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = self.nat if float(x.sum()) == 0.0 else self.adv
        return out + 0 * self.w


def test_trades_kl_hand_computed():
    nat = torch.tensor([[math.log(0.7), math.log(0.2), math.log(0.1)]])
    adv = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)]])
    expected = 0.7 * math.log(0.7 / 0.5) + 0.2 * math.log(0.2 / 0.25) + 0.1 * math.log(0.1 / 0.25)
    assert abs(trades_kl(nat, adv).item() - expected) < 1e-6


def test_trades_loss_hand_computed():
    nat = torch.tensor([[math.log(0.7), math.log(0.2), math.log(0.1)], [math.log(0.1), math.log(0.8), math.log(0.1)]])
    adv = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)], [math.log(0.3), math.log(0.4), math.log(0.3)]])
    y = torch.tensor([0, 2])
    recipe = recipe_from_dict({"method": {"name": "trades", "beta": 6.0}})
    method = build_method(recipe.method, recipe.attack, num_train=2, num_classes=3, device="cpu")
    model = FixedLogits(nat, adv)
    x = torch.zeros(2, 1, 2, 2)
    batch = Batch(x, y, torch.arange(2))
    loss, logs = method.outer_loss(model, batch, AdvContext(x_adv=torch.ones_like(x)), epoch=1)
    ce = -(math.log(0.7) + math.log(0.1)) / 2
    kl1 = 0.7 * math.log(0.7 / 0.5) + 0.2 * math.log(0.2 / 0.25) + 0.1 * math.log(0.1 / 0.25)
    kl2 = 0.1 * math.log(0.1 / 0.3) + 0.8 * math.log(0.8 / 0.4) + 0.1 * math.log(0.1 / 0.3)
    expected = ce + 6.0 * (kl1 + kl2) / 2
    assert abs(loss.item() - expected) < 1e-6
    assert abs(logs["acc"].item() - 0.5) < 1e-9  # adversarial argmax: row 0 -> class 0 (right), row 1 -> 1 (wrong)


def test_pgd_at_loss_is_ce_on_adversarial():
    nat = torch.tensor([[2.0, 0.0]])
    adv = torch.tensor([[0.0, 1.0]])
    recipe = recipe_from_dict({"method": "pgd_at"})
    method = build_method(recipe.method, recipe.attack, num_train=1, num_classes=2, device="cpu")
    batch = Batch(torch.zeros(1, 1, 1, 1), torch.tensor([0]), torch.arange(1))
    loss, _ = method.outer_loss(FixedLogits(nat, adv), batch, AdvContext(x_adv=torch.ones(1, 1, 1, 1)), 1)
    assert abs(loss.item() - math.log(1 + math.e)) < 1e-6


def test_trades_attack_uses_kl_to_clean_from_small_gaussian_start():
    torch.manual_seed(0)
    from advmem.models import build_model

    model = build_model("mlp", in_channels=1, num_classes=3, image_size=(4, 4), mean=(0.5,), std=(0.3,), hidden=(8,))
    attack = AttackConfig(eps="0.1", step_size="0.1", steps=1)
    recipe = recipe_from_dict({"method": "trades"})
    method = build_method(recipe.method, attack, num_train=4, num_classes=3, device="cpu")
    assert method.start == "gaussian"
    x = torch.rand(4, 1, 4, 4)
    ctx = method.attack(model, Batch(x, torch.zeros(4, dtype=torch.long), torch.arange(4)), 1)
    assert ctx.clean_logits is not None and torch.allclose(ctx.clean_logits, model(x))
    assert (ctx.x_adv - x).abs().max() <= 0.1 + 1e-6
