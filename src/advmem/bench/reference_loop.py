"""A reference-style PGD-AT loop: the structure common to the published paper code.

The epoch speedup (`python -m advmem.bench epoch`) is measured against this loop. It copies
the *structure* of locuslab/robust_overfitting `train_cifar.py` (Rice et al.), which the
memorization paper's code builds on, and of yaodongyu/TRADES:

1. a `torch.utils.data.DataLoader` over a `Dataset` whose `__getitem__` builds a PIL image
   per sample and applies per-sample transforms (optional PIL random crop with zero padding
   and horizontal flip, then the ToTensor conversion), collated into a batch and copied to
   the device;
2. the attack calls `loss.backward()` on the model with its parameters requiring gradients,
   so every attack step also computes weight gradients that are thrown away (3F per step
   instead of 2F); Rice's restart-selection forward after the last step is kept (+1F);
3. after the optimizer step, an extra clean forward pass in train mode with autograd on, for
   logging only (+1F; as in Rice's code it also updates the BatchNorm running statistics);
4. `.item()` host synchronizations on every step to accumulate the logged statistics.

Deliberate differences from the published code, so the comparison is numerics-matched
(same math, only the structure differs): the attack runs in eval mode (the toolkit's default
`attack.bn_mode`; Rice attacks in train mode), and its update and projection use the toolkit's
arithmetic (`delta = (x + delta).clamp(0, 1) - x`), so with the same random start it returns
bit-for-bit the toolkit's `pgd` result (tests/test_optimizations.py checks this). Inputs are
[0,1] images and the model normalizes inside, as in the toolkit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn


def to_tensor(img: Image.Image) -> torch.Tensor:
    """torchvision's ToTensor for uint8 PIL images: HWC uint8 -> CHW float in [0,1]."""
    arr = np.array(img, dtype=np.uint8, copy=True)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().float().div(255)


def pil_crop(img: Image.Image, oy: int, ox: int, padding: int) -> Image.Image:
    """Zero-pad by `padding` and crop the original size at offset (oy, ox), like RandomCrop."""
    w, h = img.size
    padded = ImageOps.expand(img, border=padding, fill=0)
    return padded.crop((ox, oy, ox + w, oy + h))


class PILDataset(torch.utils.data.Dataset):
    """uint8 NHWC images held as numpy; a PIL image is made per `__getitem__` (as torchvision's
    CIFAR10 / FashionMNIST datasets do), then transformed per sample."""

    def __init__(self, images_nhwc: np.ndarray, labels: np.ndarray, *, crop_padding: int = 0, flip: bool = False,
                 seed: int = 0):
        self.images = images_nhwc
        self.labels = labels
        self.crop_padding = crop_padding
        self.flip = flip
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        arr = self.images[i]
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        if self.crop_padding:
            oy, ox = self.rng.integers(0, 2 * self.crop_padding + 1, size=2)
            img = pil_crop(img, int(oy), int(ox), self.crop_padding)
        if self.flip and self.rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img), int(self.labels[i])


def loader_from_device_dataset(dataset, batch_size: int, *, crop_padding: int = 0, flip: bool = False,
                               num_workers: int = 0, seed: int = 0) -> torch.utils.data.DataLoader:
    """A shuffling DataLoader over the same images as an advmem `DeviceDataset`."""
    images = dataset.x.permute(0, 2, 3, 1).cpu().numpy()
    labels = dataset.y.cpu().numpy()
    ds = PILDataset(images, labels, crop_padding=crop_padding, flip=flip, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                       generator=g, pin_memory=False)


def attack_pgd_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
                         steps: int, delta0: torch.Tensor | None = None) -> torch.Tensor:
    """Rice-style Linf PGD: full `loss.backward()` each step (weight gradients computed and
    accumulated into `.grad`, to be zeroed by the caller), then a restart-selection forward.
    Returns x_adv."""
    was_training = model.training
    model.eval()
    x = x.detach()
    delta = torch.empty_like(x).uniform_(-eps, eps) if delta0 is None else delta0.detach().clone()
    delta = (x + delta).clamp(0, 1) - x
    delta.requires_grad_(True)
    for _ in range(steps):
        output = model(x + delta)
        loss = F.cross_entropy(output.float(), y, reduction="none").sum()
        loss.backward()
        grad = delta.grad.detach()
        with torch.no_grad():
            d = (delta + alpha * grad.sign()).clamp(-eps, eps)
            d = (x + d).clamp(0, 1) - x
        delta.data = d
        delta.grad.zero_()
    with torch.no_grad():  # restart selection (one restart here, so the choice is trivial but paid for)
        all_loss = F.cross_entropy(model(x + delta), y, reduction="none")
        max_delta = torch.zeros_like(x)
        max_loss = torch.zeros_like(all_loss)
        pick = all_loss >= max_loss
        max_delta[pick] = delta.detach()[pick]
    model.train(was_training)
    return (x + max_delta).detach()


def reference_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                   alpha: float, steps: int, stats: dict[str, float]) -> None:
    """One reference-style PGD-AT step, with the per-step `.item()` syncs."""
    x_adv = attack_pgd_reference(model, x, y, eps=eps, alpha=alpha, steps=steps)
    model.train()
    robust_output = model(x_adv)
    robust_loss = F.cross_entropy(robust_output, y)
    opt.zero_grad()
    robust_loss.backward()
    opt.step()
    output = model(x)  # extra clean forward for logging (train mode, autograd on)
    loss = F.cross_entropy(output, y)
    n = y.size(0)
    stats["robust_loss"] += robust_loss.item() * n
    stats["robust_acc"] += (robust_output.max(1)[1] == y).sum().item()
    stats["loss"] += loss.item() * n
    stats["acc"] += (output.max(1)[1] == y).sum().item()
    stats["n"] += n


def reference_epoch(model: nn.Module, opt: torch.optim.Optimizer, loader, device: torch.device, *, eps: float,
                    alpha: float, steps: int) -> dict[str, float]:
    """One reference-style PGD-AT epoch over `loader`; returns the logged means."""
    stats = {"robust_loss": 0.0, "robust_acc": 0.0, "loss": 0.0, "acc": 0.0, "n": 0}
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        reference_step(model, opt, x, y, eps=eps, alpha=alpha, steps=steps, stats=stats)
    n = max(stats.pop("n"), 1)
    return {k: v / n for k, v in stats.items()}
