"""DistributedDataParallel under torchrun: process group, sharding, reductions, failure messages.

`advmem train` reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT);
without it (or with WORLD_SIZE=1) everything here is a no-op and training is single-process.
Design (docs/distributed.md): each rank takes a disjoint shard of every epoch's permutation,
per-rank batch = optim.batch_size / world size, gradients are averaged by DDP, step metrics are
summed across ranks once per epoch, rank 0 alone evaluates and writes the run directory, and a
lost peer (a killed rank, a dead node) becomes a one-line RunFailure instead of a hang.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from advmem.errors import RunFailure, UserError


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer; launch with torchrun") from None


@dataclass
class Comm:
    """This process's place in the job, and the few collectives the trainer needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    run_path: str = "RUN"  # named in failure messages

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (each turns a lost peer into a RunFailure) ---------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if not self.enabled:
            return tensor
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        with collective_errors(self):
            dist.all_reduce(tensor, op=reduce_op)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `tensor` (same shape on all ranks) along dim 0, in rank order."""
        if not self.enabled:
            return tensor
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        with collective_errors(self):
            dist.all_gather(out, tensor.contiguous())
        return torch.cat(out)

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        with collective_errors(self):
            dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            with collective_errors(self):
                dist.barrier()

    # -- model -----------------------------------------------------------------------------
    def convert_sync_bn(self, model: nn.Module, sync_bn: bool) -> nn.Module:
        if self.enabled and sync_bn:
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the training loss runs through: DDP when distributed, else the model itself.
        Attacks and evaluation use the plain model, so no DDP hook fires outside the loss."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        with collective_errors(self):
            return DistributedDataParallel(model, device_ids=device_ids)


def is_comm_error(err: BaseException) -> bool:
    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        key in text for key in ("gloo", "nccl", "connection closed", "connection reset", "broken pipe", "timed out"))


def peer_failure(comm: Comm, err: BaseException) -> RunFailure:
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip())  # drop gloo's "[file.cc:553]" prefix
    first = text.splitlines()[0][:120] if text else type(err).__name__
    return RunFailure(
        f"DDP rank {comm.rank} of {comm.world_size}: lost contact with another worker ({first}); "
        "another rank crashed or was killed (see its log); the run directory keeps the last completed epoch: "
        f"relaunch all workers with 'torchrun ... -m advmem train --resume {comm.run_path}'")


class collective_errors:
    """Context manager: a communication error inside becomes `peer_failure`."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and is_comm_error(exc):
            raise peer_failure(self.comm, exc) from exc
        return False


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def child_env(src: os.PathLike | str | None = None, **extra: object) -> dict[str, str]:
    """This process's environment for a child advmem process (a test's, a check's): one torch thread,
    none of torchrun's variables (a child started from inside a DDP rank must not think it is that
    rank), `src` first on PYTHONPATH (so the child runs this checkout), then `extra` as strings."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for key in TORCHRUN_VARIABLES:
        env.pop(key, None)
    env.update({key: str(value) for key, value in extra.items()})
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for MASTER_PORT of a local multi-process run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comm_from_env() -> Comm:
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}; launch with torchrun")
    return Comm(rank=rank, world_size=world, local_rank=local)


def init_distributed(recipe, run_path: str = "RUN") -> Comm:
    """Read torchrun's environment, check the recipe against it, and join the process group."""
    comm = comm_from_env()
    comm.run_path = run_path
    if not comm.enabled:
        return comm
    batch = recipe.optim.batch_size
    if batch % comm.world_size:
        raise UserError(f"optim.batch_size {batch} is not divisible by the {comm.world_size} DDP processes; "
                        f"set it to a multiple of {comm.world_size} (it is the global batch, split across ranks)")
    use_cuda = recipe.device == "cuda" or (recipe.device == "auto" and torch.cuda.is_available())
    backend = recipe.distributed.backend
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if backend == "nccl" and not use_cuda:
        raise UserError("distributed.backend nccl needs CUDA devices; use backend gloo (or auto) on CPU")
    if recipe.distributed.sync_bn and not use_cuda:
        raise UserError("distributed.sync_bn needs CUDA (SyncBatchNorm has no CPU/gloo path); "
                        "set distributed.sync_bn: false on CPU")
    if use_cuda:
        if torch.cuda.device_count() <= comm.local_rank:
            raise UserError(f"LOCAL_RANK {comm.local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                            "visible; use --nproc-per-node at most the number of GPUs")
        torch.cuda.set_device(comm.local_rank)
    if not dist.is_initialized():
        with collective_errors(comm):
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=recipe.distributed.timeout_s))
    return comm


def shutdown(comm: Comm, *, completed: bool = False) -> None:
    """Tear the process group down; after a completed run, first wait for every rank, since a rank
    that destroys the group while a peer is still in its last collective can abort gloo
    ("terminate called without an active exception")."""
    if comm.enabled and dist.is_initialized():
        try:
            if completed:  # NCCL: name the device rather than have torch guess it
                nccl = dist.get_backend() == "nccl"
                dist.barrier(device_ids=[torch.cuda.current_device()] if nccl else None)
            dist.destroy_process_group()
        except Exception:  # a peer may already be gone; nothing left to clean up
            pass
