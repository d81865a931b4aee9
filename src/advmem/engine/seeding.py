"""Every random stream of a run, named in one place.

A run's randomness comes from its recipe seed alone:

- model initialisation: the global torch RNG seeded with `seed` (`seed_model_init`); under DDP
  every rank then reseeds it with `rank_seed(seed, rank)` so each rank draws its own attack noise;
- the training attacks' random starts: that global RNG, saved in (and restored from) the resume
  state; a rank whose state cannot be restored (another world size) gets `rank_seed(seed, rank, epoch)`;
- everything else: a fresh CPU generator per (seed, epoch, stream) from `epoch_generator`, so data
  order and evaluation noise carry no state and evaluating never shifts training. Each consumer
  has its own stream number below; two consumers sharing one would draw the same noise.
"""

from __future__ import annotations

import torch

# Streams of `epoch_generator`.
TRAIN_ORDER = 0          # a training epoch's permutation and augmentation
EVAL_STREAMS = {"train": 1, "val": 2, "test": 3}  # the evaluation attack per split (EMA and full test reuse them)
HARDEST_SELECT = 11      # robust-overfitting study: picking the hardest training samples
HARDEST_EVAL = 12        # robust-overfitting study: evaluating them
PER_SAMPLE_TRACKER = 13  # track.per_sample's attack (11 until issue 17: shared with HARDEST_SELECT)

# Offsets of `subset_generator`: fixed subsets drawn once per run.
TRAIN_EVAL_SUBSET = 17   # eval.train_subset: the training images evaluated every epoch
TRACKED_SUBSET = 29      # track.per_sample.subset: the training samples tracked


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A fresh CPU generator per (seed, epoch, stream): data order and eval noise carry no state."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63 - 1))
    return g


def subset_generator(seed: int, offset: int) -> torch.Generator:
    """The generator of a fixed subset (one of the offsets above)."""
    return torch.Generator().manual_seed(seed + offset)


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The global-RNG seed of DDP rank `rank` > 0 at the start of training (`epoch` 0) or when its
    saved state cannot be restored at a resume after `epoch`."""
    return seed * 1_000_003 + rank + 7919 * epoch


def seed_model_init(seed: int, device: torch.device) -> None:
    """Seed the global RNGs the model's initialisation (and then the training attacks) draw from."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
