"""Same-weights protocol: slope 1 for a smooth loss, a plateau when the inner maximizer jumps,
identical random start at theta and theta + alpha d, CLI files for init/last checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from advmem.methods.loss_gradient import LossGradient
from advmem.analysis.same_weights import expand_checkpoints, loglog_slope, same_weights_change
from advmem.data import Batch
from advmem.methods import build_method
from advmem.models import build_model
from advmem.recipe import AttackConfig, recipe_from_dict

SRC = Path(__file__).resolve().parents[1] / "src"
ALPHAS = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]

pytestmark = pytest.mark.usefixtures("one_thread_module")


def methods(attack, names=("pgd_at", "trades"), n=32):
    return {name: build_method(recipe_from_dict({"method": {"name": name}}).method, attack, num_train=n, num_classes=4,
                               device="cpu") for name in names}


def batch_of(n=32, size=8, seed=1, low=0.0, high=1.0):
    g = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(n, 1, size, size, generator=g)
    return Batch(x, torch.randint(0, 4, (n,), generator=g), torch.arange(n))


def mlp(hidden=(16,), size=8, seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", in_channels=1, num_classes=4, image_size=size, mean=[0.5], std=[0.25], hidden=hidden)


def test_loglog_slope_uses_the_smallest_alphas():
    alphas = [1e-1, 1e-2, 1e-3, 1e-4]
    assert loglog_slope(alphas, [5.0, 5.0, 1e-3, 1e-4], fit_points=2) == pytest.approx(1.0)
    assert loglog_slope(alphas, [1e-1, 1e-2, 0.3, 0.3], fit_points=2) == pytest.approx(0.0, abs=1e-12)
    assert loglog_slope([0.0, 1e-3, 1e-2], [0.0, 1e-3, 1e-2], fit_points=3) == pytest.approx(1.0)  # alpha 0 skipped
    assert loglog_slope(alphas, [1.0, 1.0, 0.0, 1.0], fit_points=2) is None


def test_smooth_losses_have_slope_one_and_model_is_untouched():
    """No inner max (standard) and eps = 0 (PGD-AT and TRADES reduce to smooth losses on x)."""
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = same_weights_change(net, methods(AttackConfig(eps="0", step_size="0.01", steps=3),
                                           names=("standard", "pgd_at", "trades")),
                              batch_of(), alphas=ALPHAS, directions=5, seed=0)
    assert res["dtype"] == "float64"
    for name, loss in res["losses"].items():
        for key in ("regenerated", "fixed"):
            curve = loss[key]
            assert abs(curve["slope"] - 1.0) < 0.05, (name, key, curve["slope"])
            assert all(abs(s - 1.0) < 0.05 for s in curve["slope_per_direction"]["values"]), (name, key)
            assert curve["reading"].startswith("smooth")
            rel = np.asarray(curve["relative"]["mean"])
            assert np.allclose(np.asarray(curve["absolute"]["mean"]), rel * loss["grad_norm"])
        assert loss["regenerated"]["jump_fraction"] == [0.0] * len(ALPHAS)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)


def jumping_toy():
    """A linear model that ignores pixels 0..3 at theta: the input gradient there is exactly 0, so
    sign-PGD leaves them at the random start; any weight perturbation makes it nonzero and PGD
    pushes them by ~eps -- x_adv jumps by O(eps) however small alpha is."""
    net = mlp(hidden=(), size=4)
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][0]
    with torch.no_grad():
        linear.weight[:, :4] = 0
    return net, batch_of(size=4, low=0.25, high=0.75)


def test_jumping_inner_max_gives_plateau_while_held_fixed_control_is_smooth():
    net, batch = jumping_toy()
    res = same_weights_change(net, methods(AttackConfig(eps="0.2", step_size="0.1", steps=3)), batch, alphas=ALPHAS,
                              directions=5, seed=0)
    for name, loss in res["losses"].items():
        regen, fixed = loss["regenerated"], loss["fixed"]
        assert regen["slope"] < 0.5, (name, regen["slope"])
        assert regen["reading"].startswith("plateau")
        assert abs(fixed["slope"] - 1.0) < 0.05, (name, fixed["slope"])
        assert regen["jump_fraction"][-1] == 1.0
        # at the smallest alpha the re-solved change is orders of magnitude above the control
        assert regen["absolute"]["mean"][-1] > 1e3 * fixed["absolute"]["mean"][-1]


def test_same_toy_without_the_zero_pixels_is_smooth():
    """The control of the control: the plateau comes from the jumping maximizer, not from the method."""
    net = mlp(hidden=(), size=4)
    res = same_weights_change(net, methods(AttackConfig(eps="0.2", step_size="0.1", steps=3)),
                              batch_of(size=4, low=0.25, high=0.75), alphas=ALPHAS, directions=5, seed=0)
    for name, loss in res["losses"].items():
        assert abs(loss["regenerated"]["slope"] - 1.0) < 0.05, (name, loss["regenerated"]["slope"])


def test_random_start_is_the_same_at_theta_and_perturbed_points():
    net = mlp()
    batch = batch_of()
    ms = methods(AttackConfig(eps="0.1", step_size="0.03", steps=3))
    # the start is really random (uniform for PGD-AT, Gaussian for TRADES): another seed, another x_adv
    for method in ms.values():
        x = [LossGradient(net, method, batch, epoch=1, seed=s).attack().x_adv for s in (0, 0, 1)]
        assert torch.equal(x[0], x[1]) and not torch.equal(x[0], x[2])
    res = same_weights_change(net, ms, batch, alphas=[0.0, 1e-4], directions=5, seed=0)
    torch.manual_seed(12345)  # the global RNG state does not leak into the result
    again = same_weights_change(net, ms, batch, alphas=[0.0, 1e-4], directions=5, seed=0)
    for name, loss in res["losses"].items():
        for key in ("regenerated", "fixed"):
            assert [row[0] for row in loss[key]["absolute"]["per_direction"]] == [0.0] * 5, (name, key)
            assert loss[key]["absolute"]["per_direction"] == again["losses"][name][key]["absolute"]["per_direction"]
        assert all(v > 0 for v in loss["regenerated"]["absolute"]["mean"][1:])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from advmem.training import train

    recipe = recipe_from_dict({
        "name": "pgd", "device": "cpu",
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 32, "n_test": 16}},
        "model": {"name": "mlp", "kwargs": {"hidden": [8]}}, "method": {"name": "pgd_at"},
        "attack": {"eps": "0.1", "step_size": "0.05", "steps": 2},
        "optim": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "eval": {"train_subset": 16, "attack": {"steps": 2}},
    })
    run, _ = train(recipe, run_root=tmp_path_factory.mktemp("sw_runs"), quiet=True)
    return run.path


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "advmem", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_all_checkpoints_writes_json_and_plot(run_dir, tmp_path):
    assert expand_checkpoints(run_dir, "all") == ["init", "last"]  # best is the same epoch as last
    out = tmp_path / "sw"
    proc = run_cli("analyze", "grad-same-weights", run_dir, "--checkpoint", "all", "--out", out,
                   "--alphas", "1e-2,1e-4,1e-6", "--directions", "2", "--batch-size", "8", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "slope (re-solved" in proc.stdout
    report = json.loads((out / "grad_same_weights.json").read_text())
    assert [(e["checkpoint"], e["checkpoint_epoch"]) for e in report["entries"]] == [("init", 0), ("last", 1)]
    for entry in report["entries"]:
        assert entry["dtype"] == "float64" and entry["settings"]["batch_size"] == 8
        assert set(entry["losses"]) == {"pgd_at", "trades"}
        for loss in entry["losses"].values():
            for key in ("regenerated", "fixed"):
                assert len(loss[key]["absolute"]["per_direction"]) == 2
                assert len(loss[key]["relative"]["std"]) == 3
                assert loss[key]["slope"] is None or np.isfinite(loss[key]["slope"])
    assert (out / "grad_same_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_checkpoint_is_one_line_and_writes_nothing(run_dir, tmp_path, capsys):
    from advmem.cli import main

    out = tmp_path / "x"
    assert main(["analyze", "grad-same-weights", str(run_dir), "--checkpoint", "init,epoch-7", "--out", str(out)]) == 2
    assert "no checkpoint of epoch 7" in capsys.readouterr().err
    assert main(["analyze", "grad-same-weights", str(tmp_path / "nope"), "--checkpoint", "all", "--out", str(out)]) == 2
    assert "not an advmem run directory" in capsys.readouterr().err
    assert not out.exists()
