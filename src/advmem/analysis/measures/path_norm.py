"""Path norm (Neyshabur et al. 2015, as computed by Jiang et al. 2019 / nitarshan's code).

The BN-folded network with every weight and bias squared, run on an all-ones input; the sum
of its outputs is sum over input-output paths of the product of squared weights (plus the
bias paths). A BN that could not be folded is an affine map s*x + b per channel and becomes
s^2*x + b^2. ReLUs pass everything (all activations are then non-negative); max-pools and
average pools are kept as they are, which is the usual approximation for such networks.
"""

from __future__ import annotations

import copy

import torch

from advmem.analysis.measures.layers import BN_TYPES, bn_scale
from advmem.analysis.measures.names import MEASURES

MARGIN_NORMALIZED = {"path_norm": "sq"}


@torch.no_grad()
def path_norm(folded_net: torch.nn.Module, input_shape: tuple[int, ...], device) -> float:
    net = copy.deepcopy(folded_net).eval().double()
    for module in net.modules():
        if isinstance(module, BN_TYPES):
            scale = bn_scale(module)
            shift = module.bias - module.running_mean * scale if module.bias is not None else -module.running_mean * scale
            module.running_mean.zero_()
            module.running_var.fill_(1.0 - module.eps)
            if module.weight is None or module.bias is None:
                raise ValueError("path norm needs affine BatchNorm layers")
            module.weight.copy_(scale.pow(2))
            module.bias.copy_(shift.pow(2))
        else:
            for p in module.parameters(recurse=False):
                p.pow_(2)
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    return float(net(x).sum())


@MEASURES.register("path_norm")
def compute(ctx) -> dict[str, float]:
    return {"path_norm": path_norm(ctx.folded.net, tuple(ctx.x.shape[1:]), ctx.x.device)}
