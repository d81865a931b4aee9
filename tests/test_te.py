"""Temporal ensembling: loss and attack objective against hand computation, the ramp, the buffer
(rows touched, bias correction), validation, export, and bitwise resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import CrashAt, Interrupt
from safetensors.torch import load_file
from torch import nn

from advmem.data.dataset import Batch
from advmem.training import train
from advmem.errors import UserError
from advmem.methods import build_method
from advmem.methods.te import te_ramp
from advmem.recipe import AttackConfig, recipe_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


# Three samples' logits over C = 3 classes; the model maps one-hot inputs to these rows.
TABLE = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [-0.5, 0.2, 1.5]]


class Lookup(nn.Module):
    """logits = x.flatten(1) @ TABLE: a one-hot input e_k gives row k of TABLE."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.tensor(TABLE))

    def forward(self, x):
        return x.flatten(1) @ self.table


def onehots(rows):
    return torch.eye(3)[rows].view(len(rows), 1, 1, 3)


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def te_method(base="pgd_at", **kw):
    cfg = recipe_from_dict({"method": {"name": "te", "base": base, "start_epoch": 90, "end_epoch": 150, **kw},
                            "optim": {"epochs": 200}}).method
    return build_method(cfg, AttackConfig(eps="0.1", step_size="0.05", steps=1), num_train=5, num_classes=3,
                        device="cpu")


@pytest.mark.parametrize("epoch,expected", [(89, 0.0), (90, 0.0067), (100, 0.031), (120, 0.287), (150, 1.0),
                                            (151, 1.0)])
def test_ramp_values(epoch, expected):
    assert te_ramp(epoch, 90, 150) == pytest.approx(expected, abs=5e-4)
    assert te_method().weight_at(epoch) == pytest.approx(300 * te_ramp(epoch, 90, 150))


def hand_case(units):
    """Batch = training samples 4 and 1, natural inputs rows 0 and 1, adversarial rows 2 and 0,
    labels 1 and 2, buffer rows given, momentum 0.9, epoch 120 (weight 300 * exp(-1.25))."""
    m, w = 0.9, 300 * math.exp(-1.25)
    p_old = {4: [0.2, 0.5, 0.1], 1: [0.0, 0.0, 0.0]}
    nat, adv, y = [TABLE[0], TABLE[1]], [TABLE[2], TABLE[0]], [1, 2]
    targets = []
    for i, k in enumerate((4, 1)):
        p = [m * a + (1 - m) * b for a, b in zip(p_old[k], softmax(nat[i]))]
        targets.append([v / sum(p) for v in p])
    per_sample_sq = [sum((a - b) ** 2 for a, b in zip(softmax(adv[i]), targets[i])) for i in range(2)]
    scale = 1 / 3 if units == "code" else 1.0
    ce = [-math.log(softmax(adv[i])[y[i]]) for i in range(2)]
    loss = sum(ce) / 2 + w * scale * sum(per_sample_sq) / 2
    objective = [ce[i] + w * scale * per_sample_sq[i] for i in range(2)]
    return p_old, targets, loss, objective, w


@pytest.mark.parametrize("units", ["code", "per_sample"])
def test_pgd_at_te_loss_and_objective_equal_hand_computation(units):
    p_old, targets, loss, objective, w = hand_case(units)
    method = te_method(weight_units=units)
    method.buffer[4] = torch.tensor(p_old[4])
    model = Lookup()
    batch = Batch(onehots([0, 1]), torch.tensor([1, 2]), torch.tensor([4, 1]))
    target = method.update(batch.index, method.natural_logits(model, batch.x))
    assert torch.allclose(target, torch.tensor(targets), atol=1e-6)
    obj = method.attack_objective(batch, target, method.weight_at(120), None)
    assert method.weight_at(120) == pytest.approx(w)
    assert torch.allclose(obj(model(onehots([2, 0]))), torch.tensor(objective), atol=1e-5, rtol=1e-6)
    from advmem.methods.base import AdvContext

    ctx = AdvContext(x_adv=onehots([2, 0]), extras={"te_target": target, "te_weight": w})
    value, logs = method.outer_loss(model, batch, ctx, 120)
    assert value.item() == pytest.approx(loss, abs=1e-6, rel=1e-6)
    # the authors' batch loss is the mean of the per-sample attack objective
    assert obj(model(onehots([2, 0]))).mean().item() == pytest.approx(loss, abs=1e-6, rel=1e-6)


