"""Divergence: a non-finite loss or gradient is caught at the step where it happens."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch
from safetensors.torch import load_file

from advmem.cli import main
from advmem.engine.checkpoint import load_resume_state
from advmem.training import train
from advmem.errors import RunFailure
from advmem.methods.base import AdvContext, Method, accuracy_log
from advmem.recipe.method import METHODS
from advmem.recipe import MethodConfig, recipe_from_dict


class NaNInjectConfig(MethodConfig):
    """Standard training that poisons one step: its loss, or only its gradient."""

    name: Literal["nan_inject"] = "nan_inject"
    epoch: int = 2
    step: int = 3  # 0: every step of that epoch
    quantity: Literal["loss", "gradient", "input", "weights"] = "loss"


class _NaNGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), NaN backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class NaNInject(Method):
    """quantity 'input': the batch is scaled by 1e38, so its forward overflows (BatchNorm statistics
    turn inf/NaN) and its loss is NaN; 'weights': after a healthy step a weight is set to inf.
    `recorded` keeps the model's buffers before and after the poisoned step."""

    Config = NaNInjectConfig
    recorded: dict = {}

    def on_epoch_start(self, epoch):
        self.step = 0

    def attack(self, model, batch, epoch):
        return AdvContext(x_adv=None)

    def _hit(self, epoch):
        return epoch == self.cfg.epoch and self.cfg.step in (0, self.step)

    def after_step(self, model):
        if self.hit and self.cfg.quantity == "input":
            NaNInject.recorded["after"] = [b.clone() for b in model.buffers()]
        if self.hit and self.cfg.quantity == "weights":
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")

    def outer_loss(self, model, batch, ctx, epoch):
        self.step += 1
        hit = self.hit = self._hit(epoch)
        x = batch.x
        if hit and self.cfg.quantity == "input":
            NaNInject.recorded["before"] = [b.clone() for b in model.buffers()]
            x = x * 1e38
        logits = model(x)
        if hit and self.cfg.quantity == "gradient":
            logits = _NaNGradient.apply(logits)
        loss = self.ce(logits, batch.y)
        if hit and self.cfg.quantity == "loss":
            loss = loss * float("nan")
        return loss, {"acc": accuracy_log(logits, batch.y)}


@pytest.fixture(autouse=True)
def registered():
    METHODS.register("nan_inject")(NaNInject)
    yield
    METHODS.unregister("nan_inject")


def recipe(tmp_path, model=None, on_nonfinite="stop", lr=0.05, **method):
    return recipe_from_dict({
        "name": "div", "seed": 0, "device": "cpu", "output_root": str(tmp_path),
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 80, "n_test": 32, "image_size": 4}, "val_size": 16},
        "model": model or {"name": "mlp", "kwargs": {"hidden": [8]}},
        "reliability": {"on_nonfinite": on_nonfinite},
        "method": {"name": "nan_inject", **method},
        "optim": {"epochs": 3, "batch_size": 16, "lr": lr},
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
    summary = json.loads((run / "summary.json").read_text())  # the interrupted run's summary: epoch 1, unfinished
    assert (summary["complete"], summary["epochs_completed"], summary["last"]["epoch"]) == (False, 1, 1)
    assert not (run / ".lock").exists()


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


SMALL_CNN = {"name": "small_cnn", "kwargs": {"width": 4, "hidden": 8}}


def saved_tensors(run):
    """Every tensor of every checkpoint and of the resume state's model."""
    out = {}
    for weights in sorted((run / "checkpoints").glob("*.safetensors")):
        out.update({f"{weights.stem}/{k}": v for k, v in load_file(str(weights)).items()})
    if (run / "resume.pt").exists():
        out.update({f"resume/{k}": v for k, v in load_resume_state(run / "resume.pt")["model"].items()})
    return out


