"""Baselines against robust overfitting: MART's loss, AWP's exact weight restoration, EMA weight averaging."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from advmem.data.dataset import Batch
from advmem.training import train
from advmem.errors import UserError
from advmem.methods import build_method
from advmem.methods.awp import perturbed_weights
from advmem.methods.mart import mart_loss
from advmem.recipe import AttackConfig, recipe_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_mart_loss_equals_hand_computation():
    nat = [[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]]
    adv = [[0.4, 1.2, -0.3], [0.0, -0.5, 0.9]]
    y = [0, 2]
    beta = 6.0
    total = 0.0
    for i in range(2):
        pa, pn = softmax(adv[i]), softmax(nat[i])
        ce = -math.log(pa[y[i]])
        ranked = sorted(range(3), key=lambda c: pa[c])
        wrong = ranked[-2] if ranked[-1] == y[i] else ranked[-1]  # most likely wrong class
        boost = -math.log(1.0001 - pa[wrong] + 1e-12)
        kl = sum(n * (math.log(n) - math.log(a + 1e-12)) for n, a in zip(pn, pa))
        total += ce + boost + beta * kl * (1.0000001 - pn[y[i]])
    expected = total / 2
    got = mart_loss(torch.tensor(nat), torch.tensor(adv), torch.tensor(y), beta)
    assert got.item() == pytest.approx(expected, abs=1e-6, rel=1e-6)


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 4))


@pytest.mark.parametrize("base", ["pgd_at", "trades", "mart"])
def test_awp_leaves_weights_exactly_as_the_optimizer_step_would(base):
    """The step starts from the unperturbed w with the gradient taken at w + v: no residue of v."""
    cfg = recipe_from_dict({"method": {"name": "awp", "base": base, "gamma": 0.05, "warmup_epochs": 0}}).method
    method = build_method(cfg, AttackConfig(eps="0.1", step_size="0.05", steps=2), num_train=8, num_classes=4,
                          device="cpu")
    model, reference = tiny_cnn(), tiny_cnn()
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 4, (8,), generator=g), torch.arange(8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    for step in range(2):  # two steps so the momentum buffer is exercised too
        originals = {k: v.clone() for k, v in model.state_dict().items()}
        ctx = method.attack(model, batch, epoch=1)
        method.before_loss(model, batch, ctx, epoch=1)
        # BN running statistics are untouched by the ascent forward; layer weights moved by gamma*||w||
        for k, v in model.state_dict().items():
            if "running" in k or "num_batches" in k:
                assert torch.equal(v, originals[k]), k
        perturbed_ids = {id(q) for q in perturbed_weights(model)}
        assert len(perturbed_ids) == 2  # the conv and the linear weight
        for (name, p) in model.named_parameters():
            moved = (p.detach() - originals[name]).norm()
            if id(p) in perturbed_ids:
                assert moved.item() == pytest.approx(0.05 * originals[name].norm().item(), rel=1e-4)
            else:
                assert moved.item() == 0
        model.train()
        loss, _ = method.outer_loss(model, batch, ctx, epoch=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        method.before_step(model)
        opt.step()
        method.after_step(model)
        # reference: same starting weights and optimizer state, the same gradient, a plain step
        reference.load_state_dict({k: v for k, v in originals.items()})
        reference.train()
        for p_ref, p in zip(reference.parameters(), model.parameters()):
            p_ref.grad = p.grad.clone()
        ref_opt.step()
        for (name, p_ref), p in zip(reference.named_parameters(), model.parameters()):
            assert torch.equal(p_ref, p), name
    # the gradient really was taken at the perturbed weights: it differs from the one at w
    model2 = copy.deepcopy(model)
    ctx = method.attack(model2, batch, epoch=1)
    model2.train()
    plain = torch.autograd.grad(method.outer_loss(model2, batch, ctx, 1)[0], list(model2.parameters())[0])[0]
    method.before_loss(model2, batch, ctx, epoch=1)
    model2.train()
    perturbed = torch.autograd.grad(method.outer_loss(model2, batch, ctx, 1)[0], list(model2.parameters())[0])[0]
    assert not torch.allclose(plain, perturbed)


def test_awp_defaults_and_validation():
    def awp(base, **kw):
        return recipe_from_dict({"method": {"name": "awp", "base": base, **kw},
                                 "optim": {"epochs": 200}}).method

    assert awp("pgd_at").resolved_gamma == 0.01 and awp("pgd_at").resolved_warmup == 0
    assert awp("trades").resolved_gamma == 0.005 and awp("trades").resolved_warmup == 10
    assert awp({"name": "te", "base": "trades"}).resolved_gamma == 0.005
    assert awp("mart", gamma=0.02).resolved_gamma == 0.02
    with pytest.raises(UserError, match="method.base must be one of"):
        awp("standard")
    with pytest.raises(UserError, match="method.base"):
        awp({"name": "awp", "base": "pgd_at"})


def test_ema_update_formula():
    from advmem.engine.ema import WeightEMA
    from advmem.recipe import EMAConfig

    class FakeTrainer:
        model = tiny_cnn()

    ema = WeightEMA(EMAConfig(decay=0.75, start_epoch=2))
    ema.setup(FakeTrainer)
    w0 = FakeTrainer.model[0].weight.detach().clone()
    with torch.no_grad():
        FakeTrainer.model[0].weight.add_(1.0)
    ema.on_step_end(FakeTrainer, epoch=1)  # before start: nothing
    assert torch.equal(ema.model[0].weight, w0)
    ema.on_step_end(FakeTrainer, epoch=2)  # first step: copy
    assert torch.equal(ema.model[0].weight, w0 + 1)
    with torch.no_grad():
        FakeTrainer.model[0].weight.add_(4.0)
        FakeTrainer.model[1].running_mean.fill_(2.0)
    ema.on_step_end(FakeTrainer, epoch=2)
    assert torch.allclose(ema.model[0].weight, 0.75 * (w0 + 1) + 0.25 * (w0 + 5))
    assert torch.allclose(ema.model[1].running_mean, torch.full((3,), 0.25 * 2.0))


@pytest.mark.slow
def test_ema_checkpoints_and_columns_are_written(tmp_path):
    recipe = recipe_from_dict({
        "name": "ema", "device": "cpu",
        "data": {"dataset": "synthetic", "val_size": 16, "synthetic": {"n_train": 64, "n_test": 16, "image_size": 6}},
        "model": {"name": "mlp", "kwargs": {"hidden": [12]}},
        "method": {"name": "pgd_at"},
        "attack": {"eps": "0.1", "step_size": "0.05", "steps": 1},
        "optim": {"epochs": 2, "batch_size": 16, "ema": {"decay": 0.9}},
        "eval": {"train_subset": 8, "attack": {"steps": 1}},
    })
    run, _ = train(recipe, run_root=tmp_path, quiet=True)
    ckpt = run.path / "checkpoints"
    for stem in ("ema_best", "ema_last"):
        assert (ckpt / f"{stem}.safetensors").is_file()
        assert json.loads((ckpt / f"{stem}.json").read_text())["weights"].startswith("ema(")
    rows = run.read_metrics()
    assert all(0 <= row["ema_test_rob_acc"] <= 1 and "ema_val_nat_acc" in row for row in rows)
    from advmem.engine.checkpoint import load_weights

    raw, avg = load_weights(ckpt / "last.safetensors"), load_weights(ckpt / "ema_last.safetensors")
    assert any(not torch.equal(raw[k], avg[k]) for k in raw)


def awp_pgd_at_case(steps: int):
    """AWP (gamma 0.05, no warm-up) around PGD-AT, a tiny conv net and an 8-sample batch."""
    cfg = recipe_from_dict({"method": {"name": "awp", "base": "pgd_at", "gamma": 0.05, "warmup_epochs": 0}}).method
    method = build_method(cfg, AttackConfig(eps="0.1", step_size="0.05", steps=steps), num_train=8, num_classes=4,
                          device="cpu")
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 4, (8,), generator=g), torch.arange(8))
    return method, tiny_cnn(), batch


def test_awp_under_autocast_takes_the_loss_at_the_perturbed_weights():
    """Autocast caches each weight's low-precision copy until its outermost block ends; AWP's
    in-place perturbation must not leave the training loss on the stale copy of w (bf16 is the
    CUDA default; CPU autocast has the same cache)."""
    method, model, batch = awp_pgd_at_case(steps=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # one block, as in Trainer.train_step
        ctx = method.attack(model, batch, epoch=1)
        model.train()
        at_w = method.outer_loss(model, batch, ctx, 1)[0].detach()
        method.before_loss(model, batch, ctx, epoch=1)
        model.train()
        in_block = method.outer_loss(model, batch, ctx, 1)[0].detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a fresh block sees the perturbed weights
        fresh = method.outer_loss(model, batch, ctx, 1)[0].detach()
    assert torch.equal(in_block, fresh)
    assert not torch.equal(in_block, at_w)


def test_awp_fp16_scaled_perturbation_is_the_same_direction_and_survives_overflow(monkeypatch):
    """Under fp16 the weight gradient is taken on the scaled loss (no underflow): v is unchanged
    by the scale, and a layer whose gradient overflows gets no perturbation instead of NaN."""
    from advmem.attacks.pgd import attack_grad_scale

    method, model, batch = awp_pgd_at_case(steps=1)
    ctx = method.attack(model, batch, epoch=1)
    plain = [v for _, v in method.perturbation(model, batch, ctx, 1)]
    with attack_grad_scale(1024.0):
        scaled = [v for _, v in method.perturbation(model, batch, ctx, 1)]
    for a, b in zip(plain, scaled):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: tuple(
        torch.full_like(x, float("inf")) if i == 0 else x for i, x in enumerate(real_grad(*a, **k))))
    with attack_grad_scale(1024.0):
        overflowed = [v for _, v in method.perturbation(model, batch, ctx, 1)]
    assert torch.equal(overflowed[0], torch.zeros_like(overflowed[0]))
    assert torch.allclose(overflowed[1], scaled[1], rtol=1e-5, atol=1e-8)