def test_trades_te_loss_and_objective_equal_hand_computation():
    """TRADES+TE: attack beta*KL(nat||adv) + (w/C) sum_c sq on f(x'); outer CE + beta*KL + (w/C) sum sq on f(x)."""
    beta, m, w = 6.0, 0.9, 300 * math.exp(-1.25)
    method = te_method(base="trades", beta=beta)
    model = Lookup()
    batch = Batch(onehots([0, 1]), torch.tensor([1, 2]), torch.tensor([0, 3]))
    clean = method.base.clean_logits(model, batch.x)
    target = method.update(batch.index, clean)
    nat, adv, y = [TABLE[0], TABLE[1]], [TABLE[2], TABLE[0]], [1, 2]
    tgt = [softmax(nat[i]) for i in range(2)]  # first visit: (1-m) s / (1-m) = s
    assert torch.allclose(target, torch.tensor(tgt), atol=1e-6)
    kl = [sum(a * math.log(a / b) for a, b in zip(softmax(nat[i]), softmax(adv[i]))) for i in range(2)]
    sq_adv = [sum((a - b) ** 2 for a, b in zip(softmax(adv[i]), tgt[i])) for i in range(2)]
    sq_nat = [sum((a - b) ** 2 for a, b in zip(softmax(nat[i]), tgt[i])) for i in range(2)]  # zero here
    objective = [beta * kl[i] + w / 3 * sq_adv[i] for i in range(2)]
    obj = method.attack_objective(batch, target, w, clean)
    assert torch.allclose(obj(model(onehots([2, 0]))), torch.tensor(objective), atol=1e-5, rtol=1e-6)
    from advmem.methods.base import AdvContext

    ce = [-math.log(softmax(nat[i])[y[i]]) for i in range(2)]
    for outer, sq in (("auto", sq_nat), ("adversarial", sq_adv)):
        method.cfg.outer_target = outer
        ctx = AdvContext(x_adv=onehots([2, 0]), clean_logits=clean, extras={"te_target": target, "te_weight": w})
        value, _ = method.outer_loss(model, batch, ctx, 120)
        expected = sum(ce) / 2 + beta * sum(kl) / 2 + w / 3 * sum(sq) / 2
        assert value.item() == pytest.approx(expected, abs=1e-6, rel=1e-6)


def test_mart_te_adds_the_te_term_to_the_mart_attack_and_loss():
    """MART+TE, from TE's equations (paper.md 8.2) on MART: p_i <- m p_i + (1-m) softmax(f(x_i)),
    target p_i / sum_c p_i,c; the attack maximizes CE(f(x'_i), y_i) + (w/C) sum_c (softmax(f(x'_i)) - target_i)^2
    (MART's attack is PGD on CE); the loss is MART's + w * mean over B x C of the same squared error
    on the adversarial output (where MART fits the labels: outer_target auto)."""
    beta, m, w = 6.0, 0.9, 300 * math.exp(-1.25)
    method = te_method(base="mart", beta=beta)
    assert method.base.cfg.beta == beta and method.cfg.resolved_outer_target == "adversarial"
    model = Lookup()
    batch = Batch(onehots([0, 1]), torch.tensor([1, 2]), torch.tensor([4, 1]))
    method.buffer[4] = torch.tensor([0.2, 0.5, 0.1])
    nat, adv, y = [TABLE[0], TABLE[1]], [TABLE[2], TABLE[0]], [1, 2]
    p_old = [[0.2, 0.5, 0.1], [0.0, 0.0, 0.0]]
    rows = [[m * a + (1 - m) * b for a, b in zip(p_old[i], softmax(nat[i]))] for i in range(2)]
    tgt = [[v / sum(r) for v in r] for r in rows]
    target = method.update(batch.index, method.natural_logits(model, batch.x))
    assert torch.allclose(target, torch.tensor(tgt), atol=1e-6)

    sq = [sum((a - b) ** 2 for a, b in zip(softmax(adv[i]), tgt[i])) for i in range(2)]
    ce = [-math.log(softmax(adv[i])[y[i]]) for i in range(2)]
    obj = method.attack_objective(batch, target, w, None)
    assert torch.allclose(obj(model(onehots([2, 0]))), torch.tensor([ce[i] + w / 3 * sq[i] for i in range(2)]),
                          atol=1e-5, rtol=1e-6)

    from advmem.methods.base import AdvContext
    from advmem.methods.mart import mart_loss

    ctx = AdvContext(x_adv=onehots([2, 0]), extras={"te_target": target, "te_weight": w})
    value, logs = method.outer_loss(model, batch, ctx, 120)
    te_term = w * sum(sq) / (2 * 3)  # w * mean over the B x C entries
    mart = mart_loss(model(batch.x), model(ctx.x_adv), batch.y, beta).item()
    assert logs["te_penalty"].item() == pytest.approx(sum(sq) / 6, abs=1e-7, rel=1e-6)
    assert value.item() - mart == pytest.approx(te_term, abs=1e-5, rel=1e-6)


