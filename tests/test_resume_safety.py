"""Resume never destroys results: a lost resume.pt, a copied or moved run, edited metrics, debris
of a run killed while it was being created, broken lock files (issue 15, section 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from advmem.cli import main
from advmem.engine.trainer import train
from advmem.recipe import recipe_from_dict
from conftest import tree_snapshot


def recipe_dict(root: Path, name: str = "inc", epochs: int = 3, **extra) -> dict:
    recipe = {
        "name": name, "seed": 1, "device": "cpu", "deterministic": True, "output_root": str(root),
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 64, "n_test": 32, "image_size": 4}, "val_size": 16},
        "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
        "method": {"name": "standard"},
        "optim": {"epochs": epochs, "batch_size": 16, "lr": 0.05},
        "eval": {"train_subset": 16, "batch_size": 64, "attack": {"steps": 1}},
        "attack": {"steps": 1},
    }
    recipe.update(extra)
    return recipe


def epochs_of(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_missing_resume_state_with_completed_epochs_is_refused(tmp_path, capsys):
    train(recipe_from_dict(recipe_dict(tmp_path)), quiet=True)
    run = tmp_path / "inc"
    (run / "resume.pt").unlink()
    before = tree_snapshot(run)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resume.pt is missing" in err and "epoch 3 completed" in err
    assert "--name NEW" in err and "Traceback" not in err
    assert tree_snapshot(run) == before


def test_missing_resume_state_of_an_unfinished_run_is_refused(tmp_path, capsys):
    """Metrics of epochs 1-2 (no summary yet): epoch 1 was committed, so a restart would overwrite it."""
    train(recipe_from_dict(recipe_dict(tmp_path, epochs=2)), quiet=True)
    run = tmp_path / "inc"
    for name in ("resume.pt", "summary.json"):
        (run / name).unlink()
    before = tree_snapshot(run)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "shows epoch 1 completed" in capsys.readouterr().err
    assert tree_snapshot(run) == before


def test_files_of_an_uncommitted_first_epoch_do_not_block_a_restart(tmp_path, capsys):
    """A kill after epoch 1 wrote its checkpoints but before its resume.pt: nothing committed yet."""
    train(recipe_from_dict(recipe_dict(tmp_path, epochs=1)), quiet=True)
    run = tmp_path / "inc"
    for name in ("resume.pt", "summary.json"):
        (run / name).unlink()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "starting it again from epoch 1" in capsys.readouterr().err
    assert epochs_of(run) == [1] and (run / "resume.pt").is_file()
