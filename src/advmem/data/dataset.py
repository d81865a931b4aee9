"""Device-resident datasets, batched augmentation, and `build_data`.

Small image datasets fit in accelerator memory as uint8 (Fashion-MNIST is 47 MB, CIFAR-10
150 MB), so the whole set lives on the device and batches are sliced from it: no DataLoader
workers, no host-to-device copies per step, and conversion to float happens per batch on the
device. All randomness (order, augmentation) comes from a `torch.Generator` passed in by the
caller, so an epoch is reproducible from (seed, epoch) with no hidden RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from advmem.data.config import DataConfig
from advmem.data.corruption import Corruption, corrupt_training_set
from advmem.data.sources import DATASETS, RawSplit, dataset_num_classes, read_raw
from advmem.errors import UserError


class Batch(NamedTuple):
    """x: float32 [0,1] NCHW; y: int64 labels; index: int64 position in the set as used."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor


def _check_cpu_generator(generator: torch.Generator | None) -> None:
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("pass a CPU torch.Generator; random draws are made on CPU then moved")


class Augment:
    """Batched random crop (zero padding) and horizontal flip, vectorized over the batch.

    `kind` is one of "none", "crop", "flip", "crop_flip". Calling it on a float batch draws
    per-sample offsets / flip decisions on CPU from `generator` (so results do not depend on
    the device) and applies them with tensor ops only. Draw order: crop y-offsets, crop
    x-offsets, flip mask.
    """

    KINDS = ("none", "crop", "flip", "crop_flip")

    def __init__(self, kind: str = "none", padding: int = 4):
        if kind not in self.KINDS:
            raise UserError(f"unknown augment {kind!r}; choose one of {', '.join(self.KINDS)}")
        if padding < 0:
            raise UserError(f"crop padding must be >= 0, got {padding}; set data.crop_padding to 0 or more")
        self.kind = kind
        self.padding = int(padding)

    @property
    def crops(self) -> bool:
        return self.kind in ("crop", "crop_flip")

    @property
    def flips(self) -> bool:
        return self.kind in ("flip", "crop_flip")

    def __repr__(self) -> str:
        return f"Augment(kind={self.kind!r}, padding={self.padding})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_cpu_generator(generator)
        if self.kind == "none" or x.shape[0] == 0:
            return x
        n = x.shape[0]
        if self.crops:
            p = self.padding
            oy = _copy_to(torch.randint(0, 2 * p + 1, (n,), generator=generator), x.device)
            ox = _copy_to(torch.randint(0, 2 * p + 1, (n,), generator=generator), x.device)
            x = random_crop(x, oy, ox, p)
        if self.flips:
            mask = _copy_to(torch.rand(n, generator=generator) < 0.5, x.device)
            x = flip(x, mask)
        return x


def _copy_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy from pinned memory, so the host does not wait for the GPU's queued work (a copy from
    pageable memory synchronizes the stream); a no-op on CPU."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def random_crop(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop each sample of `x` (N,C,H,W) at offsets (oy, ox) into its zero-padded version.

    Pads once for the whole batch, then gathers every crop with one advanced-indexing op;
    offset (padding, padding) is the identity.
    """
    n, c, h, w = x.shape
    if padding == 0:
        return x
    xp = F.pad(x, (padding, padding, padding, padding))
    rows = oy.view(n, 1) + torch.arange(h, device=x.device).view(1, h)  # (N, H)
    cols = ox.view(n, 1) + torch.arange(w, device=x.device).view(1, w)  # (N, W)
    ni = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return xp[ni, ci, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Horizontally flip the samples where `mask` (N,) is true."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


class DeviceDataset:
    """uint8 NCHW images, int64 labels and int64 indices, all on one device."""

    def __init__(self, x_uint8_nchw: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
        if x_uint8_nchw.dtype != torch.uint8 or x_uint8_nchw.ndim != 4:
            raise ValueError(f"x must be uint8 NCHW, got {x_uint8_nchw.dtype} {tuple(x_uint8_nchw.shape)}")
        if not (len(x_uint8_nchw) == len(y) == len(index)):
            raise ValueError("x, y and index must have the same length")
        self.x = x_uint8_nchw
        self.y = y.long()
        self.index = index.long()

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return f"DeviceDataset(n={len(self)}, shape={tuple(self.x.shape[1:])}, device={self.device})"

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device | str) -> "DeviceDataset":
        return DeviceDataset(self.x.to(device), self.y.to(device), self.index.to(device))

    def subset(self, indices) -> "DeviceDataset":
        """Rows `indices` (positions in this dataset); the `index` values are kept, not renumbered."""
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.device)
        return DeviceDataset(self.x[idx], self.y[idx], self.index[idx])

    def all_float(self) -> torch.Tensor:
        """The whole set as float [0,1] (for small sets: evaluation, probes)."""
        return self.x.float().div_(255.0)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        augment: Augment | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """Yield `Batch`es covering this rank's share of one epoch.

        Order: `torch.randperm(n, generator=generator)` when shuffling (generator None means
        the global CPU RNG), else 0..n-1. DDP sharding: with `world_size > 1` the order is
        truncated to a multiple of world_size and rank r takes positions r::world_size, so
        shards are disjoint, equally long (same number of steps on every rank) and together
        cover all but the last n % world_size samples. Augmentation draws from the same
        generator, after the permutation.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} for world_size {world_size}")
        _check_cpu_generator(generator)
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if world_size > 1:
            order = order[: n - n % world_size][rank::world_size]
        order = order.to(self.device)
        m = len(order)
        stop = m - m % batch_size if drop_last else m
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            x = self.x[idx].float().div_(255.0)
            if augment is not None:
                x = augment(x, generator)
            yield Batch(x, self.y[idx], self.index[idx])


