"""Distance from initialization ||theta - theta_0||_2 over all parameters (the weights as trained,
no BN folding), against the trainer's `checkpoints/init.safetensors`."""

from __future__ import annotations

import math

import torch

from advmem.analysis.measures.names import MEASURES

MARGIN_NORMALIZED = {"dist_from_init": "lin"}


@torch.no_grad()
def distance(model: torch.nn.Module, init_model: torch.nn.Module) -> float:
    total = 0.0
    for (name, p), (name0, p0) in zip(model.named_parameters(), init_model.named_parameters()):
        if name != name0 or p.shape != p0.shape:
            raise ValueError(f"initial weights do not match the model ({name} vs {name0})")
        total += float((p.double() - p0.double().to(p.device)).pow(2).sum())
    return math.sqrt(total)


@MEASURES.register("distance")
def compute(ctx) -> dict[str, float]:
    if ctx.init_model is None:
        return {"dist_from_init": float("nan")}
    return {"dist_from_init": distance(ctx.model, ctx.init_model)}
