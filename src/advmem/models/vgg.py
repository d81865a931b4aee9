"""VGG-16 (Simonyan & Zisserman), the CIFAR form of kuangliu/pytorch-cifar.

Max-pools are applied only while the feature map is >= 2 pixels, and the head is an adaptive
average pool + Linear(512, num_classes), so 8x8 and 28x28 inputs work as well as 32x32.
"""

from __future__ import annotations

from torch import nn

from advmem.models.registry import MODELS, pool_fits

VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@MODELS.register("vgg16")
def vgg16(in_channels: int, num_classes: int, image_size: tuple[int, int], *, batch_norm: bool = True) -> nn.Module:
    """VGG-16 features (conv3x3[-BN]-ReLU), then global average pool and a linear head."""
    layers: list[nn.Module] = []
    c_in, hw = in_channels, image_size
    for v in VGG16_CFG:
        if v == "M":
            if pool_fits(hw):
                layers.append(nn.MaxPool2d(2))
                hw = (hw[0] // 2, hw[1] // 2)
            continue
        layers.append(nn.Conv2d(c_in, v, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        c_in = v
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)
