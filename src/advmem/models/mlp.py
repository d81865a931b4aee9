"""Multi-layer perceptron: a baseline with no spatial prior, for sanity checks and tiny runs."""

from __future__ import annotations

from torch import nn

from advmem.models.registry import MODELS, check_positive


@MODELS.register("mlp")
def mlp(in_channels: int, num_classes: int, image_size: tuple[int, int], *, hidden: tuple[int, ...] = (256, 256)) -> nn.Module:
    """Flatten, then Linear+ReLU per entry of `hidden`, then a Linear head (`hidden=()` is linear)."""
    check_positive("mlp", hidden=hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * image_size[0] * image_size[1]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
