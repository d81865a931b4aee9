"""Divergence: a non-finite loss or gradient is caught at the step where it happens."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch
from safetensors.torch import load_file

from advmem.cli import main
from advmem.engine.checkpoint import load_resume_state
from advmem.engine.trainer import train
from advmem.errors import RunFailure
from advmem.methods.base import AdvContext, Method, accuracy_log
from advmem.methods.registry import METHODS, register_method
from advmem.recipe import MethodConfig, recipe_from_dict


class NaNInjectConfig(MethodConfig):
    """Standard training that poisons one step: its loss, or only its gradient."""

    name: Literal["nan_inject"] = "nan_inject"
    epoch: int = 2
    step: int = 3
    quantity: Literal["loss", "gradient"] = "loss"


class _NaNGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), NaN backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class NaNInject(Method):
    Config = NaNInjectConfig

    def on_epoch_start(self, epoch):
        self.step = 0

    def attack(self, model, batch, epoch):
        return AdvContext(x_adv=None)

    def outer_loss(self, model, batch, ctx, epoch):
        self.step += 1
        logits = model(batch.x)
        hit = (epoch, self.step) == (self.cfg.epoch, self.cfg.step)
        if hit and self.cfg.quantity == "gradient":
            logits = _NaNGradient.apply(logits)
        loss = self.ce(logits, batch.y)
        if hit and self.cfg.quantity == "loss":
            loss = loss * float("nan")
        return loss, {"acc": accuracy_log(logits, batch.y)}


@pytest.fixture(autouse=True)
def registered():
    register_method("nan_inject")(NaNInject)
    yield
    METHODS.pop("nan_inject", None)


def recipe(tmp_path, **method):
    return recipe_from_dict({
        "name": "div", "seed": 0, "device": "cpu", "output_root": str(tmp_path),
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 80, "n_test": 32, "image_size": 4}, "val_size": 16},
        "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
        "method": {"name": "nan_inject", **method},
        "optim": {"epochs": 3, "batch_size": 16, "lr": 0.05},
        "eval": {"train_subset": 16, "batch_size": 64, "attack": {"steps": 1}},
        "attack": {"steps": 1},
    })


@pytest.mark.parametrize("quantity", ["loss", "gradient"])
def test_nonfinite_stops_at_the_step_and_keeps_last_good_state(tmp_path, quantity):
    r = recipe(tmp_path, epoch=2, step=3, quantity=quantity)
    with pytest.raises(RunFailure) as info:
        train(r, quiet=True)
    message = str(info.value)
    assert f"epoch 2 step 3: non-finite {quantity}" in message and "\n" not in message
    run = tmp_path / "div"
    failure = json.loads((run / "failure.json").read_text())
    assert (failure["epoch"], failure["step"], failure["quantity"], failure["last_good_epoch"]) == (2, 3, quantity, 1)
    # the last good state is epoch 1 and finite: checkpoint, resume state and metrics
    assert json.loads((run / "checkpoints" / "last.json").read_text())["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in load_file(str(run / "checkpoints" / "last.safetensors")).values())
    assert load_resume_state(run / "resume.pt")["epoch"] == 1
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (run / "summary.json").exists() and not (run / ".lock").exists()


def test_cli_exit_code_1_and_resume_with_skip_batch(tmp_path, capsys):
    r = recipe(tmp_path, epoch=1, step=2)
    path = tmp_path / "div.yaml"
    path.write_text(r.to_yaml())
    assert main(["train", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("advmem: failed: epoch 1 step 2: non-finite loss") and err.count("\n") == 1
    assert "Traceback" not in err
    run = tmp_path / "div"
    assert json.loads((run / "failure.json").read_text())["last_good_epoch"] == 0
    # changing only the reliability policy is allowed on resume; everything else is refused
    assert main(["train", "--resume", str(run), "--set", "optim.lr=0.01", "--quiet"]) == 2
    assert main(["train", "--resume", str(run), "--set", "reliability.on_nonfinite=skip_batch", "--quiet"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["skipped_batches"] for row in rows] == [1, 0, 0]


def test_skip_batch_skips_exactly_the_bad_step(tmp_path):
    """skip_batch: the poisoned step is skipped and counted, and training goes on with finite weights."""
    r = recipe(tmp_path, epoch=2, step=3, quantity="gradient")
    r = r.model_copy(update={"reliability": r.reliability.model_copy(update={"on_nonfinite": "skip_batch"})})
    run, summary = train(r, quiet=True)
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [row["skipped_batches"] for row in rows] == [0, 1, 0]
    assert all(torch.isfinite(t).all() for t in load_file(str(run.path / "checkpoints" / "last.safetensors")).values())
    assert summary["last"]["epoch"] == 3
