"""The `data:` section of a recipe.

Pydantic v2 with `extra="forbid"` so a misspelt key is an error rather than a silent default;
range checks are `Field` constraints so the recipe layer can format them with the rest of the
validation errors. `DATASETS` lives here so the `dataset` check looks names up without this
module importing the readers: they register themselves in data/sources.py, which the registry
imports on first lookup (it imports numpy, which reading a recipe does not need).
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from advmem.data.reader import DatasetReader
from advmem.errors import UserError
from advmem.plugins import is_object_path
from advmem.registry import Registry
from advmem.strict import StrictNumbers


def _dataset_reader(spec: str, obj: object) -> object:
    """A "module:attr" dataset: the user's DatasetReader subclass (data/sources.py says what it reads)."""
    if not (isinstance(obj, type) and issubclass(obj, DatasetReader)):
        raise UserError(f"{spec}: is not a dataset reader; name a subclass of advmem.data.sources.DatasetReader "
                        "(its read(cfg) returns the train and test RawSplit and a description)")
    return obj


DATASETS = Registry("dataset", load=partial(importlib.import_module, "advmem.data.sources"), adapt=_dataset_reader)

AUGMENT_KINDS = ("default", "none", "crop_flip", "crop", "flip")


class SyntheticConfig(StrictNumbers):
    """Shape and seed of the synthetic dataset (class-dependent mean patterns plus noise)."""

    model_config = ConfigDict(extra="forbid")
    n_train: int = Field(512, gt=0)
    n_test: int = Field(256, gt=0)
    num_classes: int = Field(10, ge=2)
    channels: int = Field(1, gt=0)
    image_size: int = Field(8, gt=0)
    seed: int = 0


class DataConfig(StrictNumbers):
    """Which dataset, where it lives, and how it is split, subset and augmented."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = "fashion-mnist"  # a name registered in DATASETS (data/sources.py), or "module:ReaderClass"
    # Searched first, in torchvision's on-disk layout.
    data_root: str | None = None
    # Opt-in; needs torchvision (used only to fetch the files, which our readers then parse).
    download: bool = False
    # Seeded subset of the train set after the validation split is removed; None = all.
    train_size: int | None = Field(None, gt=0)
    # Fixed seeded held-out validation split taken from the train set.
    val_size: int = Field(0, ge=0)
    # Seeded subset of the test set evaluated during training; None = all.
    test_size: int | None = Field(None, gt=0)
    # "default": crop_flip for cifar10/cifar100, none for the rest.
    augment: Literal["default", "none", "crop_flip", "crop", "flip"] = "default"
    crop_padding: int = Field(4, ge=0)
    # Seeds the validation split and the train/test subsets, independent of the training seed,
    # so runs with different training seeds share the same data.
    split_seed: int = 0
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    # Corruption of the training set only (after the val split and train subset; val/test stay
    # clean). See data/corruption.py.
    label_noise: "LabelNoiseConfig" = Field(default_factory=lambda: LabelNoiseConfig())
    input_corruption: "InputCorruptionConfig" = Field(default_factory=lambda: InputCorruptionConfig())

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if is_object_path(value):
            try:
                DATASETS.get(value)
            except UserError as err:
                raise ValueError(str(err)) from None
        elif value not in DATASETS:
            raise ValueError(f"unknown dataset '{value}'; choose one of: {', '.join(DATASETS)}")
        return value


class LabelNoiseConfig(StrictNumbers):
    """Training-label corruption, drawn from its own seed so the data split and training seed stay fixed.

    symmetric: each label is redrawn uniformly over all C classes with probability `rate`
    (rate 1.0 = completely random labels, as in Zhang et al. 2017 and the paper's code, so about
    1/C of the redrawn labels land on the true class). pairflip: with probability `rate` the
    label y becomes (y + 1) mod C.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["none", "symmetric", "pairflip"] = "none"
    rate: float = Field(0.0, ge=0.0, le=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "LabelNoiseConfig":
        if self.kind == "none" and self.rate > 0:
            raise ValueError(f"rate {self.rate} given with kind 'none'; set kind to symmetric or pairflip, or rate to 0")
        return self


class InputCorruptionConfig(StrictNumbers):
    """Training-image corruption of Zhang et al. 2017 on a fraction `rate` of the training set.

    random_pixels: each chosen image gets its own random permutation of pixel positions;
    shuffled_pixels: one fixed permutation (drawn from `seed`) for all chosen images;
    gaussian: the image is replaced by Gaussian noise with the training data's per-channel
    mean and std (rounded and clipped to 0..255).
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["none", "random_pixels", "shuffled_pixels", "gaussian"] = "none"
    rate: float = Field(0.0, ge=0.0, le=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "InputCorruptionConfig":
        if self.kind == "none" and self.rate > 0:
            raise ValueError(f"rate {self.rate} given with kind 'none'; set kind to random_pixels, "
                             "shuffled_pixels or gaussian, or rate to 0")
        return self


DataConfig.model_rebuild()
