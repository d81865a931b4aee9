"""What a dataset reader is (`DatasetReader`) and what it returns (`RawSplit`), apart from the
readers themselves (data/sources.py): the recipe's data section checks a user's "module:attr"
dataset against this class without importing the built-in readers and numpy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

if TYPE_CHECKING:  # annotations only: data/config.py imports this module
    import numpy as np

    from advmem.data.config import DataConfig


class RawSplit(NamedTuple):
    """One split in memory: images uint8 numpy arrays (N, H, W, C), labels int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray


class DatasetReader:
    """One dataset: its class count, its reader, and where its files are (registered in DATASETS)."""

    num_classes: ClassVar[int | None] = None  # None: the config gives it (synthetic)
    default_augment: ClassVar[str] = "none"  # what `data.augment: default` means for it

    def read(self, cfg: DataConfig) -> tuple[RawSplit, RawSplit, str]:
        raise NotImplementedError

    def files_present(self, cfg: DataConfig) -> bool:
        """Whether `data.download: true` can skip the download (always, for data made in memory)."""
        return True

    def download(self, tvd: Any, root: str) -> None:
        """Fetch the files into `root` with torchvision's dataset module `tvd`."""

    def find(self, data_root: str | None) -> dict:
        """Where the files are, for `advmem info`: found, path, searched (may raise; the caller reports it)."""
        raise NotImplementedError
