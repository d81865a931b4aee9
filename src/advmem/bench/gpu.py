"""GPU figures: PreActResNet-18 PGD-10 epoch time, images/s and model-FLOP utilisation.

MFU = 23 forward-equivalents x 1.11 GFLOP per image (the lean PGD-10 step: 2F per attack step
+ 3F for the update) x images/s / the device's dense bf16 peak. Data: real CIFAR-10 when
`--data-root` holds it (torchvision's `cifar-10-batches-py`), else synthetic data of the same
shape (3x32x32, 10 classes, crop+flip).
Untested where this was written (no GPU on that machine).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from advmem.bench.common import Goal, Section, Settings, fresh_sums, make_trainer, sync

FLOPS_PER_FORWARD = 1.11e9  # PreActResNet-18 on 32x32 (docs: 0.5554 GMACs)
FORWARDS_PER_IMAGE = 23  # PGD-10, lean
# Dense bf16 tensor-core peaks, TFLOPS (performance.md section 3.2); matched on the device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "RTX 4090": 165.0}

NOT_MEASURED = "GPU: not measured — no GPU on the machine that generated this file."


def device_peak(settings: Settings) -> tuple[float | None, str]:
    if settings.peak_tflops:
        return settings.peak_tflops * 1e12, f"{settings.peak_tflops:g} TFLOPS (from --peak-tflops)"
    name = torch.cuda.get_device_name(settings.device)
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12, f"{tflops:g} TFLOPS (dense bf16, table entry '{key}')"
    return None, f"unknown for '{name}' (pass --peak-tflops)"


def mfu(images_per_s: float, peak: float | None) -> float | None:
    """Model-FLOP utilisation of a lean PGD-10 epoch (FLOP model above); None without a peak."""
    return FORWARDS_PER_IMAGE * FLOPS_PER_FORWARD * images_per_s / peak if peak else None


def cifar_data(settings: Settings, n: int, test_size: int = 64) -> tuple[dict, str]:
    """(data section, description): CIFAR-10 when --data-root holds it, else synthetic data of its shape."""
    if settings.data_root and (Path(settings.data_root).expanduser() / "cifar-10-batches-py" / "data_batch_1").is_file():
        data = {"dataset": "cifar10", "data_root": settings.data_root, "test_size": test_size}
        if n < 50_000:
            data["train_size"] = n
        return data, f"CIFAR-10 from {settings.data_root}"
    return ({"dataset": "synthetic", "augment": "crop_flip",
             "synthetic": {"n_train": n, "n_test": test_size, "channels": 3, "image_size": 32}},
            "synthetic CIFAR-10-shaped data")


def pgd_recipe(data: dict, perf: dict, batch: int = 128, model: dict | None = None, steps: int = 10) -> dict:
    """PGD-AT (eps 8/255, step 2/255) of PreActResNet-18 unless `model` says otherwise, one epoch."""
    return {"data": data, "model": model or {"name": "preact_resnet18"},
            "method": {"name": "pgd_at"}, "attack": {"steps": steps},
            "optim": {"batch_size": batch, "epochs": 1, "schedule": {"name": "constant"}},
            "eval": {"train_subset": 0}, "perf": perf}


def warm_up(trainer, batch_size: int) -> None:
    """Steps on a full batch and on the epoch's ragged last one, so no compilation is timed."""
    batches = list(trainer.bundle.train.batches(batch_size, shuffle=False))
    for warm in (batches[0], batches[0], batches[0], batches[-1]):
        trainer.train_step(warm, 1, 1, fresh_sums(trainer.device))


def timed_epoch(trainer) -> float:
    """Seconds of one `train_epoch`, the device synchronized around it."""
    sync(trainer.device)
    t0 = time.perf_counter()
    trainer.train_epoch(1)
    sync(trainer.device)
    return time.perf_counter() - t0


def run(settings: Settings) -> Section:
    section = Section("GPU: PreActResNet-18 PGD-10 epoch")
    if not settings.cuda:
        why = NOT_MEASURED if not torch.cuda.is_available() else \
            "GPU: not measured — this run used --device cpu although a GPU is present."
        section.add(why)
        return section
    n = settings.pick(50_000, 10_000, 512)
    data, source = cifar_data(settings, n)
    rows = []
    for label, perf in (("defaults (bf16, channels_last)", {}),
                        ("defaults + compile", {"compile": True})):
        try:
            trainer = make_trainer(pgd_recipe(data, perf), settings)
            warm_up(trainer, 128)
            seconds = timed_epoch(trainer)
        except Exception as err:
            rows.append((label, None, f"failed: {type(err).__name__}: {err}"))
            continue
        ips = len(trainer.bundle.train) / seconds
        rows.append((label, (seconds, ips), trainer.perf.as_dict()))
    peak, peak_text = device_peak(settings)
    section.add(f"Device: {torch.cuda.get_device_name(settings.device)}; {source}, {n} images per epoch, batch 128; "
                f"peak {peak_text}.", "")
    section.add("| variant | epoch s | images/s | s per 50k images | MFU |", "|---|---|---|---|---|")
    for label, result, info in rows:
        if result is None:
            section.add(f"| {label} | {info} | | | |")
            continue
        seconds, ips = result
        u = mfu(ips, peak)
        section.add(f"| {label} | {seconds:.2f} | {ips:.0f} | {50_000 / ips:.1f} | "
                    + (f"{100 * u:.1f}% |" if u is not None else "- |"))
        section.goals.append(Goal(f"PRN-18 PGD-10 s per 50k-image epoch, {label}", f"{50_000 / ips:.1f}",
                                  "<= 10 s on an H100 (bf16)", 50_000 / ips <= 10))
    return section
