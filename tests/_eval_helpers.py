"""Shared helpers for the evaluation/checkpoint/report tests: small trained runs, built once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
_CACHE: dict[str, Path] = {}


# One intra-op thread: on a shared, overloaded CPU, torch's thread pool makes the many tiny ops
# of an attack ~10x slower (spinning threads that are descheduled).
import torch  # noqa: E402

torch.set_num_threads(1)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC)
    env["OMP_NUM_THREADS"] = "1"
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "advmem", *map(str, args)]


def recipe_dict(name: str, method: str = "standard", epochs: int = 3, **extra) -> dict:
    d = {
        "name": name, "device": "cpu", "seed": 0,
        "data": {"dataset": "synthetic", "val_size": 64, "synthetic": {"n_train": 576, "n_test": 128}},
        "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "method": {"name": method},
        "attack": {"eps": "0.1", "step_size": "0.025", "steps": 3},
        "optim": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "schedule": {"name": "constant"}},
        "eval": {"train_subset": 64, "attack": {"steps": 3}},
    }
    d.update(extra)
    return d


def trained_run(tmp_path_factory, name: str = "std", method: str = "standard", epochs: int = 3, **extra) -> Path:
    """A small run trained once per test session (synthetic 8x8 data, MLP with 32 hidden units)."""
    key = f"{name}-{method}-{epochs}-{sorted(extra.items())}"
    if key not in _CACHE:
        from advmem.training import train
        from advmem.recipe import recipe_from_dict

        root = tmp_path_factory.mktemp("runs")
        run, _ = train(recipe_from_dict(recipe_dict(name, method, epochs, **extra)), run_root=root, quiet=True)
        _CACHE[key] = run.path
    return _CACHE[key]


def digits_run(tmp_path_factory) -> Path:
    """A normally (standard) trained MLP on scikit-learn digits: real data, ~87% clean accuracy."""
    return trained_run(tmp_path_factory, "digits", "standard", epochs=4, data={"dataset": "digits", "val_size": 100})


def eval_points(run: Path, n: int = 40, which: str = "last"):
    """(model, x, y) for the first n test points of a run's checkpoint."""
    import torch

    from advmem.engine.checkpoint import build_from_checkpoint
    from advmem.evaluation.runner import dataset_split

    model, meta = build_from_checkpoint(run / "checkpoints" / f"{which}.safetensors")
    data = dataset_split(meta, "test", torch.device("cpu"))
    data = data.subset(torch.arange(n))
    return model, data.all_float(), data.y
