"""Shared fixtures: tiny recipes on synthetic data and a CLI runner."""

from __future__ import annotations

import contextlib
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


def tiny_run(root: Path, name: str, method: str, seed: int = 0) -> Path:
    """A one-epoch run of `method` on 48 synthetic samples with a tiny MLP, trained into `root`; its path."""
    from advmem.training import train
    from advmem.recipe import recipe_from_dict

    recipe = recipe_from_dict({
        "name": name, "device": "cpu", "seed": seed,
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 48, "n_test": 32}},
        "model": {"name": "mlp", "kwargs": {"hidden": [8]}}, "method": {"name": method},
        "attack": {"eps": "0.1", "step_size": "0.05", "steps": 2},
        "optim": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "eval": {"train_subset": 16, "attack": {"steps": 2}},
    })
    return train(recipe, run_root=root, quiet=True)[0].path


class Interrupt(Exception):
    """The crash a test simulates (a kill the trainer must survive on resume)."""


class CrashAt:
    """A callback that raises `error` in epoch `epoch`: after training it (and after the callbacks
    before this one wrote it, e.g. the per-sample tracker), before its resume state is saved."""

    def __init__(self, epoch: int, error: type[BaseException] = Interrupt):
        self.epoch, self.error = epoch, error

    def on_epoch_end(self, trainer, epoch, row):
        if epoch == self.epoch:
            raise self.error


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to `n`, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny tensors gain nothing from more, and on a loaded 2-core machine two
    OpenMP threads spin against each other (measured 10-50x slower); subprocesses that run with
    OMP_NUM_THREADS=1 and an in-process reference then use the same kernels. Files use it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`, or one_thread_module for module fixtures."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """one_thread for a whole module, so module-scoped fixtures (trained runs) get it too."""
    with torch_threads(1):
        yield


def run_cli(args: list[str], cwd: Path, timeout: float = 300, pythonpath: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m advmem ARGS` in `cwd`, with `pythonpath` (user code) after advmem's src on PYTHONPATH."""
    # one thread: on a loaded 2-core machine two OpenMP threads per subprocess spin against each other
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, (SRC, *pythonpath))), OMP_NUM_THREADS="1")
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
