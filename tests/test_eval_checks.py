"""Each sanity flag is raised by a model built to trip it, and none by a normally trained model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _eval_helpers import digits_run, eval_points

from advmem.evaluation.attacks import AttackSettings
from advmem.evaluation.checks import (check_above_clean, check_black_box, check_gradients, check_large_eps,
                                      check_steps, run_checks)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return eval_points(digits_run(tmp_path_factory), 64)


class Quantized(nn.Module):
    """Gradient masking by a non-differentiable input quantization (round to 5 levels)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


class NaNGradient(nn.Module):
    """Same outputs as the model, but the input gradient is NaN (0 * d sqrt(u)/du at u = 0)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) + 0 * torch.sqrt(x - x).flatten(1).sum(1, keepdim=True)


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -g


class GradientReversed(nn.Module):
    """Exact outputs, input gradient pointing the wrong way: PGD walks into the correct class."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_Reverse.apply(x))


class _Band(torch.autograd.Function):
    """margin(t) = -1 for t in (0.505, 0.57), else +1; backward claims d margin / dt = -1."""

    @staticmethod
    def forward(ctx, t):
        return torch.where((t > 0.505) & (t < 0.57), -torch.ones_like(t), torch.ones_like(t))

    @staticmethod
    def backward(ctx, g):
        return -g


class Band(nn.Module):
    """Wrong only inside a thin band of mean brightness just above 0.5; its gradient always says
    'brighter'. One step lands in the band; 20 steps walk through it to the eps boundary."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        m = 3 * _Band.apply(x.flatten(1).mean(1)) + self.dummy
        return torch.stack([m, torch.zeros_like(m)], dim=1)


class OffGrid(nn.Module):
    """Wrong on images on the 1/255 grid (all clean data), right off it: a random start 'helps'."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        off = ((x * 255 - torch.round(x * 255)).abs().flatten(1).amax(1) > 1e-3).float()
        s = 4 * off - 2 + self.dummy
        return torch.stack([s, -s], dim=1)


def test_normally_trained_model_raises_no_flag(trained):
    model, x, y = trained
    checks = run_checks(model, x, y, AttackSettings(eps=0.1, steps=20), num_classes=10)
    assert {c.name for c in checks} >= {"more_steps_weaker", "black_box_stronger", "gradients_masked",
                                        "robust_above_clean", "large_eps_not_zero"}
    assert [c.name for c in checks if c.flagged] == [], [c.detail for c in checks]


def test_quantized_input_masks_gradients(trained):
    model, x, y = trained
    s = AttackSettings(eps=0.3, steps=10)
    q = Quantized(model)
    grad = check_gradients(q, x, y, s)
    assert grad.flagged and grad.values["frac_zero"] == 1.0
    raw: dict = {}
    check_steps(q, x, y, s, raw)
    bb = check_black_box(q, x[:32], y[:32], s, 10, {})
    assert bb.flagged, bb.detail
    assert bb.values["only_square"] > 0


def test_nan_gradients_flagged(trained):
    model, x, y = trained
    c = check_gradients(NaNGradient(model), x, y, AttackSettings(eps=0.1))
    assert c.flagged and c.values["frac_nonfinite"] == 1.0
    assert not check_gradients(model, x, y, AttackSettings(eps=0.1)).flagged


def test_reversed_gradient_does_not_reach_zero_at_huge_eps(trained):
    model, x, y = trained
    s = AttackSettings(eps=0.1, steps=10)
    c = check_large_eps(GradientReversed(model), x[:32], y[:32], s)
    assert c.flagged and c.values["accuracy"] > 0.5, c.detail
    assert not check_large_eps(model, x[:32], y[:32], s).flagged


def test_more_steps_weaker_flagged():
    x = torch.full((32, 1, 8, 8), 128 / 255)  # mean brightness 0.502
    y = torch.zeros(32, dtype=torch.long)
    s = AttackSettings(eps=0.1, steps=20)
    c = check_steps(Band(), x, y, s, {})
    assert c.flagged, c.detail
    assert c.values["accuracy_by_steps"]["1"] < 0.2 and c.values["accuracy_by_steps"]["20"] == 1.0


def test_robust_above_clean_flagged_through_evaluate_model():
    from advmem.evaluation import evaluate_model
    from advmem.evaluation.cli import format_table

    x = torch.randint(0, 256, (24, 1, 8, 8)).float() / 255
    y = torch.zeros(24, dtype=torch.long)
    res = evaluate_model(OffGrid(), x, y, attacks=["pgd"], settings=AttackSettings(eps=0.05, steps=3),
                         num_classes=2, n_check=24)
    assert res["clean_acc"] == 0.0 and res["attacks_raw"]["pgd"] == 1.0
    assert "robust_above_clean" in res["sanity_flags"] and res["flagged"]
    table = format_table([{**res, "checkpoint": "offgrid", "epoch": None, "threat_model": "Linf", "eps": "0.05",
                           "n_examples": 24}])
    assert "FLAGGED" in table and "robust_above_clean" in table
    assert not check_above_clean(0.9, {"pgd": 0.5}, 64).flagged
