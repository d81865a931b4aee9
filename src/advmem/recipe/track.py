"""The `track:` section of a recipe: what the trainer records per training sample (advmem.track does it)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from advmem.strict import StrictNumbers


class PerSampleConfig(StrictNumbers):
    """Per-sample memorization tracking (track/per_sample.py).

    every: track epochs that are multiples of `every` (and the last epoch);
    subset: "all" training samples, or K of them chosen with a seeded permutation;
    batch_size: evaluation batch size (None = eval.batch_size).
    """

    model_config = ConfigDict(extra="forbid")
    every: int = Field(1, ge=1)
    subset: Literal["all"] | int = "all"
    batch_size: int | None = Field(None, ge=1)

    @field_validator("subset", mode="before")
    @classmethod
    def _check_subset(cls, value):
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("must be 'all' or a positive number of samples")


class GradConsistencyConfig(StrictNumbers):
    """The per-epoch gradient-consistency signal (track/grad_consistency.py): every `every` epochs
    (and the last), on `batch_size` training samples chosen with `seed`."""

    model_config = ConfigDict(extra="forbid")
    every: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


class TrackConfig(StrictNumbers):
    model_config = ConfigDict(extra="forbid")
    # None = no per-sample tracking.
    per_sample: PerSampleConfig | None = None
    # None = off; {} = on with the defaults.
    grad_consistency: GradConsistencyConfig | None = None
