"""The network as a list of linear operators, with BatchNorm folded where that is exact.

Norm-based measures are defined on the weight matrices of a network whose BatchNorm layers
have been folded into the preceding convolution or linear layer (eval-mode BN is an affine
map per channel: W' = diag(gamma / sqrt(var + eps)) W, b' = ...), as in Jiang et al. 2019 and
nitarshan/robust-generalization-measures. Folding is exact only when the BN reads the output
of one conv/linear that nothing else reads. We find those pairs on the traced graph
(torch.fx), not by module order, so pre-activation blocks are handled correctly: there a BN
reads a residual sum (or a tensor also feeding a shortcut) and cannot be folded. Such a BN is
kept as a linear layer of its own, the diagonal matrix diag(gamma / sqrt(var + eps)), which
is what it is as a map in eval mode (its shift is a bias, which norm measures ignore).

A convolution enters as its kernel reshaped to (out, in * kh * kw). Its spectral norm is then
the standard approximation used by Jiang et al. 2019 and nitarshan's code (after Yoshida &
Miyato 2017), not the exact operator norm of the convolution (Sedghi et al. 2019).

The measures are taken of the learned network `model.net`: the fixed input standardisation
(`Normalize`, the first layer of every advmem model) is data preprocessing, as in the
reference code where inputs are normalised by the data pipeline.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Layer:
    """One linear operator: `matrix` is (out, in) for linear, (out, in*k*k) for conv, diagonal for a kept BN."""

    name: str
    kind: str  # "linear", "conv" or "batchnorm"
    matrix: torch.Tensor
    folded_bn: str | None = None


@dataclass
class FoldedNet:
    net: nn.Module
    layers: list[Layer]
    folded: list[tuple[str, str]]  # (layer, bn folded into it)
    kept_bn: list[str]  # BNs that could not be folded (kept as diagonal layers)
    traced: bool


def learned_net(model: nn.Module) -> nn.Module:
    """`model.net` for advmem classifiers (skipping the fixed Normalize), else the model itself."""
    return getattr(model, "net", model)


def bn_scale(bn: nn.Module) -> torch.Tensor:
    scale = 1.0 / torch.sqrt(bn.running_var + bn.eps)
    return scale * bn.weight if bn.weight is not None else scale


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    *parents, leaf = target.split(".")
    owner = root
    for part in parents:
        owner = getattr(owner, part)
    setattr(owner, leaf, module)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> FoldedNet:
    """A copy of the learned network with every foldable BN folded, and its linear operators in order."""
    net = copy.deepcopy(learned_net(model)).eval()
    try:
        gm = fx.symbolic_trace(net)
    except Exception:  # data-dependent control flow: no folding, every BN kept as a diagonal layer
        return _untraced(net)
    modules = dict(gm.named_modules())
    folded: list[tuple[str, str]] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), BN_TYPES):
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer, bn = modules[prev.target], modules[node.target]
        if sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == prev.target) != 1:
            continue  # a module called twice cannot absorb one BN
        if isinstance(layer, CONV_TYPES) and layer.weight.dim() - 2 == _spatial_dims(bn):
            fused = fuse_conv_bn_eval(layer, bn)
        elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer, bn)
        else:
            continue
        _set_submodule(gm, prev.target, fused)
        modules[prev.target] = fused
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded.append((prev.target, node.target))
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    modules = dict(gm.named_modules())
    layers, kept = [], []
    bn_of = dict(folded)
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = modules[node.target]
        layer = _as_layer(node.target, module, bn_of.get(node.target))
        if layer is not None:
            layers.append(layer)
            if layer.kind == "batchnorm":
                kept.append(node.target)
    return FoldedNet(gm.eval(), layers, folded, kept, traced=True)


def _as_layer(name: str, module: nn.Module, folded_bn: str | None) -> Layer | None:
    if isinstance(module, nn.Linear):
        return Layer(name, "linear", module.weight.detach().double(), folded_bn)
    if isinstance(module, CONV_TYPES):
        w = module.weight.detach().double()
        return Layer(name, "conv", w.reshape(w.shape[0], -1), folded_bn)
    if isinstance(module, BN_TYPES):
        return Layer(name, "batchnorm", torch.diag(bn_scale(module).detach().double()))
    return None


def _spatial_dims(bn: nn.Module) -> int:
    return next(d for cls, d in ((nn.BatchNorm1d, 1), (nn.BatchNorm2d, 2), (nn.BatchNorm3d, 3)) if isinstance(bn, cls))


def _untraced(net: nn.Module) -> FoldedNet:
    layers = [layer for name, m in net.named_modules() if (layer := _as_layer(name, m, None)) is not None]
    kept = [layer.name for layer in layers if layer.kind == "batchnorm"]
    return FoldedNet(net, layers, [], kept, traced=False)
