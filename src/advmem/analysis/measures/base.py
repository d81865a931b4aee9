"""The measure interface: a measure family is one module with `compute(ctx) -> {name: value}`,
registered with `@MEASURES.register(name)` (names.py).

Each family module also declares `MARGIN_NORMALIZED = {name: kind}` for the values that scale
with the weights, so the driver can add the margin-normalized variants uniformly:

    "sq"     value / gamma^2        (squared-norm measures: Frobenius, path norm)
    "log_sq" value - 2 log gamma    (log of a product of squared norms)
    "lin"    value / gamma          (a norm: distance from initialization)
    "log"    value - log gamma      (log of the Bartlett complexity, which is linear in the scale)

gamma is the 10th percentile of the logit margin z_y - max_{j != y} z_j w.r.t. the training
labels, on clean training examples (`clean_margin`) or on their PGD adversarial examples
(`adv_margin`). When that percentile is <= 0 (more than 10% of the samples misclassified,
e.g. a run that did not fit its labels) the normalization is undefined and the normalized
value is NaN; the reference code takes the absolute value instead, which turns an unfitted
model into a "small-margin" one. `margin_over="correct"` (CLI `--margin-over correct`) takes
the percentile over the correctly classified samples only, which is always positive and lets
runs that do not fit 90% of their (adversarial) training samples be normalized too.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advmem.attacks import cross_entropy, pgd
from advmem.engine.evaluate import EvalAttack, margins

from advmem.analysis.measures.names import FAMILIES, MEASURES  # noqa: E402 (FAMILIES re-exported)
from advmem.analysis.measures.layers import fold_batchnorm
MARGIN_QUANTILE = 0.1


@dataclass(frozen=True)
class MeasureSettings:
    """Knobs of the costlier measures (defaults follow the reference code where there is one)."""

    batch_size: int = 256
    # Margins: the 10th percentile over "all" samples (the definition), or over the "correct"
    # ones only (always positive; for runs that fit under 90% of their samples).
    margin_over: str = "all"
    # PAC-Bayes flatness: bisection on log sigma in [sigma_min, sigma_max] (nitarshan: sigma in
    # [0, 2], 15 steps, 10 draws); 8 steps pin sigma to about 5%.
    flatness_drop: float = 0.1  # absolute accuracy drop allowed
    flatness_depth: int = 8
    flatness_draws: int = 3
    flatness_sigma_min: float = 1e-5
    flatness_sigma_max: float = 2.0
    flatness_tolerance: float = 0.01
    # Sharpness of the robust loss: projected ascent in a per-filter relative ball.
    sharpness_radius: float = 1e-3
    sharpness_steps: int = 5


@dataclass
class MeasureContext:
    """A model at one checkpoint with the samples every measure shares."""

    model: nn.Module  # full classifier (Normalize + net), eval mode
    init_model: nn.Module | None  # the same architecture at initialization (for distance)
    x: torch.Tensor  # training images in [0,1]
    y: torch.Tensor  # their training labels
    attack: EvalAttack
    seed: int = 0
    settings: MeasureSettings = field(default_factory=MeasureSettings)

    def chunks(self, *tensors: torch.Tensor):
        bs = self.settings.batch_size
        for start in range(0, self.x.shape[0], bs):
            yield tuple(t[start:start + bs] for t in tensors)

    def adversarial(self, model: nn.Module | None = None, seed_offset: int = 0) -> torch.Tensor:
        """PGD examples (the evaluation attack, CE objective, seeded start) against `model`."""
        model = self.model if model is None else model
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 12_345 + seed_offset)
        a = self.attack
        out = [pgd(model, x, cross_entropy(y), eps=a.eps, step_size=a.step_size, steps=a.steps, norm=a.norm,
                   start=a.start, generator=gen) for x, y in self.chunks(self.x, self.y)]
        return torch.cat(out)

    @cached_property
    def x_adv(self) -> torch.Tensor:
        return self.adversarial()

    @torch.no_grad()
    def logits(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        out = torch.cat([model(xb).float() for (xb,) in self.chunks(x)])
        model.train(was_training)
        return out

    def accuracy(self, x: torch.Tensor, model: nn.Module | None = None) -> float:
        return float((self.logits(x, model).argmax(1) == self.y).float().mean())

    def loss(self, x: torch.Tensor, model: nn.Module | None = None) -> float:
        return float(F.cross_entropy(self.logits(x, model), self.y))

    @cached_property
    def clean_margin(self) -> float:
        return margin_quantile(self.logits(self.x), self.y, correct_only=self.settings.margin_over == "correct")

    @cached_property
    def adv_margin(self) -> float:
        return margin_quantile(self.logits(self.x_adv), self.y, correct_only=self.settings.margin_over == "correct")

    @cached_property
    def folded(self):
        return fold_batchnorm(self.model)


def margin_quantile(logits: torch.Tensor, y: torch.Tensor, q: float = MARGIN_QUANTILE, correct_only: bool = False) -> float:
    m = margins(logits.double(), y)
    if correct_only:
        m = m[m > 0]
    return float(torch.quantile(m, q)) if m.numel() else float("nan")


def normalize_by_margin(value: float, kind: str, gamma: float) -> float:
    if not gamma > 0 or not math.isfinite(value):
        return float("nan")
    if kind == "sq":
        return value / gamma ** 2
    if kind == "log_sq":
        return value - 2 * math.log(gamma)
    if kind == "lin":
        return value / gamma
    if kind == "log":
        return value - math.log(gamma)
    raise ValueError(f"unknown margin normalization {kind!r}")


def compute_all(ctx: MeasureContext, families: tuple[str, ...] = FAMILIES) -> dict[str, Any]:
    """Every family's measures, their margin-normalized variants, and the margins themselves."""
    out: dict[str, Any] = {"clean_margin": ctx.clean_margin, "adv_margin": ctx.adv_margin,
                           "train_nat_acc_sample": ctx.accuracy(ctx.x), "train_rob_acc_sample": ctx.accuracy(ctx.x_adv)}
    for name in families:
        compute = MEASURES.get(name)
        values = compute(ctx)
        out.update(values)
        for key, kind in getattr(sys.modules[compute.__module__], "MARGIN_NORMALIZED", {}).items():
            out[f"{key}_over_clean_margin"] = normalize_by_margin(values[key], kind, ctx.clean_margin)
            out[f"{key}_over_adv_margin"] = normalize_by_margin(values[key], kind, ctx.adv_margin)
    return out
