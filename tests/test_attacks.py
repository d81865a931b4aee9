"""PGD/FGSM: budget, box, loss increase, no weight gradients, mode restored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advmem.attacks import cross_entropy, cw_margin, fgsm, kl_to_clean, pgd
from advmem.models import build_model


def _model(bn=True):
    torch.manual_seed(0)
    name = "small_cnn" if bn else "mlp"
    kwargs = {"width": 4, "hidden": 16} if bn else {"hidden": (32,)}
    return build_model(name, in_channels=1, num_classes=5, image_size=(8, 8), mean=(0.5,), std=(0.25,), **kwargs)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)


@pytest.mark.parametrize("norm,eps,step", [("Linf", 0.1, 0.03), ("L2", 0.5, 0.2)])
@pytest.mark.parametrize("start", ["uniform", "gaussian", "none"])
def test_pgd_stays_in_budget_and_box(batch, norm, eps, step, start):
    x, y = batch
    model = _model()
    x_adv = pgd(model, x, cross_entropy(y), eps=eps, step_size=step, steps=5, norm=norm, start=start)
    delta = (x_adv - x).flatten(1)
    if norm == "Linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert delta.norm(dim=1).max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("norm,eps,step", [("Linf", 0.1, 0.03), ("L2", 1.0, 0.3)])
def test_pgd_raises_loss(batch, norm, eps, step):
    x, y = batch
    model = _model().eval()
    x_adv = pgd(model, x, cross_entropy(y), eps=eps, step_size=step, steps=10, norm=norm, start="none")
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y)
        adv = F.cross_entropy(model(x_adv), y)
    assert adv > clean + 1e-3


def test_pgd_computes_no_weight_gradients_and_restores_mode(batch):
    x, y = batch
    model = _model().train()
    flags = [p.requires_grad for p in model.parameters()]
    bn = model.net[1] if hasattr(model.net, "__getitem__") else None
    running = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    pgd(model, x, cross_entropy(y), eps=0.1, step_size=0.03, steps=3)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training
    # eval-mode attack: BatchNorm running statistics are untouched
    for k, v in model.state_dict().items():
        if k in running:
            assert torch.equal(v, running[k]), k
    model.eval()
    pgd(model, x, cross_entropy(y), eps=0.1, step_size=0.03, steps=1)
    assert not model.training
    del bn


def test_train_bn_mode_updates_running_stats(batch):
    x, y = batch
    model = _model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    pgd(model, x, cross_entropy(y), eps=0.1, step_size=0.03, steps=2, bn_mode="train")
    assert not model.training
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_generator_makes_random_start_reproducible(batch):
    x, y = batch
    model = _model()
    a = pgd(model, x, cross_entropy(y), eps=0.1, step_size=0.03, steps=2, generator=torch.Generator().manual_seed(5))
    b = pgd(model, x, cross_entropy(y), eps=0.1, step_size=0.03, steps=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_fgsm_is_one_signed_step(batch):
    x, y = batch
    model = _model(bn=False).eval()
    x_adv = fgsm(model, x, cross_entropy(y), eps=0.05)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    expected = (x + 0.05 * g.sign()).clamp(0, 1)
    assert torch.allclose(x_adv, expected, atol=1e-7)


def test_objectives_values():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y = torch.tensor([0, 0])
    assert torch.allclose(cw_margin(y)(logits), torch.tensor([0.0 - 2.0, 1.5 - 0.5]))
    assert torch.allclose(cross_entropy(y)(logits), F.cross_entropy(logits, y, reduction="none"))
    kl = kl_to_clean(logits)(logits)
    assert torch.allclose(kl, torch.zeros(2), atol=1e-7)
