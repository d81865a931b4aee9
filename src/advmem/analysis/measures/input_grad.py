"""Input-gradient norm: mean over samples of ||grad_x CE(f(x), y)||_2, in [0,1] pixel space,
eval mode, w.r.t. the training labels; on clean training examples and on their PGD examples."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advmem.analysis.measures.names import MEASURES
from advmem.attacks import attack_mode

MARGIN_NORMALIZED: dict[str, str] = {}


def mean_input_grad_norm(ctx, x: torch.Tensor) -> float:
    norms = []
    with attack_mode(ctx.model, "eval"):
        for xb, yb in ctx.chunks(x, ctx.y):
            xb = xb.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(ctx.model(xb).float(), yb, reduction="sum")
            (g,) = torch.autograd.grad(loss, xb)
            norms.append(g.flatten(1).double().norm(dim=1))
    return float(torch.cat(norms).mean())


@MEASURES.register("input_grad")
def compute(ctx) -> dict[str, float]:
    return {"input_grad_clean": mean_input_grad_norm(ctx, ctx.x), "input_grad_adv": mean_input_grad_norm(ctx, ctx.x_adv)}
