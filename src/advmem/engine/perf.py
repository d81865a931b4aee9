"""The `perf:` recipe section resolved for one device: memory format, precision, compilation.

Kept out of the trainer so the step stays readable: the trainer asks this module for the model
the step calls, for the batch in the right memory format and for the autocast context. None of
these change what is computed beyond floating-point rounding (tests/test_optimizations.py).

- `channels_last`: NHWC memory format for the model and the batches (default on CUDA and on CPU,
  where it was measured faster for small_cnn and PreActResNet-18: BENCHMARKS.md). On CPU a model
  with a strided 1x1 convolution over few channels (< 16, or not a multiple of 8) stays
  contiguous, whatever the recipe says: oneDNN's kernels for that convolution's weight gradient
  in NHWC hang or corrupt memory (`cpu_channels_last_hazards`; docs/speed.md).
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


def cpu_channels_last_hazards(model: nn.Module) -> list[str]:
    """Names of the convolutions that must not run in NHWC on a CPU.

    torch 2.13's oneDNN (v3.12) has no safe weight-gradient kernel for a 1x1, stride-2 convolution
    on NHWC input with few input channels: on an AVX2 CPU (or with ONEDNN_MAX_CPU_ISA=AVX2)
    `jit_avx2_1x1_convolution_bwd_weights` hangs, double-frees or segfaults within a few steps for
    2-7 channels; with AVX-512, 4, 8 and 12 channels segfault at 64x64 inputs
    (`scripts/onednn_nhwc_repro.py`, docs/speed.md). 3x3 convolutions, 1x1 at stride 1, one input
    channel, 16+ channels and NCHW were fine. The rule covers both vector widths with a margin
    (fewer than 16 channels or not a multiple of 8, any stride > 1) and holds on every CPU, so a
    model's layout, and with it every result, does not depend on the processor."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1)
            and max(m.stride) > 1 and (m.in_channels < 16 or m.in_channels % 8 != 0)]


def resolve_perf(cfg, device: torch.device, model: nn.Module | None = None,
                 log=None) -> Perf:
    """Resolve "auto" for `device` and reject settings the device cannot run (UserError).

    With `model`, a CPU layout hazard (`cpu_channels_last_hazards`) turns channels_last off,
    with a one-line note through `log`."""
    cuda = device.type == "cuda"
    if cfg.cuda_graphs and not cuda:
        raise UserError("perf.cuda_graphs needs a CUDA device; set perf.cuda_graphs=false (or use perf.compile=true on CPU)")
    channels_last = True if cfg.channels_last == "auto" else bool(cfg.channels_last)
    if channels_last and not cuda and model is not None:
        hazards = cpu_channels_last_hazards(model)
        if hazards:
            channels_last = False
            if log is not None:
                more = f" (+{len(hazards) - 1} more)" if len(hazards) > 1 else ""
                log(f"note: perf.channels_last off on CPU for this model: oneDNN's NHWC weight-gradient "
                    f"kernel crashes on the strided 1x1 convolution {hazards[0]}{more} (fewer than 16 "
                    "or not a multiple of 8 input channels; docs/speed.md); training runs contiguous (NCHW)")
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
