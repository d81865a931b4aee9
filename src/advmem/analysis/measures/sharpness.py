"""Sharpness of the robust loss: the worst increase of the adversarial cross-entropy within a
relative weight ball, found by a few steps of projected gradient ascent on the weights.

The adversarial examples are held fixed (PGD at the checkpoint), as in the weight-loss
landscape of Wu et al. 2020 (AWP) and Stutz et al. 2021. The ball is per filter: every
weight matrix / conv kernel row theta_i moves by at most `sharpness_radius * ||theta_i||`
(so the measure does not change when a ReLU layer is rescaled); biases and BN parameters stay
fixed. Each step moves every filter by 2/steps of its radius along its normalized gradient,
then projects. Eval mode (BN running statistics). Reported: the largest loss found minus the
loss at the checkpoint (`robust_sharpness`), and that loss (`robust_train_loss`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from advmem.analysis.measures.names import MEASURES

MARGIN_NORMALIZED: dict[str, str] = {}


def _per_filter_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def robust_sharpness(ctx) -> tuple[float, float]:
    s = ctx.settings
    model = copy.deepcopy(ctx.model).eval()
    for p in model.parameters():
        p.requires_grad_(p.dim() >= 2)
    params = [p for p in model.parameters() if p.requires_grad]
    theta = [p.detach().clone() for p in params]
    radius = [s.sharpness_radius * _per_filter_norm(t) for t in theta]
    delta = [torch.zeros_like(t) for t in theta]
    x_adv, n = ctx.x_adv, ctx.x.shape[0]

    def loss_and_grad():
        grads = [torch.zeros_like(t) for t in theta]
        total = 0.0
        for xb, yb in ctx.chunks(x_adv, ctx.y):
            loss = F.cross_entropy(model(xb).float(), yb, reduction="sum") / n
            for g, gb in zip(grads, torch.autograd.grad(loss, params)):
                g += gb
            total += float(loss.detach())
        return total, grads

    base, grads = loss_and_grad()
    worst = base
    for step in range(s.sharpness_steps):
        with torch.no_grad():
            for d, g, r, p, t in zip(delta, grads, radius, params, theta):
                d += (2.0 / s.sharpness_steps) * r * g / _per_filter_norm(g).clamp_min(1e-12)
                d *= (r / _per_filter_norm(d).clamp_min(1e-12)).clamp(max=1.0)
                p.copy_(t + d)
        value, grads = loss_and_grad()
        worst = max(worst, value)
    return worst - base, base


@MEASURES.register("sharpness")
def compute(ctx) -> dict[str, float]:
    sharpness, base = robust_sharpness(ctx)
    return {"robust_sharpness": sharpness, "robust_train_loss": base}
