"""Gradient-instability probe: zero at alpha = 0, growth with alpha, slope 1 on a linear model, CLI files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from advmem.analysis.grad_stability import filter_normalized_direction, gradient_change, probe_runs
from advmem.data import Batch
from advmem.methods import build_method
from advmem.models import build_model
from advmem.recipe import AttackConfig, recipe_from_dict

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared, loaded CPU two OpenMP
    threads spin against each other (measured 10-50x slower); restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy(hidden=(16,), model="mlp", method="pgd_at", n=32, seed=0, **kw):
    torch.manual_seed(seed)
    net = build_model(model, in_channels=1, num_classes=4, image_size=8, mean=[0.5], std=[0.25],
                      **({"hidden": hidden} if model == "mlp" else kw))
    cfg = recipe_from_dict({"method": {"name": method}}).method
    attack = AttackConfig(eps="0.1", step_size="0.03", steps=3)
    m = build_method(cfg, attack, num_train=n, num_classes=4, device="cpu")
    g = torch.Generator().manual_seed(seed + 1)
    batch = Batch(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g), torch.arange(n))
    return net, m, batch


def test_direction_is_filter_normalized_and_skips_1d_params():
    net, _, _ = toy(model="small_cnn", width=4, hidden=8)
    params = list(net.parameters())
    dirs = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for p, d in zip(params, dirs):
        if p.dim() <= 1:
            assert torch.count_nonzero(d) == 0
        else:
            assert torch.allclose(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5)
            assert not torch.allclose(d, p)


def test_zero_at_alpha_zero_grows_with_alpha_and_restores_model():
    net, method, batch = toy(model="small_cnn", width=2, hidden=8, n=16)  # BatchNorm: running stats must not drift
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = gradient_change(net, method, batch, alphas=[0.0, 1e-3, 1e-2, 1e-1], directions=2, seed=0)
    for key in ("regenerated", "fixed"):
        mean = res[key]["mean"]
        assert mean[0] == 0.0
        assert all(v > 0 for v in mean[1:])
        assert mean[3] > mean[2] > mean[1]
    assert res["grad_norm"] > 0
    assert not net.training
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fixed_examples_on_linear_model_change_proportionally_to_alpha():
    net, method, batch = toy(hidden=())  # a linear model: logits = W x + b
    alphas = list(np.logspace(-4, -2, 5))
    res = gradient_change(net, method, batch, alphas=alphas, directions=3, seed=0)
    slope = np.polyfit(np.log(alphas), np.log(res["fixed"]["mean"]), 1)[0]
    assert abs(slope - 1.0) < 0.05, slope
    # and per direction, not only on average
    for row in res["fixed"]["per_direction"]:
        assert abs(np.polyfit(np.log(alphas), np.log(row), 1)[0] - 1.0) < 0.05


def test_standard_training_curves_coincide():
    net, method, batch = toy(method="standard")
    res = gradient_change(net, method, batch, alphas=[1e-3, 1e-1], directions=2, seed=0)
    assert res["regenerated"]["per_direction"] == res["fixed"]["per_direction"]


def tiny_run(root: Path, method: str, name: str) -> Path:
    recipe = recipe_from_dict({
        "name": name, "device": "cpu",
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 48, "n_test": 32}},
        "model": {"name": "mlp", "kwargs": {"hidden": [8]}}, "method": {"name": method},
        "attack": {"eps": "0.1", "step_size": "0.05", "steps": 2},
        "optim": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "eval": {"train_subset": 16, "attack": {"steps": 2}},
    })
    from advmem.training import train

    run, _ = train(recipe, run_root=root, quiet=True)
    return run.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gs_runs")
    return [tiny_run(root, "pgd_at", "pgd"), tiny_run(root, "trades", "trades")]


def test_probe_runs_api_and_seed_reproducibility(runs, tmp_path):
    a = probe_runs(runs[:1], tmp_path / "a", alphas=[1e-3, 1e-2], directions=2, batch_size=16)
    b = probe_runs(runs[:1], tmp_path / "b", alphas=[1e-3, 1e-2], directions=2, batch_size=16)
    assert a["runs"][0]["regenerated"] == b["runs"][0]["regenerated"]
    assert a["runs"][0]["settings"]["batch_size"] == 16 and a["runs"][0]["method"] == "pgd_at"


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "advmem", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_writes_json_and_plot_for_several_runs(runs, tmp_path):
    out = tmp_path / "gs"
    proc = run_cli("analyze", "grad-stability", *runs, "--out", out, "--alphas", "1e-3,1e-2", "--directions", "2",
                   "--batch-size", "16", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "grad_stability.json").read_text())
    assert [r["run"] for r in report["runs"]] == ["pgd", "trades"]
    for r in report["runs"]:
        assert r["alphas"] == [1e-3, 1e-2]
        assert len(r["regenerated"]["mean"]) == 2 and len(r["fixed"]["std"]) == 2
        assert len(r["regenerated"]["per_direction"]) == 2
    assert (out / "grad_stability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_line_and_write_nothing(runs, tmp_path, capsys):
    from advmem.cli import main

    assert main(["analyze", "grad-stability", *map(str, runs)]) == 2  # several runs need --out
    assert "--out" in capsys.readouterr().err
    assert main(["analyze", "grad-stability", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "not an advmem run directory" in capsys.readouterr().err
    assert main(["analyze", "grad-stability", str(runs[0]), "--alphas", "1e-3,abc", "--out", str(tmp_path / "x")]) == 2
    assert main(["analyze", "grad-stability", str(runs[0]), "--checkpoint", "epoch-7", "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint of epoch 7" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
