"""Statistics for the studies: Kendall's tau with a bootstrap interval, Jiang et al.'s granulated
tau, the random-label sanity check, and paired differences over seeds.

Why these: with a handful of models or seeds a point estimate says nothing on its own, so every
number a study reports as a finding comes with an interval, and a comparison of two methods is
paired over the seeds they share (the seed draws the initialization, the data order and the
label noise, so most of the seed-to-seed variation cancels in the difference).

- `kendall_ci`: tau-b over all models and a percentile bootstrap interval (models resampled with
  replacement; resamples where tau is undefined, e.g. all one model, are dropped and counted).
- `granulated_tau`: Jiang et al. 2020 ("Fantastic generalization measures", section 4.1): for
  each hyperparameter axis, the models are grouped by the values of every *other* axis; the
  tau within each group (models that differ in that one hyperparameter only) is averaged over
  the groups (psi_axis), and the psi are averaged over the axes (Psi). Groups with fewer than
  two models or an undefined tau are left out and counted.
- `sanity_check`: does a measure rank every random-label model of a method above every
  true-label model of that method (the test of the paper's section 6)?
- `paired_difference`: d_s = a_s - b_s over the seeds s both have; mean, sample std, a
  t-based confidence interval, and whether it excludes 0.

Pure Python and numpy (scipy only for the t quantile), so the functions can be checked against
values computed by hand (tests/test_stats.py).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from advmem.analysis.measures.kendall import kendall_tau


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The (1 - level)/2 and (1 + level)/2 quantiles of `values` (NaN, NaN when empty)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if not v.size:
        return float("nan"), float("nan")
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def kendall_ci(x: Sequence[float], y: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
               level: float = 0.95) -> dict[str, Any]:
    """Kendall's tau-b of x against y with a seeded percentile-bootstrap interval over the models.

    Models with a non-finite x or y are dropped first (as in `kendall_tau`). Returns tau, n (models
    used), lo, hi, level, n_boot and n_valid (resamples whose tau was defined)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError("kendall_ci needs two sequences of the same length")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    tau, n = kendall_tau(a, b)
    out: dict[str, Any] = {"tau": tau, "n": n, "lo": float("nan"), "hi": float("nan"), "level": level,
                           "n_boot": n_boot, "n_valid": 0}
    if n < 3 or not math.isfinite(tau):
        return out
    rng = np.random.default_rng(seed)
    taus = bootstrap_taus(a, b, rng.integers(0, n, size=(n_boot, n)))
    out["lo"], out["hi"] = percentile_interval(taus, level)
    out["n_valid"] = len(taus)
    return out


