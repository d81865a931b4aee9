"""The spectral complexity of Bartlett, Foster & Telgarsky 2017 (reference matrices zero).

    R_A = prod_l ||W_l||_2 * ( sum_l ( ||W_l^T||_{2,1} / ||W_l||_2 )^(2/3) )^(3/2)

where ||W^T||_{2,1} is the sum over output units of the L2 norm of their incoming weights.
The margin bound scales as R_A / (gamma * n); we report log R_A (`log_bartlett_complexity`,
a product of many norms overflows otherwise) and log(R_A / gamma) as its margin-normalized
variants. Layers are the BN-folded matrices of layers.py.
"""

from __future__ import annotations

import math

from advmem.analysis.measures.names import MEASURES
from advmem.analysis.measures.norms import spectral_norm

MARGIN_NORMALIZED = {"log_bartlett_complexity": "log"}


def log_spectral_complexity(matrices) -> float:
    log_prod = 0.0
    ratio_sum = 0.0
    for w in matrices:
        spec = spectral_norm(w)
        if not spec > 0:
            return float("-inf")
        l21 = float(w.double().norm(dim=1).sum())
        log_prod += math.log(spec)
        ratio_sum += (l21 / spec) ** (2 / 3)
    return log_prod + 1.5 * math.log(ratio_sum)


@MEASURES.register("bartlett")
def compute(ctx) -> dict[str, float]:
    return {"log_bartlett_complexity": log_spectral_complexity([layer.matrix for layer in ctx.folded.layers])}
