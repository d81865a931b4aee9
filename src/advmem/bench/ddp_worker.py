"""One rank of the gpu-check DDP smoke test: `advmem train` under torchrun, on advmem's DDP path.

    python -m torch.distributed.run --standalone --nproc-per-node N -m advmem.bench.ddp_worker \\
        [--stop-after-epoch E] -- train RECIPE --quiet

advmem runs DDP only with more than one process (`Comm.enabled`), so on a one-GPU machine a
plain `advmem train` under torchrun would never touch NCCL. With WORLD_SIZE=1 this worker
turns that path on: the process group is initialized (NCCL on CUDA), the loss runs through
DistributedDataParallel and the epoch sums are all-reduced as device tensors, exactly as
with two or more GPUs. `--stop-after-epoch E` sends this process a SIGTERM when epoch E's
training ends, the way a scheduler preempts a job, so the run stops cleanly at epoch E and
the check can resume it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m advmem.bench.ddp_worker")
    p.add_argument("--stop-after-epoch", type=int, default=None)
    p.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the advmem command line")
    args = p.parse_args(argv)
    cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    # upward (the worker runs `advmem train` in-process) and torch: only in the worker process
    import advmem.cli as advmem_cli
    from advmem.engine import distributed, trainer

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        distributed.Comm.enabled = property(lambda self: True)
    if args.stop_after_epoch is not None:
        original = trainer.Trainer.train_epoch

        def train_epoch(self, epoch: int, *rest, **kwargs):
            row = original(self, epoch, *rest, **kwargs)
            if epoch == args.stop_after_epoch:
                os.kill(os.getpid(), signal.SIGTERM)  # caught by the trainer: stop after this epoch
            return row

        trainer.Trainer.train_epoch = train_epoch
    return advmem_cli.main(cli)


if __name__ == "__main__":
    sys.exit(main())
