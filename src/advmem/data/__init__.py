"""Datasets as device-resident uint8 tensors, batched augmentation, and `build_data`.

See docs/architecture.md, "Data interface". The torch-backed names are imported on first use,
so reading a recipe (advmem.data.config) and building the CLI's parser do not import torch.
"""

from advmem.data.config import DataConfig, SyntheticConfig

_LAZY = {
    "Augment": "advmem.data.dataset",
    "Batch": "advmem.data.dataset",
    "DataBundle": "advmem.data.dataset",
    "DeviceDataset": "advmem.data.dataset",
    "build_data": "advmem.data.dataset",
    "RawSplit": "advmem.data.sources",
    "find_dataset_files": "advmem.data.sources",
    "read_raw": "advmem.data.sources",
}

__all__ = ["DataConfig", "SyntheticConfig", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'advmem.data' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
