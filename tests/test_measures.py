"""Complexity measures against hand-computed values, BN folding, Kendall's tau against scipy, CLI tables."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import tiny_run
from torch import nn

from advmem.analysis.measures import MeasureSettings, measure_model, measure_runs
from advmem.analysis.measures.base import MeasureContext
from advmem.analysis.measures.flatness import pacbayes_sigma
from advmem.analysis.measures.kendall import kendall_tau
from advmem.analysis.measures.layers import fold_batchnorm
from advmem.analysis.measures.sharpness import robust_sharpness
from advmem.engine.evaluate import EvalAttack
from advmem.models import build_model

ATTACK = EvalAttack(eps=0.05, step_size=0.02, steps=3)

# A 2-layer network with norms that can be read off: W1 = [diag(3,2,1) | 0], W2 = [[1,2,0],[0,0,2]].
W1 = [[3.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 1.0, 0]]
B1 = [1.0, -1.0, 0.5]
W2 = [[1.0, 2.0, 0], [0, 0, 2.0]]
B2 = [0.5, -2.0]

pytestmark = pytest.mark.usefixtures("one_thread_module")


def two_layer(w1=W1, b1=B1, w2=W2, b2=B2):
    model = build_model("mlp", in_channels=1, num_classes=2, image_size=2, mean=[0.5], std=[0.5], hidden=(3,))
    with torch.no_grad():
        model.net[1].weight.copy_(torch.tensor(w1))
        model.net[1].bias.copy_(torch.tensor(b1))
        model.net[3].weight.copy_(torch.tensor(w2))
        model.net[3].bias.copy_(torch.tensor(b2))
    return model.eval()


def samples(model, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 2, 2, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model fits: positive clean margins
    return x, y


def test_norm_measures_match_hand_computed_values_on_a_two_layer_network():
    model = two_layer()
    init = two_layer(w1=np.zeros((3, 4)), b1=[0.0] * 3, w2=np.ones((2, 3)), b2=[0.0, 0.0])
    x, y = samples(model)
    m = measure_model(model, x, y, ATTACK, init_model=init, families=("norms", "bartlett", "path_norm", "distance"))
    # ||W1||_F^2 = 9+4+1, ||W2||_F^2 = 1+4+4; ||W1||_2 = 3, ||W2||_2 = sqrt(5) (W2 W2^T = diag(5, 4))
    assert m["frobenius_sq_sum"] == pytest.approx(14 + 9)
    assert m["log_prod_spectral_sq"] == pytest.approx(math.log(9) + math.log(5))
    assert m["fro_over_spectral_sum"] == pytest.approx(14 / 9 + 9 / 5)
    assert m["param_count"] == 12 + 3 + 6 + 2
    # Bartlett: row-norm sums 3+2+1 and sqrt(5)+2
    s1, s2 = 3.0, math.sqrt(5)
    r = s1 * s2 * ((6 / s1) ** (2 / 3) + ((math.sqrt(5) + 2) / s2) ** (2 / 3)) ** 1.5
    assert m["log_bartlett_complexity"] == pytest.approx(math.log(r))
    # path norm: W2^2 (W1^2 1 + b1^2) + b2^2 = [1*10 + 4*5, 4*1.25] + [0.25, 4] -> 30.25 + 9
    assert m["path_norm"] == pytest.approx(39.25)
    # distance from init: (14 + 2.25) from layer 1, sum((W2 - 1)^2) = 0+1+1+1+1+1, biases 0.25 + 4
    assert m["dist_from_init"] == pytest.approx(math.sqrt(14 + 2.25 + 5 + 4.25))
    # margins: the 10th percentile of z_y - max_{j != y} z_j, and the normalizations
    with torch.no_grad():
        z = model(x).double().numpy()
    margin = np.quantile(np.abs(z[:, 0] - z[:, 1]), 0.1)
    assert m["clean_margin"] == pytest.approx(margin) and margin > 0
    assert m["frobenius_sq_sum_over_clean_margin"] == pytest.approx(23 / margin ** 2)
    assert m["log_prod_spectral_sq_over_clean_margin"] == pytest.approx(math.log(45) - 2 * math.log(margin))
    assert m["path_norm_over_clean_margin"] == pytest.approx(39.25 / margin ** 2)
    assert m["log_bartlett_complexity_over_clean_margin"] == pytest.approx(math.log(r / margin))
    assert m["dist_from_init_over_clean_margin"] == pytest.approx(m["dist_from_init"] / margin)
    assert m["adv_margin"] < margin  # the attack lowers margins
    if m["adv_margin"] > 0:
        assert m["path_norm_over_adv_margin"] == pytest.approx(39.25 / m["adv_margin"] ** 2)
    else:
        assert math.isnan(m["path_norm_over_adv_margin"])


def test_margin_normalization_is_nan_when_the_margin_is_not_positive():
    model = two_layer()
    x, y = samples(model)
    y = 1 - y  # every sample misclassified: the 10th-percentile margin is negative
    m = measure_model(model, x, y, ATTACK, families=("norms",))
    assert m["clean_margin"] < 0 and math.isnan(m["frobenius_sq_sum_over_clean_margin"])
    y[::2] = 1 - y[::2]  # half right: over the correct ones only, the margin is positive again
    m = measure_model(model, x, y, ATTACK, families=("norms",), settings=MeasureSettings(margin_over="correct"))
    assert m["clean_margin"] > 0 and m["frobenius_sq_sum_over_clean_margin"] == pytest.approx(23 / m["clean_margin"] ** 2)


def test_adversarial_margin_over_the_correct_samples_stays_positive():
    """The margin-normalized adversarial measures: NaN with the 10th percentile over all samples when
    more than 10% of the adversarial examples are misclassified; with margin_over="correct" the
    percentile of the positive adversarial margins, so the variants are numbers."""
    from advmem.engine.evaluate import margins

    model = two_layer()
    x, y = samples(model, n=80)
    strong = EvalAttack(eps=0.5, step_size=0.2, steps=5)
    m_all = measure_model(model, x, y, strong, families=("norms",))
    assert m_all["adv_margin"] <= 0 and math.isnan(m_all["frobenius_sq_sum_over_adv_margin"])
    settings = MeasureSettings(margin_over="correct")
    ctx = MeasureContext(model=model, init_model=None, x=x, y=y, attack=strong, settings=settings)
    adv = margins(ctx.logits(ctx.x_adv).double(), y)
    assert 0 < int((adv > 0).sum()) < 0.9 * len(y)  # some adversarial samples right, most wrong
    m = measure_model(model, x, y, strong, families=("norms",), settings=settings)
    assert m["adv_margin"] == pytest.approx(float(torch.quantile(adv[adv > 0], 0.1)))
    assert m["frobenius_sq_sum_over_adv_margin"] == pytest.approx(23 / m["adv_margin"] ** 2)


def test_batchnorm_is_folded_into_the_conv_before_it():
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
        net[1].weight.copy_(torch.tensor([2.0, 0.5]))
        net[1].running_var.copy_(torch.tensor([4.0, 0.25]) - net[1].eps)  # sqrt(var + eps) = 2, 0.5
        net[4].weight.fill_(1.0)
    folded = fold_batchnorm(net.eval())
    assert folded.folded == [("0", "1")] and folded.kept_bn == []
    # folded conv weights 1 * 2/2 = 1 and -2 * 0.5/0.5 = -2: unchanged norms, here by construction
    assert torch.allclose(folded.layers[0].matrix, torch.tensor([[1.0], [-2.0]], dtype=torch.float64))
    x = torch.rand(3, 1, 2, 2)
    assert torch.allclose(folded.net(x), net(x), atol=1e-6)


def test_preactivation_batchnorm_is_kept_as_a_diagonal_layer():
    model = build_model("preact_resnet18", in_channels=1, num_classes=3, image_size=8, mean=[0.5], std=[0.5], width=2)
    model.eval()
    folded = fold_batchnorm(model)
    # bn2 of each of the 8 blocks follows conv1 directly; each block's bn1 and the final BN read a sum
    assert len(folded.folded) == 8 and len(folded.kept_bn) == 9
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded.net(model.normalize(x)), model(x), atol=1e-5)
    kept = [layer for layer in folded.layers if layer.kind == "batchnorm"]
    assert all(torch.equal(layer.matrix, torch.diag(torch.diagonal(layer.matrix))) for layer in kept)
    m = measure_model(model, x, torch.tensor([0, 1]), ATTACK, families=("norms", "path_norm", "bartlett"))
    assert m["folded_bn"] == 8 and m["kept_bn"].split(";")[-1] == "bn"
    assert all(math.isfinite(m[k]) and m[k] > 0 for k in ("path_norm", "frobenius_sq_sum", "fro_over_spectral_sum"))


def test_input_gradient_norm_of_a_linear_model():
    model = build_model("mlp", in_channels=1, num_classes=3, image_size=2, mean=[0.5], std=[0.25], hidden=())
    x, y = samples(model, n=10)
    m = measure_model(model, x, y, ATTACK, families=("input_grad",))
    w = model.net[1].weight.detach().double()
    with torch.no_grad():
        p = torch.softmax(model(x).double(), 1)
    # d CE / dx = W^T (softmax - onehot) / std for logits = W (x - mean) / std + b
    grad = (p - torch.nn.functional.one_hot(y, 3).double()) @ w / 0.25
    assert m["input_grad_clean"] == pytest.approx(float(grad.norm(dim=1).mean()), rel=1e-5)
    assert m["input_grad_adv"] > 0


def test_flatness_and_sharpness_behave():
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=1, num_classes=2, image_size=2, mean=[0.5], std=[0.5], hidden=(8,)).eval()
    x, y = samples(model, n=64)
    ctx = MeasureContext(model=model, init_model=None, x=x, y=y, attack=ATTACK, settings=MeasureSettings(flatness_depth=6))
    sigma, capped = pacbayes_sigma(ctx, robust=False)
    assert 0 < sigma < 2 and not capped
    assert pacbayes_sigma(ctx, robust=False) == (sigma, capped)  # seeded
    chance = MeasureContext(model=model, init_model=None, x=x, y=1 - y, attack=ATTACK,
                            settings=MeasureSettings(flatness_depth=4))
    assert pacbayes_sigma(chance, robust=False)[1]  # 0% accuracy cannot drop by 10%: capped
    before = [p.clone() for p in model.parameters()]
    small = robust_sharpness(MeasureContext(model=model, init_model=None, x=x, y=y, attack=ATTACK,
                                            settings=MeasureSettings(sharpness_radius=1e-3)))[0]
    large = robust_sharpness(MeasureContext(model=model, init_model=None, x=x, y=y, attack=ATTACK,
                                            settings=MeasureSettings(sharpness_radius=1e-1)))[0]
    assert 0 < small < large
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("seed", range(6))
def test_kendall_tau_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 40))
    x = rng.integers(0, 4, n).astype(float)  # many ties
    y = rng.integers(0, 5, n).astype(float) if seed % 2 else rng.normal(size=n)
    tau, used = kendall_tau(x, y)
    assert used == n
    assert tau == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)


def test_kendall_tau_edge_cases():
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3])[0])  # constant input, as scipy
    assert math.isnan(scipy.stats.kendalltau([1, 1, 1], [1, 2, 3]).statistic)
    tau, used = kendall_tau([1, float("nan"), 3, 2], [1, 5, 2, 3])  # NaN runs left out
    assert used == 3 and tau == pytest.approx(scipy.stats.kendalltau([1, 3, 2], [1, 2, 3]).statistic)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("measure_runs")
    return [tiny_run(root, "a", "pgd_at"), tiny_run(root, "b", "trades"), tiny_run(root, "c", "standard", 1)]


def test_measure_runs_table_rows_gaps_and_tau(runs, tmp_path):
    settings = MeasureSettings(flatness_depth=3, flatness_draws=1, sharpness_steps=2)
    rows = measure_runs(runs, tmp_path, n_samples=24, settings=settings)
    assert [r["run"] for r in rows] == ["a", "b", "c"]
    for row in rows:
        assert row["gap_source"] == "summary.json" and row["n_samples"] == 24
        assert row["robust_gap"] == pytest.approx(row["train_rob_acc"] - row["test_rob_acc"])
        assert row["natural_gap"] == pytest.approx(row["train_nat_acc"] - row["test_nat_acc"])
        assert row["dist_from_init"] > 0  # init.safetensors was found
    with open(tmp_path / "measures.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 3 and float(table[0]["path_norm"]) == pytest.approx(rows[0]["path_norm"])
    with open(tmp_path / "measures_kendall.csv") as fh:
        taus = {r["measure"]: r for r in csv.DictReader(fh)}
    expected = scipy.stats.kendalltau([r["frobenius_sq_sum"] for r in rows], [r["robust_gap"] for r in rows]).statistic
    got = float(taus["frobenius_sq_sum"]["tau_robust_gap"])
    assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected)
    md = (tmp_path / "measures.md").read_text()
    assert "| frobenius_sq_sum |" in md and "robust gap" in md


def test_cli_writes_tables(runs, tmp_path, capsys):
    from advmem.cli import main

    out = tmp_path / "m"
    code = main(["analyze", "measures", *map(str, runs[:2]), "--out", str(out), "--n-samples", "16",
                 "--families", "norms,path_norm,distance,input_grad", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    for name in ("measures.csv", "measures_kendall.csv", "measures.md"):
        assert (out / name).stat().st_size > 0
    assert main(["analyze", "measures", str(runs[0]), "--families", "norms,astrology", "--out", str(tmp_path / "x")]) == 2
    assert "unknown measure families" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
