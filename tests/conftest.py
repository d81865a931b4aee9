"""Shared fixtures: tiny recipes on synthetic data and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src"
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
FMNIST_SKIP = "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# CI runs the same hypothesis examples every time (a red CI must be reproducible); local runs
# keep exploring new examples.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("advmem-ci", derandomize=True, database=None)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("advmem-ci")


def tiny_recipe(**overrides) -> dict:
    """A recipe that trains in about a second: synthetic 8x8 data, a tiny CNN with BatchNorm."""
    recipe = {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "deterministic": True,
        "data": {"dataset": "synthetic", "val_size": 64, "test_size": 128,
                 "synthetic": {"n_train": 320, "n_test": 128, "num_classes": 4, "image_size": 8}},
        "model": {"name": "small_cnn", "kwargs": {"width": 4, "hidden": 16}},
        "method": {"name": "pgd_at"},
        "attack": {"eps": "0.1", "step_size": "0.05", "steps": 2},
        "optim": {"epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": {"name": "multistep", "milestones": [1]}},
        "eval": {"train_subset": 64, "batch_size": 128, "attack": {"steps": 2}},
    }
    for key, value in overrides.items():
        node = recipe
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return recipe


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "advmem", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tree_snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def write_recipe(tmp_path):
    import yaml

    def write(name: str = "recipe.yaml", **overrides) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tiny_recipe(**overrides)))
        return path

    return write


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a loaded 2-core machine two OpenMP
    threads only wait on each other. Restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