@dataclass
class DataBundle:
    """Everything the trainer and the models need to know about the data."""

    train: DeviceDataset
    val: DeviceDataset | None
    test: DeviceDataset
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment
    info: dict = field(default_factory=dict)
    # Clean labels and corruption masks of the training set (None when nothing is corrupted).
    corruption: Corruption | None = None


def resolve_augment(cfg: DataConfig) -> str:
    """"default" means the dataset's default_augment: crop_flip for CIFAR (the standard recipe), none elsewhere."""
    if cfg.augment != "default":
        return cfg.augment
    return DATASETS.get(cfg.dataset).default_augment


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std in [0,1] of uint8 NHWC images.

    Uses a 256-bin histogram per channel, so no float copy of the dataset is made.
    """
    means, stds = [], []
    v = np.arange(256, dtype=np.float64) / 255.0
    for ch in range(images.shape[-1]):
        counts = np.bincount(images[..., ch].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mu = float((counts * v).sum() / total)
        var = float((counts * (v - mu) ** 2).sum() / total)
        means.append(mu)
        stds.append(var ** 0.5)
    return tuple(means), tuple(stds)


def split_indices(
    n_train_raw: int, n_test_raw: int, cfg: DataConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) row indices into the raw splits, each sorted in stored order.

    Three independent numpy streams derived from split_seed: one permutation of the raw train
    set whose first val_size rows are the validation set (so val depends only on split_seed
    and val_size, never on train_size); one permutation of the remainder whose first
    train_size rows are the train subset; one permutation of the test set whose first
    test_size rows are the test subset. Subsets are prefixes, hence nested across sizes.
    """
    need = cfg.val_size + (cfg.train_size or 1)
    if need > n_train_raw:
        if cfg.train_size is None:
            raise UserError(
                f"val_size {cfg.val_size} leaves no training images ({cfg.dataset} has "
                f"{n_train_raw}); set data.val_size to at most {n_train_raw - 1}"
            )
        raise UserError(
            f"val_size {cfg.val_size} + train_size {cfg.train_size} = {need} exceeds the "
            f"{n_train_raw} training images of {cfg.dataset}; make their sum at most {n_train_raw}"
        )
    if cfg.test_size is not None and cfg.test_size > n_test_raw:
        raise UserError(
            f"test_size {cfg.test_size} exceeds the {n_test_raw} test images of {cfg.dataset}; "
            f"set data.test_size to at most {n_test_raw} (or null for all)"
        )
    ss = np.random.SeedSequence(cfg.split_seed)
    val_rng, train_rng, test_rng = (np.random.default_rng(s) for s in ss.spawn(3))
    perm = val_rng.permutation(n_train_raw)
    val_idx = np.sort(perm[: cfg.val_size])
    rest = np.sort(perm[cfg.val_size :])
    if cfg.train_size is not None:
        rest = np.sort(rest[train_rng.permutation(len(rest))[: cfg.train_size]])
    test_idx = np.arange(n_test_raw)
    if cfg.test_size is not None:
        test_idx = np.sort(test_rng.permutation(n_test_raw)[: cfg.test_size])
    return rest, val_idx, test_idx


def _to_device(split: RawSplit, rows: np.ndarray, device) -> DeviceDataset:
    x = torch.from_numpy(np.ascontiguousarray(split.images[rows].transpose(0, 3, 1, 2)))
    y = torch.from_numpy(split.labels[rows].astype(np.int64))
    return DeviceDataset(x, y, torch.arange(len(rows))).to(device)


def build_data(cfg: DataConfig, device: torch.device | str = "cpu", seed: int | None = None) -> DataBundle:
    """Read, split and subset the dataset, and put it on `device` as uint8 NCHW.

    `seed` (the training seed) is accepted for the architecture's call signature and recorded
    in `info`, but does not affect the data: splits use `cfg.split_seed` so runs with
    different training seeds see identical train/val/test sets. Every split's `index` is
    0..N-1 in stored order, so per-sample buffers of that split are addressed by it.
    """
    train_raw, test_raw, source = read_raw(cfg)
    tr, va, te = split_indices(len(train_raw.labels), len(test_raw.labels), cfg)
    mean, std = channel_stats(train_raw.images[tr])
    num_classes = dataset_num_classes(cfg)
    # Corruption touches the training set as used only; mean/std stay those of the clean images.
    images, corruption = corrupt_training_set(train_raw.images[tr], train_raw.labels[tr], num_classes,
                                              cfg.label_noise, cfg.input_corruption, mean, std)
    if corruption is None:
        train = _to_device(train_raw, tr, device)
    else:
        train = _to_device(RawSplit(images, corruption.labels), np.arange(len(tr)), device)
    val = _to_device(train_raw, va, device) if len(va) else None
    test = _to_device(test_raw, te, device)
    _, h, w, c = train_raw.images.shape
    aug = Augment(resolve_augment(cfg), cfg.crop_padding)
    info = {
        "dataset": cfg.dataset,
        "source": source,
        "sizes": {
            "train": len(tr),
            "val": len(va),
            "test": len(te),
            "train_available": int(len(train_raw.labels)),
            "test_available": int(len(test_raw.labels)),
        },
        "split_seed": cfg.split_seed,
        "train_seed": seed,
        "augment": aug.kind,
        "crop_padding": cfg.crop_padding,
        "num_classes": num_classes,
        "image_shape": [c, h, w],
    }
    if corruption is not None:
        info["corruption"] = corruption.info()
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        in_channels=c,
        image_size=(h, w),
        mean=mean,
        std=std,
        augment=aug,
        info=info,
        corruption=corruption,
    )
