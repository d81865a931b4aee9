"""Norm-based measures on the BN-folded weight matrices W_1..W_L (see layers.py).

    frobenius_sq_sum      sum_l ||W_l||_F^2
    log_prod_spectral_sq  sum_l log ||W_l||_2^2        (log of the product of squared spectral norms)
    fro_over_spectral_sum sum_l ||W_l||_F^2 / ||W_l||_2^2   (sum of stable ranks)
    param_count           number of parameters of the model as trained (no folding)

`fro_over_spectral_sum` does not change when the weights are rescaled, so it is not divided
by a margin (as in Jiang et al. 2019, where "fro/spec" has no margin variant).
"""

from __future__ import annotations

import math

import torch

from advmem.analysis.measures.names import MEASURES
from advmem.models import count_parameters

MARGIN_NORMALIZED = {"frobenius_sq_sum": "sq", "log_prod_spectral_sq": "log_sq"}


def spectral_norm(matrix: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix.double(), ord=2))


@MEASURES.register("norms")
def compute(ctx) -> dict[str, float]:
    layers = ctx.folded.layers
    fro_sq = [float(layer.matrix.double().pow(2).sum()) for layer in layers]
    spec = [spectral_norm(layer.matrix) for layer in layers]
    return {
        "frobenius_sq_sum": sum(fro_sq),
        "log_prod_spectral_sq": sum(2 * math.log(s) if s > 0 else float("-inf") for s in spec),
        "fro_over_spectral_sum": sum(f / s ** 2 if s > 0 else float("nan") for f, s in zip(fro_sq, spec)),
        "param_count": float(count_parameters(ctx.model)),
    }
