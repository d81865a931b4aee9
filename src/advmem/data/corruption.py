"""Corruption of the training set: label noise and the input corruptions of Zhang et al. 2017.

Applied by `build_data` to the training set as used (after the validation split and the train
subset are taken), so validation and test data stay clean. Every draw comes from a numpy
`Generator` seeded by the corruption's own seed, on the host, so the same seed gives the same
corruption on any machine and independently of the training seed and the split.

Which samples are "corrupted": a sample counts as label-corrupted when its label was *redrawn*
(the paper's code semantics), even if a symmetric redraw landed on the true class; the
`label_changed` mask says which labels actually differ. Draws are made for every sample
whatever the rate, so with one seed the corrupted set at a lower rate is a subset of the one
at a higher rate and shares its new labels (nested noise levels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from advmem.data.config import InputCorruptionConfig, LabelNoiseConfig
from advmem.io import atomic_write

CORRUPTION_FILE = "corruption.npz"


@dataclass
class Corruption:
    """What was done to the training set, indexed by the training set's `index` (0..N-1)."""

    labels: np.ndarray          # int64, the labels trained on
    true_labels: np.ndarray     # int64, the clean labels
    label_mask: np.ndarray      # bool, label redrawn / flipped
    input_mask: np.ndarray      # bool, image replaced or permuted
    label_kind: str = "none"
    label_rate: float = 0.0
    input_kind: str = "none"
    input_rate: float = 0.0

    @property
    def mask(self) -> np.ndarray:
        """A sample is corrupted if its label or its image was."""
        return self.label_mask | self.input_mask

    @property
    def label_changed(self) -> np.ndarray:
        return self.labels != self.true_labels

    def info(self) -> dict:
        n = max(len(self.labels), 1)
        return {
            "label_noise": {"kind": self.label_kind, "rate": self.label_rate,
                            "redrawn": int(self.label_mask.sum()), "changed": int(self.label_changed.sum())},
            "input_corruption": {"kind": self.input_kind, "rate": self.input_rate,
                                 "corrupted": int(self.input_mask.sum())},
            "corrupted_fraction": float(self.mask.sum() / n),
        }

    def save(self, path: str | Path) -> None:
        """labels, true_labels, label_mask, input_mask, mask (npz, written atomically)."""
        arrays = {"labels": self.labels, "true_labels": self.true_labels, "label_mask": self.label_mask,
                  "input_mask": self.input_mask, "mask": self.mask,
                  "label_kind": np.array(self.label_kind), "input_kind": np.array(self.input_kind),
                  "label_rate": np.array(self.label_rate), "input_rate": np.array(self.input_rate)}
        atomic_write(path, lambda fh: np.savez(fh, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> "Corruption":
        with np.load(path) as z:
            return cls(labels=z["labels"], true_labels=z["true_labels"], label_mask=z["label_mask"],
                       input_mask=z["input_mask"], label_kind=str(z["label_kind"]),
                       label_rate=float(z["label_rate"]), input_kind=str(z["input_kind"]),
                       input_rate=float(z["input_rate"]))


def corrupt_labels(labels: np.ndarray, num_classes: int, cfg: LabelNoiseConfig) -> tuple[np.ndarray, np.ndarray]:
    """(labels used for training, mask of redrawn/flipped samples). Draw order: mask, new labels."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if cfg.kind == "none" or cfg.rate == 0:
        return labels.copy(), np.zeros(n, dtype=bool)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x1AB]))
    mask = rng.random(n) < cfg.rate
    if cfg.kind == "symmetric":
        candidates = rng.integers(0, num_classes, size=n, dtype=np.int64)
    elif cfg.kind == "pairflip":
        candidates = (labels + 1) % num_classes
    else:  # pragma: no cover - the config's Literal forbids it
        raise ValueError(f"unknown label noise {cfg.kind!r}")
    return np.where(mask, candidates, labels), mask


def corrupt_inputs(images: np.ndarray, cfg: InputCorruptionConfig, mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(images, mask) for uint8 NHWC images; `mean`/`std` are per-channel in [0,1] (for gaussian).

    Pixels are permuted as whole positions (all channels of a pixel move together).
    Draw order: mask, then the permutation(s) or noise for the chosen images in index order.
    """
    images = np.asarray(images)
    n, h, w, c = images.shape
    if cfg.kind == "none" or cfg.rate == 0:
        return images.copy(), np.zeros(n, dtype=bool)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x1C0]))
    mask = rng.random(n) < cfg.rate
    rows = np.flatnonzero(mask)
    out = images.copy()
    flat = out.reshape(n, h * w, c)
    if cfg.kind == "shuffled_pixels":
        perm = rng.permutation(h * w)
        flat[rows] = flat[rows][:, perm]
    elif cfg.kind == "random_pixels":
        for start in range(0, len(rows), 4096):  # chunks bound the memory of the sort keys
            chunk = rows[start:start + 4096]
            perms = np.argsort(rng.random((len(chunk), h * w)), axis=1)
            flat[chunk] = np.take_along_axis(flat[chunk], perms[:, :, None], axis=1)
    elif cfg.kind == "gaussian":
        mu = np.asarray(mean, dtype=np.float64).reshape(1, 1, 1, c) * 255.0
        sd = np.asarray(std, dtype=np.float64).reshape(1, 1, 1, c) * 255.0
        for start in range(0, len(rows), 4096):
            chunk = rows[start:start + 4096]
            noise = rng.standard_normal((len(chunk), h, w, c)) * sd + mu
            out[chunk] = np.clip(np.rint(noise), 0, 255).astype(np.uint8)
    else:  # pragma: no cover
        raise ValueError(f"unknown input corruption {cfg.kind!r}")
    return out, mask


def corrupt_training_set(images: np.ndarray, labels: np.ndarray, num_classes: int, label_cfg: LabelNoiseConfig,
                         input_cfg: InputCorruptionConfig, mean, std) -> tuple[np.ndarray, Corruption | None]:
    """Apply both corruptions; returns (images, Corruption) or (images, None) when nothing is corrupted."""
    if label_cfg.kind == "none" and input_cfg.kind == "none":
        return images, None
    new_labels, label_mask = corrupt_labels(labels, num_classes, label_cfg)
    new_images, input_mask = corrupt_inputs(images, input_cfg, mean, std)
    return new_images, Corruption(labels=new_labels, true_labels=np.asarray(labels, dtype=np.int64).copy(),
                                  label_mask=label_mask, input_mask=input_mask, label_kind=label_cfg.kind,
                                  label_rate=label_cfg.rate, input_kind=input_cfg.kind, input_rate=input_cfg.rate)
