"""A small CNN cheap enough for the CPU demo (28x28 Fashion-MNIST in minutes)."""

from __future__ import annotations

from torch import nn

from advmem.models.registry import MODELS, check_positive, pool_fits


@MODELS.register("small_cnn")
def small_cnn(in_channels: int, num_classes: int, image_size: tuple[int, int], *, width: int = 32, hidden: int = 256) -> nn.Module:
    """Three conv3x3-BN-ReLU blocks (width, 2w, 4w), each followed by a 2x2 max-pool while the
    feature map is still >= 2 pixels, then an adaptive average pool to at most 2x2, Linear(hidden),
    ReLU, Linear(num_classes). The 2x2 grid keeps a little spatial layout for the head while
    making the parameter count independent of the input size beyond that."""
    check_positive("small_cnn", width=width, hidden=hidden)
    layers: list[nn.Module] = []
    c_in, hw = in_channels, image_size
    for c_out in (width, 2 * width, 4 * width):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        if pool_fits(hw):
            layers.append(nn.MaxPool2d(2))
            hw = (hw[0] // 2, hw[1] // 2)
        c_in = c_out
    grid = (min(2, hw[0]), min(2, hw[1]))
    layers += [
        nn.AdaptiveAvgPool2d(grid),
        nn.Flatten(),
        nn.Linear(c_in * grid[0] * grid[1], hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)
