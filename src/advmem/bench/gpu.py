"""GPU figures: PreActResNet-18 PGD-10 epoch time, images/s and model-FLOP utilisation.

MFU = 23 forward-equivalents x 1.11 GFLOP per image (the lean PGD-10 step: 2F per attack step
+ 3F for the update) x images/s / the device's dense bf16 peak. Data: real CIFAR-10 when
`--data-root` holds it, else synthetic data of the same shape (3x32x32, 10 classes, crop+flip).
Untested where this was written (no GPU on that machine).
"""

from __future__ import annotations

import time

import torch

from advmem.bench.common import Goal, Section, Settings, fresh_sums, make_trainer

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


def run(settings: Settings) -> Section:
    section = Section("GPU: PreActResNet-18 PGD-10 epoch")
    if not settings.cuda:
        why = NOT_MEASURED if not torch.cuda.is_available() else \
            "GPU: not measured — this run used --device cpu although a GPU is present."
        section.add(why)
        return section
    n = settings.pick(50_000, 10_000, 512)
    data = {"dataset": "synthetic", "augment": "crop_flip",
            "synthetic": {"n_train": n, "n_test": 64, "channels": 3, "image_size": 32}}
    source = "synthetic CIFAR-10-shaped data"
    if settings.data_root:
        data = {"dataset": "cifar10", "data_root": settings.data_root, "test_size": 64}
        if n < 50_000:
            data["train_size"] = n
        source = f"CIFAR-10 from {settings.data_root}"
    rows = []
    for label, perf in (("defaults (bf16, channels_last)", {}),
                        ("defaults + compile", {"compile": True})):
        try:
            trainer = make_trainer({"data": data, "model": {"name": "preact_resnet18"}, "method": {"name": "pgd_at"},
                                    "attack": {"steps": 10}, "optim": {"batch_size": 128, "epochs": 1},
                                    "eval": {"train_subset": 0}, "perf": perf}, settings)
            # warm-up on a full batch and on the epoch's ragged last one, so no compilation is timed
            batches = list(trainer.bundle.train.batches(128, shuffle=False))
            for warm in (batches[0], batches[0], batches[0], batches[-1]):
                trainer.train_step(warm, 1, 1, fresh_sums(settings.device))
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.train_epoch(1)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
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
        mfu = FORWARDS_PER_IMAGE * FLOPS_PER_FORWARD * ips / peak if peak else None
        section.add(f"| {label} | {seconds:.2f} | {ips:.0f} | {50_000 / ips:.1f} | "
                    + (f"{100 * mfu:.1f}% |" if mfu is not None else "- |"))
        section.goals.append(Goal(f"PRN-18 PGD-10 s per 50k-image epoch, {label}", f"{50_000 / ips:.1f}",
                                  "<= 10 s on an H100 (bf16)", 50_000 / ips <= 10))
    return section
