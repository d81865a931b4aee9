"""Datasets as device-resident uint8 tensors, batched augmentation, and `build_data`.

See docs/architecture.md, "Data interface".
"""

from advmem.data.config import DataConfig, SyntheticConfig
from advmem.data.dataset import Augment, Batch, DataBundle, DeviceDataset, build_data
from advmem.data.sources import RawSplit, find_dataset_files, read_raw

__all__ = [
    "Augment",
    "Batch",
    "DataBundle",
    "DataConfig",
    "DeviceDataset",
    "RawSplit",
    "SyntheticConfig",
    "build_data",
    "find_dataset_files",
    "read_raw",
]
