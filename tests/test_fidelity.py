"""advmem's training step against the authors' code (dongyp13/memorization-AT), re-derived here.

Each reference below is written from the update equations of ../shared/docs/paper.md sections 8-9
(the authors' `pgd_loss` and `trades_loss` of the random-label script, `PGD_TE` and `TRADES_TE` of
`loss.py`), not copied from their code. One training step of advmem's real `Trainer.train_step`
(recipe defaults: eval-mode attack with folded BatchNorm, channels_last) is compared with the
reference on the same weights, the same injected random start and the same batch: x_adv, loss,
every parameter gradient, and BatchNorm running statistics after the step, to 1e-6.

The inputs are built to expose the three departures found side by side with the authors' code:
a quarter of the pixels are saturated at exactly 0 or 1 (an unclamped start puts them outside
[0,1] for the first gradient), BatchNorm starts from non-trivial running statistics (the eval-mode
attack depends on them, the train-mode forward order moves them), and the model takes raw pixels
(`model.normalize: none`, as the authors' models do).
"""

from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch
import torch.nn.functional as F


from advmem.data.dataset import Batch
from advmem.engine.rundir import RunDir
from advmem.engine.checkpoint import checkpoint_meta
from advmem.engine.trainer import Trainer
from advmem.recipe import recipe_from_dict

pgd_module = importlib.import_module("advmem.attacks.pgd")  # the module; the package exports a function of that name

EPS, ALPHA, STEPS, BETA = 0.1, 0.03, 3, 6.0
TE = {"momentum": 0.9, "start_epoch": 2, "end_epoch": 4, "weight": 300.0, "weight_units": "code"}
EPOCH = 3  # inside the TE ramp: r = exp(-5 (1 - 1/2)^2)
N, C, SIZE, CLASSES = 16, 1, 8, 4
TOL = 1e-6

METHODS = {
    "pgd_at": {"name": "pgd_at"},
    "trades": {"name": "trades", "beta": BETA},
    "pgd_at_te": {"name": "te", "base": "pgd_at", **TE},
    "trades_te": {"name": "te", "base": "trades", "beta": BETA, **TE},
}


