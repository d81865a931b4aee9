"""Kendall's tau-b (the variant scipy.stats.kendalltau computes by default), with ties.

tau_b = (concordant - discordant) / sqrt((n0 - n1) (n0 - n2)), n0 = n(n-1)/2, n1 and n2 the
pairs tied in x and in y. NaN when either input is constant or fewer than 2 pairs remain
after dropping NaNs (pairwise-complete: a run whose measure is undefined is left out).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> tuple[float, int]:
    """(tau_b, number of runs used)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError("kendall_tau needs two sequences of the same length")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = len(a)
    if n < 2:
        return float("nan"), n
    i, j = np.triu_indices(n, k=1)
    sx, sy = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n0 = len(i)
    n1, n2 = int((sx == 0).sum()), int((sy == 0).sum())
    denominator = math.sqrt((n0 - n1) * (n0 - n2))
    if denominator == 0:
        return float("nan"), n
    return float((sx * sy).sum() / denominator), n
