"""The CPU memory-layout rule that keeps oneDNN off its crashing NHWC kernels (docs/speed.md).

The crash itself is native (a hang, a double free or a segfault), so the end-to-end check runs
`advmem train` in a subprocess with a time limit: a regression is one failing test with its
output, not a dead suite."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from advmem.engine.perf import cpu_channels_last_hazards, resolve_perf
from advmem.models import build_model
from advmem.recipe import PerfConfig
from advmem.engine.rundir import RunDir
from advmem.engine.trainer import Trainer
from advmem.recipe import recipe_from_dict
from conftest import SRC


def model(name: str, **kwargs):
    return build_model(name, in_channels=3, num_classes=10, image_size=32, mean=[0.5] * 3, std=[0.5] * 3, **kwargs)


@pytest.mark.parametrize(("name", "kwargs", "hazard"), [
    ("preact_resnet18", {"width": 4}, True),    # shortcut 4 -> 8, stride 2: hung on AVX2
    ("preact_resnet18", {"width": 8}, True),    # 8 -> 16 at 64x64 segfaulted with AVX-512
    ("preact_resnet18", {"width": 16}, False),
    ("preact_resnet18", {}, False),
    ("resnet18", {"width": 4}, True),
    ("resnet18", {}, False),
    ("wide_resnet", {"depth": 10, "widen_factor": 1}, False),  # shortcuts read 16+ channels
    ("small_cnn", {"width": 4, "hidden": 16}, False),         # no strided 1x1 convolution
])
def test_hazard_rule_on_the_shipped_models(name, kwargs, hazard):
    assert bool(cpu_channels_last_hazards(model(name, **kwargs))) is hazard


def test_a_hazard_turns_channels_last_off_on_cpu_with_a_note():
    import torch

    notes: list[str] = []
    risky = model("preact_resnet18", width=4)
    for asked in ("auto", True):
        perf = resolve_perf(PerfConfig(channels_last=asked), torch.device("cpu"), risky, log=notes.append)
        assert perf.channels_last is False
    assert len(notes) == 2 and "layer2.0.shortcut" in notes[0] and "docs/speed.md" in notes[0]
    safe = resolve_perf(PerfConfig(), torch.device("cpu"), model("preact_resnet18", width=16), log=notes.append)
    assert safe.channels_last is True and len(notes) == 2
    # CUDA has no such kernel: the rule is CPU-only (resolve_perf reads only the device type here)
    assert resolve_perf(PerfConfig(precision="fp32"), torch.device("cuda"), risky).channels_last is True


def test_trainer_keeps_a_risky_model_contiguous(tmp_path):
    recipe = recipe_from_dict({"device": "cpu", "data": {"dataset": "synthetic", "synthetic": {"n_train": 16, "n_test": 8}},
                               "model": {"name": "preact_resnet18", "kwargs": {"width": 4}},
                               "perf": {"channels_last": True}})
    notes: list[str] = []
    trainer = Trainer(recipe, RunDir(tmp_path / "run"), quiet=True, log=notes.append)
    trainer.setup(resume=False)
    assert any("perf.channels_last off on CPU" in n for n in notes)
    assert trainer.perf.channels_last is False
    assert all(p.is_contiguous() for p in trainer.model.parameters())


def test_the_issue_recipe_trains_on_the_avx2_kernels(tmp_path):
    """The recipe that segfaulted `advmem train` on an AVX2-only EPYC, run on oneDNN's AVX2 kernels
    (ONEDNN_MAX_CPU_ISA caps the ISA; on an AVX2-only CPU it changes nothing)."""
    recipe = {
        "data": {"dataset": "synthetic", "augment": "none",
                 "synthetic": {"n_train": 16, "n_test": 8, "channels": 3, "image_size": 32}},
        "model": {"name": "preact_resnet18", "kwargs": {"width": 4}},
        "method": {"name": "standard"},
        "optim": {"epochs": 4, "batch_size": 8, "lr": 0.01, "schedule": {"name": "constant"}},
        "eval": {"train_subset": 0, "every": 1, "batch_size": 8},
        "perf": {"channels_last": True},
        "output_root": str(tmp_path / "runs"),
    }
    path = tmp_path / "crash.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="2", ONEDNN_MAX_CPU_ISA="AVX2")
    try:
        proc = subprocess.run([sys.executable, "-m", "advmem", "train", str(path), "--quiet"], env=env,
                              capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("advmem train hung on oneDNN's AVX2 kernels (> 180 s)")
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "perf.channels_last off on CPU" in proc.stderr