# -- the reference: the authors' update, from its equations -----------------------------------------
def sq_error_mean(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The TE penalty in the code's units: the mean over all B x C entries of (p - target)^2."""
    return ((probs - target) ** 2).mean()


def kl_sum(nat_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """sum_i KL(softmax(nat_i) || softmax(adv_i)) (KLDivLoss with sum reduction)."""
    p = F.softmax(nat_logits, dim=1)
    return (p * (torch.log(p) - F.log_softmax(adv_logits, dim=1))).sum()


def reference_step(model, x, y, start, kind: str, te_rows: torch.Tensor | None):
    """(x_adv, loss) of one step of the authors' code; `loss.backward()` is left to the caller.

    x_adv = x + start; PGD-AT clamps it into [0,1] before the loop, TRADES and the TE losses do not.
    Each of STEPS iterations: the gradient of the attack loss at x_adv, x_adv += alpha sign(g),
    projection onto [x - eps, x + eps], clamp into [0,1]. The attack runs in eval mode; the loss
    in train mode."""
    te = kind.endswith("_te")
    trades = kind.startswith("trades")
    model.eval()
    nat_eval = model(x).detach()
    target = w = None
    if te:
        # p_i <- eta p_i + (1 - eta) softmax(f(x_i)) before use, then p_i / sum_c p_i,c
        eta = TE["momentum"]
        te_rows.mul_(eta).add_((1 - eta) * F.softmax(nat_eval, dim=1))
        target = te_rows / te_rows.sum(dim=1, keepdim=True)
        progress = (EPOCH - TE["start_epoch"]) / (TE["end_epoch"] - TE["start_epoch"])
        w = TE["weight"] * math.exp(-5.0 * (1.0 - progress) ** 2)
    x_adv = x + start
    if kind == "pgd_at":
        x_adv = x_adv.clamp(0.0, 1.0)
    for _ in range(STEPS):
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        if trades:
            attack_loss = (BETA / len(x) if te else 1.0) * kl_sum(nat_eval, logits)
        else:
            attack_loss = F.cross_entropy(logits, y)
        if te:
            attack_loss = attack_loss + w * sq_error_mean(F.softmax(logits, dim=1), target)
        grad, = torch.autograd.grad(attack_loss, x_adv)
        x_adv = x_adv.detach() + ALPHA * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0.0, 1.0)
    x_adv = x_adv.detach()
    model.train()
    if trades:
        nat = model(x)  # the natural forward first
        adv = model(x_adv)
        loss = F.cross_entropy(nat, y) + BETA * kl_sum(nat, adv) / len(x)
        if te:
            loss = loss + w * sq_error_mean(F.softmax(nat, dim=1), target)
    else:
        adv = model(x_adv)
        loss = F.cross_entropy(adv, y)
        if te:
            loss = loss + w * sq_error_mean(F.softmax(adv, dim=1), target)
    return x_adv, loss


# -- fixed inputs ---------------------------------------------------------------------------------
def fixed_batch() -> Batch:
    g = torch.Generator().manual_seed(7)
    x = torch.rand(N, C, SIZE, SIZE, generator=g)
    u = torch.rand(N, C, SIZE, SIZE, generator=g)
    x = torch.where(u < 0.125, torch.zeros_like(x), torch.where(u > 0.875, torch.ones_like(x), x))
    y = torch.randint(0, CLASSES, (N,), generator=g)
    return Batch(x=x, y=y, index=torch.arange(N) * 2)  # every other row of the TE buffer


def injected_start() -> torch.Tensor:
    """Uniform in [-eps, eps]: on a saturated pixel half the draws leave [0,1]."""
    g = torch.Generator().manual_seed(11)
    return (2 * torch.rand(N, C, SIZE, SIZE, generator=g) - 1) * EPS


def trainer_for(tmp_path, method: dict) -> Trainer:
    recipe = recipe_from_dict({
        "device": "cpu", "seed": 0,
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 2 * N, "n_test": 8, "num_classes": CLASSES,
                                                      "channels": C, "image_size": SIZE}},
        "model": {"name": "small_cnn", "kwargs": {"width": 4, "hidden": 16}, "normalize": "none"},
        "method": method,
        "attack": {"eps": str(EPS), "step_size": str(ALPHA), "steps": STEPS},
        "optim": {"epochs": 4, "batch_size": N, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                  "schedule": {"name": "constant"}},
        "eval": {"train_subset": 0},
    })
    trainer = Trainer(recipe, RunDir(tmp_path / "run"), quiet=True, log=lambda m: None)
    trainer.setup(resume=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-trivial running statistics: the eval-mode attack depends on them
        for m in trainer.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return trainer


def bn_stats(model) -> list[torch.Tensor]:
    return [t.detach().clone() for name, t in model.named_buffers() if "running" in name]


@pytest.mark.parametrize("kind", list(METHODS))
def test_one_step_matches_the_authors_update(tmp_path, monkeypatch, kind):
    trainer = trainer_for(tmp_path, METHODS[kind])
    batch, start = fixed_batch(), injected_start()
    ref_model = copy.deepcopy(trainer.model)
    te_rows = None
    if kind.endswith("_te"):  # an ensemble that has seen earlier epochs: positive rows, not normalized
        g = torch.Generator().manual_seed(5)
        trainer.method.buffer.copy_(0.1 + torch.rand(trainer.method.buffer.shape, generator=g))
        te_rows = trainer.method.buffer[batch.index].clone()

    monkeypatch.setattr(pgd_module, "random_start", lambda x, *a, **k: start.to(x))
    seen = {}
    attack, outer = trainer.method.attack, trainer.method.outer_loss

    def spy_attack(*a, **k):
        ctx = attack(*a, **k)
        seen["x_adv"] = ctx.x_adv.detach().clone()
        return ctx

    def spy_outer(*a, **k):
        loss, logs = outer(*a, **k)
        seen["loss"] = loss.detach().clone()
        return loss, logs

    monkeypatch.setattr(trainer.method, "attack", spy_attack)
    monkeypatch.setattr(trainer.method, "outer_loss", spy_outer)
    sums = {key: torch.zeros(()) for key in ("loss", "acc", "grad_norm_sq")}
    before = [p.detach().clone() for p in trainer.model.parameters()]
    skipped, _ = trainer.train_step(batch, EPOCH, 0, sums)
    assert not skipped

    x_adv, ref_loss = reference_step(ref_model, batch.x, batch.y, start, kind, te_rows)
    ref_loss.backward()

    assert (x_adv - batch.x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (seen["x_adv"] - x_adv).abs().max().item() <= TOL
    assert abs(seen["loss"].item() - ref_loss.item()) <= TOL * max(1.0, abs(ref_loss.item()))
    for p, q in zip(trainer.model.parameters(), ref_model.parameters()):
        assert p.grad is not None and (p.grad - q.grad).abs().max().item() <= TOL
    for a, b in zip(bn_stats(trainer.model), bn_stats(ref_model)):
        assert (a - b).abs().max().item() <= TOL
    # the optimizer step moved the weights (the gradient compared above is the one it used)
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
    if te_rows is not None:
        assert (trainer.method.buffer[batch.index] - te_rows).abs().max().item() <= TOL


@pytest.mark.parametrize(("kind", "clamp"), [("pgd_at", "false"), ("trades", "true")])
def test_the_other_start_clamp_departs_from_the_authors_update(tmp_path, monkeypatch, kind, clamp):
    """The other setting of `attack.start_clamp` departs from the authors' update on these inputs,
    so the test above can tell the two apart."""
    trainer = trainer_for(tmp_path, METHODS[kind])
    trainer.method.attack_cfg.start_clamp = clamp == "true"
    batch, start = fixed_batch(), injected_start()
    ref_model = copy.deepcopy(trainer.model)
    monkeypatch.setattr(pgd_module, "random_start", lambda x, *a, **k: start.to(x))
    ctx = trainer.method.attack(trainer.step_model, batch, EPOCH)
    x_authors, _ = reference_step(ref_model, batch.x, batch.y, start, kind, None)
    assert (ctx.x_adv - x_authors).abs().max().item() > 100 * TOL


def test_normalize_none_is_the_identity_and_recorded(tmp_path):
    trainer = trainer_for(tmp_path, METHODS["pgd_at"])
    x = fixed_batch().x
    assert torch.equal(trainer.model.normalize(x), x)
    meta = checkpoint_meta(trainer.recipe, trainer.bundle, trainer.model, 0, {})
    assert meta["architecture"]["normalize"] == "none"
    assert meta["architecture"]["mean"] == [0.0] * C and meta["architecture"]["std"] == [1.0] * C
    assert meta["normalization"]["mode"] == "none"
