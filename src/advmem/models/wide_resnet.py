"""Wide ResNet (Zagoruyko & Komodakis 2016), the variant of the TRADES / Madry et al. code.

Pre-activation BN-ReLU blocks; when a block changes width, the pre-activated input feeds both
the residual branch and the 1x1 shortcut. Initialisation follows the TRADES code (kaiming
normal, fan_out, for convs; BN weight 1, bias 0; Linear bias 0), since published robust
accuracies were obtained with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advmem.errors import UserError
from advmem.models.registry import MODELS, check_positive


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes
        self.conv_shortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.conv_shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        if self.conv_shortcut is not None:
            x = pre  # the TRADES code overwrites x with the pre-activation here
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + out


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, in_channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = self._group(channels[0], channels[1], n, 1, dropout)
        self.block2 = self._group(channels[1], channels[2], n, 2, dropout)
        self.block3 = self._group(channels[2], channels[3], n, 2, dropout)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @staticmethod
    def _group(in_planes: int, out_planes: int, n: int, stride: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            *[WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout) for i in range(n)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@MODELS.register(
    "wide_resnet",
    aliases={"wrn_28_10": {"depth": 28, "widen_factor": 10}, "wrn_34_10": {"depth": 34, "widen_factor": 10}},
)
def wide_resnet(
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    *,
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
) -> nn.Module:
    """WRN-depth-widen_factor; depth must be 6n+4 (n blocks per group)."""
    check_positive("wide_resnet", widen_factor=widen_factor)
    if depth < 10 or (depth - 4) % 6 != 0:
        raise UserError(f"model 'wide_resnet': depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...); got {depth}")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"model 'wide_resnet': dropout must be in [0, 1); got {dropout}")
    return WideResNet(depth, widen_factor, in_channels, num_classes, dropout)
