"""CUDA paths that a CPU run never takes: reduced precision, torch.compile (inductor) and
cuda_graphs on the GPU, against the fp32 eager step. Marked `gpu` and skipped without CUDA;
`python -m advmem.bench gpu-check` runs them (with the no-sync test in test_optimizations.py).

Tolerances are those of the CPU tests, widened where the GPU computes differently: cuDNN
picks its own convolution algorithms, so fp32 eager and compiled steps agree to rounding,
not bit for bit."""

from __future__ import annotations

import pytest
import torch

from test_optimizations import one_epoch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

FP32 = {"precision": "fp32"}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


@pytest.mark.parametrize("precision,tol", [("bf16", 0.05), ("fp16", 0.02)])
def test_reduced_precision_on_cuda_within_tolerance(tmp_path, precision, tol):
    row_a, w_a = one_epoch(tmp_path / "a", device="cuda", perf=FP32)
    row_b, w_b = one_epoch(tmp_path / "b", device="cuda", perf={"precision": precision})
    assert abs(row_a["train_loss"] - row_b["train_loss"]) < tol
    assert relative(w_a, w_b) < 0.02
    assert row_b["grad_norm_sq"] > 0


@pytest.mark.parametrize("mode", ["compile", "cuda_graphs"])
def test_compiled_cuda_step_matches_eager(tmp_path, mode):
    """Inductor on CUDA, and cuda_graphs (compile with mode reduce-overhead), both in fp32, give
    the eager step's loss and weights after one epoch (3 steps, one ragged last batch)."""
    row_a, w_a = one_epoch(tmp_path / "a", device="cuda", perf=FP32)
    row_b, w_b = one_epoch(tmp_path / "b", device="cuda", perf={**FP32, mode: True})
    assert abs(row_a["train_loss"] - row_b["train_loss"]) < 1e-3
    assert relative(w_a, w_b) < 1e-3


def test_bf16_step_keeps_attack_moving_on_cuda(tmp_path):
    """bf16 autocast on the GPU: the attack still changes the input. No random start, so only
    its sign steps can move it, and sign(0) = 0 where the gradient vanished."""
    from test_optimizations import make_trainer

    attack = {"eps": "0.1", "step_size": "0.05", "steps": 2, "start": "none"}
    trainer = make_trainer(tmp_path, device="cuda", perf={"precision": "bf16"}, attack=attack)
    batch = next(trainer.bundle.train.batches(32, shuffle=False))
    with trainer.perf.autocast():
        ctx = trainer.method.attack(trainer.step_model, batch, 1)
    moved = (ctx.x_adv - batch.x).abs().flatten(1).amax(1)
    assert (moved > 0).float().mean() > 0.9
