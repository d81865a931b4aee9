"""advmem.analysis.stats against values computed by hand on small fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from advmem.analysis.stats import (granulated_tau, kendall_ci, paired_difference, percentile_interval,
                                   sanity_check)


def test_percentile_interval_of_a_known_sample():
    values = list(range(101))  # quantile q of 0..100 is 100 q exactly
    assert percentile_interval(values, 0.9) == pytest.approx((5.0, 95.0))
    assert percentile_interval([float("nan"), 2.0], 0.5) == (2.0, 2.0)
    assert all(math.isnan(v) for v in percentile_interval([], 0.95))
    with pytest.raises(ValueError):
        percentile_interval(values, 1.0)


def test_bootstrap_of_kendall_tau_matches_the_enumerated_resampling_distribution():
    # x = 1,2,3 against y = 1,3,2: pairs (0,1) and (0,2) concordant, (1,2) discordant, so tau = 1/3.
    # The 27 equally likely resamples: 3 of one model (tau undefined, dropped); 18 of two distinct
    # models, a tie on the repeated one and one informative pair, so tau-b = +1 (12 of them: pairs
    # 01 and 02) or -1 (6: pair 12); 6 permutations of all three, tau = 1/3. Over the 24 defined:
    # P(-1) = 1/4, P(1/3) = 1/4, P(1) = 1/2, so the 30th and 70th percentiles are 1/3 and 1 and
    # the 95% interval is [-1, 1].
    x, y = [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]
    res = kendall_ci(x, y, n_boot=4000, seed=1, level=0.4)
    assert res["tau"] == pytest.approx(1 / 3) and res["n"] == 3
    assert (res["lo"], res["hi"]) == pytest.approx((1 / 3, 1.0))
    assert res["n_valid"] / 4000 == pytest.approx(24 / 27, abs=0.02)
    wide = kendall_ci(x, y, n_boot=4000, seed=1)
    assert (wide["lo"], wide["hi"]) == pytest.approx((-1.0, 1.0))
    assert kendall_ci(x, y, n_boot=500, seed=3) == kendall_ci(x, y, n_boot=500, seed=3)  # seeded


def test_vectorized_bootstrap_taus_equal_kendall_tau_on_each_resample():
    from advmem.analysis.measures.kendall import kendall_tau
    from advmem.analysis.stats import bootstrap_taus

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, size=9).astype(float), rng.normal(size=9)  # ties in a
    idx = rng.integers(0, 9, size=(200, 9))
    expected = [t for t in (kendall_tau(a[i], b[i])[0] for i in idx) if math.isfinite(t)]
    assert bootstrap_taus(a, b, idx) == pytest.approx(expected)


def test_bootstrap_of_a_perfect_ranking_is_a_point_and_nan_inputs_are_dropped():
    res = kendall_ci([1, 2, 3, 4, float("nan")], [10, 20, 30, 40, 50], n_boot=300)
    assert res["n"] == 4 and res["tau"] == 1.0 and (res["lo"], res["hi"]) == (1.0, 1.0)
    few = kendall_ci([1, 2], [2, 1])
    assert few["tau"] == -1.0 and math.isnan(few["lo"]) and few["n_valid"] == 0


ROWS = [  # axes a and b; within a = 0 over b: tau 1/3; within a = 1: -1; within b = 0 over a: +1,
    # b = 1: gap tied (undefined, skipped), b = 2: -1
    {"a": 0, "b": 0, "seed": 0, "m": 1.0, "g": 1.0},
    {"a": 0, "b": 1, "seed": 0, "m": 2.0, "g": 2.0},
    {"a": 0, "b": 2, "seed": 0, "m": 3.0, "g": 1.5},
    {"a": 1, "b": 0, "seed": 0, "m": 1.5, "g": 3.0},
    {"a": 1, "b": 1, "seed": 0, "m": 2.5, "g": 2.0},
    {"a": 1, "b": 2, "seed": 0, "m": 3.5, "g": 1.0},
]


def test_granulated_tau_matches_hand_computed_values():
    res = granulated_tau(ROWS, "m", "g", ["a", "b"])
    b, a = res["per_axis"]["b"], res["per_axis"]["a"]
    assert b["taus"] == pytest.approx([1 / 3, -1.0]) and b["psi"] == pytest.approx(-1 / 3) and b["groups"] == 2
    assert a["taus"] == pytest.approx([1.0, -1.0]) and a["psi"] == 0.0 and (a["groups"], a["skipped"]) == (2, 1)
    assert res["psi"] == pytest.approx(-1 / 6)


def test_granulated_tau_holds_fixed_keys_equal_within_a_group():
    # a second seed with the opposite ranking over b: with seed fixed the groups stay apart (two
    # more groups over b, of tau -1/3 and +1), without it each group mixes two seeds
    flipped = [dict(r, seed=1, g=-r["g"]) for r in ROWS]
    res = granulated_tau(ROWS + flipped, "m", "g", ["a", "b"], fixed=["seed"])
    assert sorted(res["per_axis"]["b"]["taus"]) == pytest.approx(sorted([1 / 3, -1.0, -1 / 3, 1.0]))
    assert res["psi"] == pytest.approx(0.0)
    mixed = granulated_tau(ROWS + flipped, "m", "g", ["a", "b"])
    assert len(mixed["per_axis"]["b"]["taus"]) == 2  # one group per value of a, each with both seeds


def constructed_table():
    """Two methods; noise 0 (true labels) and 1 (random labels); one more noise level in between."""
    rows = []
    for method, values in (("pgd_at", {0.0: [1.0, 2.0], 0.5: [9.0], 1.0: [3.0, 4.0]}),
                           ("trades", {0.0: [5.0, 6.0], 1.0: [5.5, 7.0]})):
        for noise, vs in values.items():
            rows += [{"method": method, "noise": noise, "m": v} for v in vs]
    rows.append({"method": "mart", "noise": 0.0, "m": 1.0})  # no random-label model: not judged
    return rows


def test_sanity_check_rule_on_a_constructed_table():
    kw = dict(is_random=lambda r: r["noise"] == 1.0, is_true=lambda r: r["noise"] == 0.0)
    res = sanity_check(constructed_table(), "m", **kw)
    g = res["groups"]
    assert g["pgd_at"] == {"verdict": "pass", "fraction": 1.0, "pairs": 4}  # 3, 4 above 1, 2; the 9 at noise 0.5 ignored
    assert g["trades"]["verdict"] == "fail" and g["trades"]["fraction"] == pytest.approx(0.75)  # 5.5 < 6
    assert g["mart"]["verdict"] == "n/a" and res["passes"] is False
    flipped = sanity_check(constructed_table(), "m", sign=-1.0, **kw)  # "larger = simpler": reversed
    assert flipped["groups"]["pgd_at"]["verdict"] == "fail" and flipped["groups"]["pgd_at"]["fraction"] == 0.0
    only_pgd = sanity_check([r for r in constructed_table() if r["method"] != "trades"], "m", **kw)
    assert only_pgd["passes"] is True
    ties = sanity_check([{"method": "p", "noise": 0.0, "m": 1.0}, {"method": "p", "noise": 1.0, "m": 1.0}], "m", **kw)
    assert ties["groups"]["p"] == {"verdict": "fail", "fraction": 0.5, "pairs": 1}
    assert sanity_check([{"method": "p", "noise": 0.0, "m": 1.0}], "m", **kw)["passes"] is None


def test_paired_difference_on_fixed_numbers():
    # d = 0.1, 0.15, 0.05: mean 0.1, sample std 0.05; t(0.975, 2) = 4.302653, half-width
    # 4.302653 * 0.05 / sqrt(3) = 0.124207: the interval contains 0
    res = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.45, 2: 0.65})
    assert res["mean"] == pytest.approx(0.1) and res["std"] == pytest.approx(0.05) and res["n"] == 3
    assert (res["lo"], res["hi"]) == pytest.approx((0.1 - 0.124207, 0.1 + 0.124207), abs=1e-6)
    assert res["distinguishable"] is False and res["verdict"].startswith("not distinguishable")
    # d = 0.1, 0.11, 0.09: std 0.01, half-width 0.0248414: [0.0751586, 0.1248414] excludes 0
    tight = paired_difference({0: 0.6, 1: 0.61, 2: 0.59, 3: 0.9}, {0: 0.5, 1: 0.5, 2: 0.5, 3: None})
    assert tight["seeds"] == [0, 1, 2]  # seed 3 has no partner value
    assert (tight["lo"], tight["hi"]) == pytest.approx((0.0751586, 0.1248414), abs=1e-6)
    assert tight["distinguishable"] is True and tight["verdict"].startswith("distinguishable")
    one = paired_difference({0: 0.6}, {0: 0.5})
    assert one["mean"] == pytest.approx(0.1) and one["lo"] is None and "one seed" in one["verdict"]
    assert paired_difference({0: 1.0}, {1: 1.0})["verdict"] == "no seeds in common"
