"""A kill between writing the weights and the JSON sidecar must not leave an inconsistent pair."""

from __future__ import annotations

import json

import torch
from torch import nn

from advmem.engine.checkpoint import build_from_checkpoint, read_sidecar, save_checkpoint
from advmem.models import build_model


def _meta(epoch):
    arch = {"name": "mlp", "kwargs": {"hidden": [4]}, "in_channels": 1, "num_classes": 3, "image_size": [2, 2],
            "mean": [0.5], "std": [0.5]}
    return {"architecture": arch, "dataset": "synthetic", "epoch": epoch, "recipe_hash": "h", "eps": "0.1"}


def _model(seed):
    torch.manual_seed(seed)
    return build_model("mlp", in_channels=1, num_classes=3, image_size=(2, 2), mean=(0.5,), std=(0.5,), hidden=(4,))


def test_weights_win_over_a_lagging_sidecar(tmp_path):
    stem = tmp_path / "last"
    save_checkpoint(stem, _model(0), _meta(1))
    old_sidecar = (tmp_path / "last.json").read_text()
    new = _model(1)
    save_checkpoint(stem, new, _meta(2))
    (tmp_path / "last.json").write_text(old_sidecar)  # as if killed before the sidecar's rename
    assert read_sidecar(stem)["epoch"] == 2
    model, meta = build_from_checkpoint(stem)
    x = torch.rand(3, 1, 2, 2)
    assert torch.equal(model(x), new.eval()(x)) and meta["epoch"] == 2


def test_missing_sidecar_uses_the_embedded_copy(tmp_path):
    stem = tmp_path / "init"
    save_checkpoint(stem, _model(0), _meta(0))
    (tmp_path / "init.json").unlink()
    assert read_sidecar(stem)["epoch"] == 0
    assert isinstance(build_from_checkpoint(stem)[0], nn.Module)
    assert json.loads(json.dumps(read_sidecar(stem)))["architecture"]["name"] == "mlp"
