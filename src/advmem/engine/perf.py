"""The `perf:` recipe section resolved for one device: memory format, precision, compilation.

Kept out of the trainer so the step stays readable: the trainer asks this module for the model
the step calls, for the batch in the right memory format and for the autocast context. None of
these change what is computed beyond floating-point rounding (tests/test_optimizations.py).

- `channels_last`: NHWC memory format for the model and the batches (default on CUDA and on CPU,
  where it was measured faster for small_cnn and PreActResNet-18: BENCHMARKS.md).
- `precision`: torch.autocast with bf16 (default on CUDA; fp32 exponent range, so attack
  gradients cannot underflow) or fp16 (attack loss scaled by `fp16_attack_scale` inside
  `pgd`, weight gradients scaled by torch.amp.GradScaler). Evaluation always runs in fp32.
- `compile`: torch.compile on the model used by the training step (the attack and the loss);
  checkpoints and evaluation use the uncompiled module, which shares the same parameters.
- `cuda_graphs`: torch.compile(mode="reduce-overhead"), which captures CUDA graphs. CUDA only;
  untested on the machines this was written on (no GPU).
- `fold_bn`: eval-mode training attacks use the model with every conv -> BatchNorm pair folded
  into one convolution (advmem.attacks.attack_view); default on unless the model is compiled.
- `fast_pool`: in that attack view, max-pools on contiguous CPU tensors run through torch's
  NHWC kernel (several times faster than its NCHW one; bit for bit the same output and
  gradient); default on unless the model is compiled. On CUDA and for channels_last only the
  (exact) ReLU -> max-pool swap applies; the pool itself is torch's.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from advmem.attacks.attack_view import use_attack_view
from advmem.attacks.pgd import attack_grad_scale
from advmem.errors import UserError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Perf:
    """Resolved speed settings (no "auto" left)."""

    device_type: str
    channels_last: bool
    precision: str  # fp32 | bf16 | fp16
    compile: bool
    cuda_graphs: bool
    fp16_attack_scale: float = 1024.0
    fold_bn: bool = False
    fast_pool: bool = False

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return DTYPES[self.precision]

    @property
    def attack_grad_scale(self) -> float:
        return self.fp16_attack_scale if self.precision == "fp16" else 1.0

    def as_dict(self) -> dict:
        return {"channels_last": self.channels_last, "precision": self.precision, "compile": self.compile,
                "cuda_graphs": self.cuda_graphs, "fold_bn": self.fold_bn, "fast_pool": self.fast_pool}

    # -- what the trainer calls -----------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Convert `model` in place to the memory format; return the module the step calls."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        # fixed batch shapes: a ragged last batch gets its own static graph rather than turning
        # every later call into a (slower) dynamic-shape graph
        if self.cuda_graphs:
            return torch.compile(model, mode="reduce-overhead", dynamic=False)
        if self.compile:
            return torch.compile(model, dynamic=False)
        return model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast (if not fp32), the fp16 attack-gradient scale and the attack view, around attack and loss."""
        with ExitStack() as stack:
            dtype = self.autocast_dtype
            if dtype is not None:
                stack.enter_context(torch.autocast(self.device_type, dtype=dtype))
            if self.attack_grad_scale != 1.0:
                stack.enter_context(attack_grad_scale(self.attack_grad_scale))
            if self.fold_bn or self.fast_pool:
                stack.enter_context(use_attack_view(fold_bn=self.fold_bn, fast_pool=self.fast_pool))
            yield

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for the weight gradients; disabled (a pass-through) unless fp16."""
        return torch.amp.GradScaler(self.device_type, enabled=self.precision == "fp16")


def resolve_perf(cfg, device: torch.device) -> Perf:
    """Resolve "auto" for `device` and reject settings the device cannot run (UserError)."""
    cuda = device.type == "cuda"
    if cfg.cuda_graphs and not cuda:
        raise UserError("perf.cuda_graphs needs a CUDA device; set perf.cuda_graphs=false (or use perf.compile=true on CPU)")
    channels_last = True if cfg.channels_last == "auto" else bool(cfg.channels_last)
    precision = ("bf16" if cuda else "fp32") if cfg.precision == "auto" else cfg.precision
    # bf16 without tensor-core support (before Ampere) is emulated and slow: auto takes fp16 there
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        if cfg.precision == "auto":
            precision = "fp16"
        else:
            raise UserError("perf.precision=bf16 but this GPU has no native bf16 support; set perf.precision "
                            "to fp16 or fp32")
    compiled = bool(cfg.compile) or bool(cfg.cuda_graphs)
    fold_bn = not compiled if cfg.fold_bn == "auto" else bool(cfg.fold_bn)
    fast_pool = not compiled if cfg.fast_pool == "auto" else bool(cfg.fast_pool)
    return Perf(device_type=device.type, channels_last=channels_last, precision=precision,
                compile=bool(cfg.compile), cuda_graphs=bool(cfg.cuda_graphs),
                fp16_attack_scale=float(cfg.fp16_attack_scale), fold_bn=fold_bn, fast_pool=fast_pool)