def test_mart_te_trains(tmp_path):
    recipe = recipe_from_dict({
        "name": "mart-te", "device": "cpu",
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 32, "n_test": 16, "image_size": 6}},
        "model": {"name": "mlp", "kwargs": {"hidden": [12]}},
        "method": {"name": "te", "base": "mart", "start_epoch": 2, "end_epoch": 3},
        "attack": {"eps": "0.1", "step_size": "0.05", "steps": 2},
        "optim": {"epochs": 3, "batch_size": 16, "lr": 0.05},
        "eval": {"train_subset": 8, "attack": {"steps": 1}},
    })
    method = build_method(recipe.method, recipe.attack, num_train=32, num_classes=10, device="cpu")
    assert type(method.base).__name__ == "MART" and method.start == "gaussian" and not method.start_clamp
    train(recipe, run_root=tmp_path, quiet=True)
    run = tmp_path / "mart-te"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(math.isfinite(r["train_loss"]) for r in rows)
    buffer = load_file(str(run / "te_buffer.safetensors"))
    assert buffer["visits"].tolist() == [2] * 32  # epochs 2 and 3
    assert torch.allclose(buffer["buffer"].sum(dim=1), torch.full((32,), 1 - 0.9 ** 2))


def test_only_the_batch_rows_change_and_none_before_start():
    method = te_method()
    model = Lookup()
    batch = Batch(onehots([0, 2]), torch.tensor([0, 1]), torch.tensor([3, 1]))
    method.attack(model, batch, 89)  # before start: no update
    assert method.buffer.abs().sum() == 0 and method.visits.sum() == 0
    before = method.buffer.clone()
    ctx = method.attack(model, batch, 90)
    changed = (method.buffer != before).any(dim=1)
    assert changed.tolist() == [False, True, False, True, False]
    assert method.visits.tolist() == [0, 1, 0, 1, 0]
    assert ctx.extras["te_weight"] == pytest.approx(300 * math.exp(-5))


def test_normalization_is_the_startup_bias_correction():
    method = te_method()
    g = torch.Generator().manual_seed(0)
    seen = [0] * 5
    for step in range(12):
        index = torch.randperm(5, generator=g)[:3]
        method.update(index, torch.randn(3, 3, generator=g))
        for i in index.tolist():
            seen[i] += 1
    t = torch.tensor(seen, dtype=torch.float64)
    corrected = method.buffer.double() / (1 - 0.9 ** t)[:, None]
    visited = t > 0
    assert torch.allclose(method.targets().double()[visited], corrected[visited], atol=1e-6)
    assert method.visits.tolist() == seen
    rows = method.export_rows()
    assert rows["te_visits"] == seen
    assert len(rows["te_p_2"]) == 5


def test_invalid_epochs_are_clear_errors():
    with pytest.raises(UserError, match="start_epoch .* must be before"):
        recipe_from_dict({"method": {"name": "te", "start_epoch": 150, "end_epoch": 90}, "optim": {"epochs": 200}})
    with pytest.raises(UserError, match="end_epoch 150 is after the last epoch 100"):
        recipe_from_dict({"method": {"name": "te"}, "optim": {"epochs": 100}})
    with pytest.raises(UserError, match="end_epoch 150 is after the last epoch 100"):
        recipe_from_dict({"method": {"name": "awp", "base": {"name": "te"}}, "optim": {"epochs": 100}})


@pytest.mark.slow
def test_te_buffer_and_ema_survive_resume_bitwise(tmp_path):
    recipe = recipe_from_dict({
        "name": "te-resume", "device": "cpu", "deterministic": True,
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 48, "n_test": 16, "image_size": 6}},
        "model": {"name": "mlp", "kwargs": {"hidden": [12]}},
        "method": {"name": "te", "start_epoch": 2, "end_epoch": 3},
        "attack": {"eps": "0.1", "step_size": "0.05", "steps": 2},
        "optim": {"epochs": 4, "batch_size": 16, "lr": 0.05, "schedule": {"milestones": [3]},
                  "ema": {"decay": 0.5, "start_epoch": 2}},
        "eval": {"train_subset": 8, "attack": {"steps": 1}},
    })
    train(recipe, run_root=tmp_path / "straight", quiet=True)
    with pytest.raises(Interrupt):
        train(recipe, run_root=tmp_path / "resumed", quiet=True, callbacks=[CrashAt(3)])
    train(recipe, run_root=tmp_path / "resumed", resume=True, quiet=True)
    for name in ("checkpoints/last.safetensors", "checkpoints/ema_last.safetensors", "te_buffer.safetensors"):
        a = load_file(str(tmp_path / "straight" / "te-resume" / name))
        b = load_file(str(tmp_path / "resumed" / "te-resume" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    buffer = load_file(str(tmp_path / "straight" / "te-resume" / "te_buffer.safetensors"))
    assert buffer["visits"].tolist() == [3] * 48  # epochs 2, 3, 4
    assert buffer["buffer"].abs().sum() > 0