def strict_json_lines(path):
    def refuse(constant):
        raise AssertionError(f"{path}: {constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line.strip()]


def test_skipped_batch_leaves_batchnorm_buffers_as_they_were(tmp_path):
    """An overflowing forward writes inf/NaN BatchNorm statistics; skip_batch must undo that."""
    NaNInject.recorded.clear()
    r = recipe(tmp_path, model=SMALL_CNN, on_nonfinite="skip_batch", epoch=2, step=3, quantity="input")
    run, _ = train(r, quiet=True)
    before, after = NaNInject.recorded["before"], NaNInject.recorded["after"]
    assert any(not torch.isfinite(b).all() for b in before) is False
    assert len(before) == len(after) > 2
    for b, a in zip(before, after):
        assert torch.equal(b, a)  # bitwise, num_batches_tracked included
    assert [row["skipped_batches"] for row in strict_json_lines(run.path / "metrics.jsonl")] == [0, 1, 0]
    tensors = saved_tensors(run.path)
    assert any("running_var" in k for k in tensors)
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


@pytest.mark.parametrize("on_nonfinite", ["stop", "skip_batch"])
def test_nonfinite_weights_are_never_saved(tmp_path, on_nonfinite):
    """The last step of epoch 2 leaves an inf weight (finite loss and gradient): epoch 2 is not saved."""
    r = recipe(tmp_path, on_nonfinite=on_nonfinite, epoch=2, step=4, quantity="weights")  # (80 - 16) / 16 = 4 steps
    with pytest.raises(RunFailure, match="epoch 2: the model's .* is non-finite") as info:
        train(r, quiet=True)
    assert "\n" not in str(info.value) and "epoch 1" in str(info.value)
    run = tmp_path / "div"
    failure = json.loads((run / "failure.json").read_text())
    assert (failure["reason"], failure["epoch"], failure["last_good_epoch"]) == ("non-finite-state", 2, 1)
    assert load_resume_state(run / "resume.pt")["epoch"] == 1
    assert [row["epoch"] for row in strict_json_lines(run / "metrics.jsonl")] == [1]
    assert all(torch.isfinite(v).all() for v in saved_tensors(run).values() if v.is_floating_point())


def test_every_batch_skipped_writes_failure_json(tmp_path):
    r = recipe(tmp_path, on_nonfinite="skip_batch", epoch=2, step=0, quantity="loss")
    with pytest.raises(RunFailure, match="epoch 2: every batch had a non-finite loss"):
        train(r, quiet=True)
    failure = json.loads((tmp_path / "div" / "failure.json").read_text())
    assert (failure["quantity"], failure["epoch"], failure["skipped_batches"], failure["last_good_epoch"]) == \
        ("every batch", 2, 4, 1)
    assert load_resume_state(tmp_path / "div" / "resume.pt")["epoch"] == 1


def test_huge_learning_rate_with_skip_batch_saves_nothing_non_finite(tmp_path):
    """lr 1e6: whatever diverges first, no saved tensor is ever inf or NaN and failure.json says where."""
    r = recipe(tmp_path, model=SMALL_CNN, on_nonfinite="skip_batch", lr=1e6, epoch=99)
    try:
        train(r, quiet=True)
    except RunFailure:
        assert json.loads((tmp_path / "div" / "failure.json").read_text())["epoch"] >= 1
    run = tmp_path / "div"
    assert all(torch.isfinite(v).all() for v in saved_tensors(run).values() if v.is_floating_point())
    strict_json_lines(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else None


def test_nan_metrics_are_written_as_null(tmp_path):
    from advmem.engine.rundir import RunDir

    run = RunDir(tmp_path)
    run.write_metrics([{"epoch": 1, "val_nat_loss": float("nan"), "train_loss": float("inf"), "lr": 0.1}])
    assert strict_json_lines(run.metrics_jsonl) == [{"epoch": 1, "val_nat_loss": None, "train_loss": None, "lr": 0.1}]
    assert run.metrics_csv.read_text().splitlines()[1] == "1,,,0.1"
