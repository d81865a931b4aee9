"""Where to compute: the device a recipe or a command names, and deterministic kernels.

Below every layer: the trainer, `advmem eval` and the analyses all resolve `--device` /
`device:` the same way.
"""

from __future__ import annotations

import os

import torch

from advmem.errors import UserError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" (the GPU when there is one), "cpu" or "cuda" (refused when there is no GPU); under
    torchrun "cuda" means this process's GPU, `local_rank`."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but no CUDA GPU is available; use --set device=cpu or device=auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda", local_rank) if name == "cuda" and local_rank else torch.device(name)


def use_deterministic(device: torch.device) -> None:
    """`deterministic: true`. On CPU every kernel used here is deterministic. On CUDA cuBLAS needs a
    fixed workspace (read at its first call in the process), and some backward kernels (e.g. the
    adaptive average pool of small_cnn) have no deterministic version: those warn instead of
    failing, so a run is as deterministic as its kernels are."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True)