def bootstrap_taus(a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> list[float]:
    """tau-b of (a[i], b[i]) for every row i of `idx` (resamples), the defined ones only; the same
    numbers as `kendall_tau` on each resample, vectorized (a repeated model is a tie in both)."""
    sx, sy = np.sign(a[:, None] - a[None, :]), np.sign(b[:, None] - b[None, :])
    n = idx.shape[1]
    k, l = np.triu_indices(n, k=1)
    px, py = sx[idx[:, k], idx[:, l]], sy[idx[:, k], idx[:, l]]  # (resamples, pairs)
    n0 = len(k)
    n1, n2 = (px == 0).sum(1), (py == 0).sum(1)
    denominator = np.sqrt((n0 - n1) * (n0 - n2).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = (px * py).sum(1) / denominator
    return [float(t) for t in tau[denominator > 0]]


def granulated_tau(rows: Sequence[Mapping[str, Any]], measure: str, gap: str, axes: Sequence[str],
                   fixed: Sequence[str] = ()) -> dict[str, Any]:
    """Jiang et al.'s granulated Kendall coefficient of `measure` against `gap` over `rows` (one per model).

    `axes` name the row keys that are hyperparameters; for axis i the groups are the models that
    share the values of every other axis and of the `fixed` keys (e.g. the seed: models of two
    seeds are not "differing in one hyperparameter only", and seed is not an axis). Returns {"per_axis": {axis: {"psi", "groups", "skipped",
    "taus"}}, "psi": mean of the defined per-axis psi (NaN when none is)}."""
    per_axis: dict[str, Any] = {}
    for axis in axes:
        others = [a for a in axes if a != axis] + [k for k in fixed if k not in axes]
        groups: dict[tuple[Hashable, ...], list[Mapping[str, Any]]] = {}
        for row in rows:
            groups.setdefault(tuple(row.get(a) for a in others), []).append(row)
        taus, skipped = [], 0
        for members in groups.values():
            if len({m.get(axis) for m in members}) < 2:
                skipped += 1
                continue
            t, _ = kendall_tau([float(m.get(measure, float("nan"))) for m in members],
                               [float(m.get(gap, float("nan"))) for m in members])
            if math.isfinite(t):
                taus.append(t)
            else:
                skipped += 1
        per_axis[axis] = {"psi": float(np.mean(taus)) if taus else float("nan"), "groups": len(taus),
                          "skipped": skipped, "taus": taus}
    defined = [v["psi"] for v in per_axis.values() if math.isfinite(v["psi"])]
    return {"per_axis": per_axis, "psi": float(np.mean(defined)) if defined else float("nan")}


def sanity_check(rows: Sequence[Mapping[str, Any]], measure: str, *, group: str = "method",
                 is_random: Callable[[Mapping[str, Any]], bool], is_true: Callable[[Mapping[str, Any]], bool],
                 sign: float = 1.0) -> dict[str, Any]:
    """Per `group` value (a method): the fraction of (random-label, true-label) model pairs where the
    random-label model's `measure` (times `sign`: -1 for "larger = simpler" measures such as margins)
    is larger; a group passes when that fraction is 1. Groups without both kinds of model are
    "n/a" and do not count; `passes` is True when every judged group passes (None when none is)."""
    out: dict[str, Any] = {"groups": {}}
    for key in dict.fromkeys(row.get(group) for row in rows):
        members = [r for r in rows if r.get(group) == key]
        rand = [sign * float(r.get(measure, float("nan"))) for r in members if is_random(r)]
        true = [sign * float(r.get(measure, float("nan"))) for r in members if is_true(r)]
        rand, true = [v for v in rand if math.isfinite(v)], [v for v in true if math.isfinite(v)]
        if not rand or not true:
            out["groups"][key] = {"verdict": "n/a", "fraction": None, "pairs": 0}
            continue
        wins = sum(1.0 if r > t else 0.5 if r == t else 0.0 for r in rand for t in true)
        pairs = len(rand) * len(true)
        out["groups"][key] = {"verdict": "pass" if wins == pairs else "fail", "fraction": wins / pairs,
                              "pairs": pairs}
    judged = [g["verdict"] for g in out["groups"].values() if g["verdict"] != "n/a"]
    out["passes"] = (all(v == "pass" for v in judged)) if judged else None
    return out


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_difference(a: Mapping[Hashable, float | None], b: Mapping[Hashable, float | None], *,
                      level: float = 0.95) -> dict[str, Any]:
    """a - b over the keys (seeds) where both are numbers: mean, sample std, n, a t interval
    mean +- t_{n-1,(1+level)/2} std / sqrt(n), and a verdict on whether it excludes 0."""
    keys = [k for k in a if k in b and a[k] is not None and b[k] is not None
            and math.isfinite(float(a[k])) and math.isfinite(float(b[k]))]
    d = [float(a[k]) - float(b[k]) for k in keys]
    n = len(d)
    out: dict[str, Any] = {"n": n, "seeds": keys, "diffs": d, "mean": None, "std": None, "lo": None, "hi": None,
                           "level": level, "distinguishable": None}
    if not n:
        out["verdict"] = "no seeds in common"
        return out
    mean = sum(d) / n
    out["mean"] = mean
    if n < 2:
        out["verdict"] = "one seed: no interval, not judged"
        return out
    std = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * std / math.sqrt(n)
    out.update(std=std, lo=mean - half, hi=mean + half, distinguishable=mean - half > 0 or mean + half < 0)
    if out["distinguishable"]:
        out["verdict"] = f"distinguishable from seed noise ({level:.0%} interval excludes 0)"
    else:
        out["verdict"] = f"not distinguishable from seed noise ({level:.0%} interval contains 0)"
    return out
