"""PAC-Bayes flatness (Jiang et al. 2019; nitarshan's `_pacbayes_sigma`), on clean and on robust accuracy.

sigma is the largest standard deviation of isotropic Gaussian noise added to every parameter
(weights, biases, BN scales and shifts; running statistics untouched; eval mode) such that the
mean accuracy over a few noise draws drops by at most `flatness_drop` (absolute) from the
accuracy at the checkpoint, on the measured training samples w.r.t. their training labels.
It is found by bisection on log sigma over [sigma_min, sigma_max] (nitarshan bisects sigma
itself on [0, 2]; bisecting the logarithm gives the same relative precision for sigma = 0.01
as for sigma = 1 in fewer steps, and 1/sigma^2 needs relative precision), stopping early when
the drop is within `flatness_tolerance` of the target. The measure is 1/sigma^2 (larger =
sharper).

The robust variant uses robust accuracy: PGD (the evaluation attack, same seeded start every
time) is re-run against each noisy network, so it measures how fast robustness, not just
accuracy, degrades. A model whose accuracy is already below `flatness_drop` cannot lose that
much: sigma then runs to sigma_max, and `*_capped` is 1.
"""

from __future__ import annotations

import copy
import math

import torch

from advmem.analysis.measures.names import MEASURES

MARGIN_NORMALIZED: dict[str, str] = {}


@torch.no_grad()
def _set(params, theta, sigma: float, gen: torch.Generator) -> None:
    for p, t in zip(params, theta):
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.device, t.dtype)
        p.copy_(t + sigma * noise)


def pacbayes_sigma(ctx, robust: bool) -> tuple[float, bool]:
    s = ctx.settings
    model = copy.deepcopy(ctx.model).eval()
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]

    def accuracy() -> float:
        return ctx.accuracy(ctx.adversarial(model) if robust else ctx.x, model)

    base = accuracy()
    gen = torch.Generator().manual_seed(10_348_628_753 + ctx.seed + (1 if robust else 0))
    lower, upper = s.flatness_sigma_min, s.flatness_sigma_max
    sigma = upper
    for _ in range(s.flatness_depth):
        sigma = math.sqrt(lower * upper)
        accs = []
        for _ in range(s.flatness_draws):
            _set(params, theta, sigma, gen)
            accs.append(accuracy())
        drop = base - sum(accs) / len(accs)
        if abs(drop - s.flatness_drop) < s.flatness_tolerance:
            return sigma, False
        if drop > s.flatness_drop:
            upper = sigma
        else:
            lower = sigma
    return sigma, upper == s.flatness_sigma_max  # capped: never reached the allowed drop


@MEASURES.register("flatness")
def compute(ctx) -> dict[str, float]:
    out: dict[str, float] = {}
    for kind, robust in (("clean", False), ("robust", True)):
        sigma, capped = pacbayes_sigma(ctx, robust)
        out[f"pacbayes_sigma_{kind}"] = sigma
        out[f"pacbayes_flatness_{kind}"] = 1.0 / sigma ** 2
        out[f"pacbayes_{kind}_capped"] = float(capped)
    return out
