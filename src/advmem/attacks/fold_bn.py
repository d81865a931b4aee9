"""BatchNorm folded into the preceding convolution for eval-mode attack passes.

An attack in eval mode runs K forward and backward passes through weights that do not change
during the attack, so conv -> BatchNorm (running statistics) is one affine map: a convolution
with weight w * s and bias (b - mean) * s + beta, s = gamma / sqrt(var + eps). Folding it once
per attack removes the BatchNorm forward and backward from every attack step (on a CPU the
eval-mode BatchNorm backward costs more than the train-mode one). The result equals the
unfolded model up to floating-point rounding (tests/test_optimizations.py).

`folded_view(model)` traces the model with torch.fx once (cached per model) and swaps every
Conv2d whose only user is a BatchNorm2d with running statistics for a module that holds both
and convolves with the folded weights; the view shares the model's parameters and buffers.
Pre-activation blocks (BN -> ReLU -> conv) fold only their inner conv1 -> bn2 pair. Models that
cannot be traced, or have no such pair, get None and the attack uses the model as it is.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
from torch import nn

_ENABLED: ContextVar[bool] = ContextVar("advmem_attack_fold_bn", default=False)
# model -> (fingerprint, view or None); the fingerprint catches replaced modules and tensors
# (load_state_dict(assign=True), .to(device), swapped layers) and added hooks, after which the
# model is traced again
_VIEWS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, FoldedView | None]]" = weakref.WeakKeyDictionary()


@contextmanager
def attack_fold_bn(enabled: bool = True) -> Iterator[None]:
    """Let every eval-mode `pgd` call inside the block attack the BN-folded view of its model."""
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


class FoldedConvBN(nn.Module):
    """conv followed by bn (eval mode), as one convolution with weights refreshed by `refresh()`."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    @torch.no_grad()
    def refresh(self) -> None:
        conv, bn = self.conv, self.bn
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        self.weight = conv.weight * scale.to(conv.weight.dtype).view(-1, 1, 1, 1)
        self.bias = shift.to(conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv._conv_forward(x, self.weight, self.bias)


class FoldedView(nn.Module):
    """The traced model with conv -> BN pairs folded; call `refresh()` whenever the weights changed."""

    def __init__(self, graph_module: nn.Module, folded: list[FoldedConvBN]) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.folded = folded  # plain list: the modules are registered in graph_module

    def refresh(self) -> "FoldedView":
        for f in self.folded:
            f.refresh()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x)


def _build(model: nn.Module) -> FoldedView | None:
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # untraceable models (data-dependent control flow, compiled or DDP wrappers) stay as they are
        return None
    modules = dict(gm.named_modules())
    folded: list[FoldedConvBN] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        bn = modules[node.target]
        src = node.args[0] if node.args else None
        if (len(node.args) != 1 or node.kwargs or not isinstance(src, fx.Node) or src.op != "call_module"
                or type(modules.get(src.target)) is not nn.Conv2d or len(src.users) != 1
                or not bn.track_running_stats or bn.running_var is None
                or _has_hooks(bn) or _has_hooks(modules[src.target])):
            continue
        name = f"advmem_folded_{len(folded)}"
        unit = FoldedConvBN(modules[src.target], bn)
        gm.add_submodule(name, unit)
        src.target = name
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded.append(unit)
    if not folded:
        return None
    gm.graph.lint()
    gm.recompile()
    return FoldedView(gm, folded)


def _has_hooks(module: nn.Module) -> bool:
    """Hooks (e.g. the old weight_norm / spectral_norm) would not run inside the folded unit."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _fingerprint(model: nn.Module) -> tuple:
    return (tuple((id(m), len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()),
            tuple((id(t), t.data_ptr()) for t in (*model.parameters(), *model.buffers())))


def folded_view(model: nn.Module) -> FoldedView | None:
    """The cached BN-folded view of `model` with weights refreshed now, or None if nothing folds.
    The view is rebuilt when the model's modules or tensors were replaced since it was traced."""
    key = _fingerprint(model)
    cached = _VIEWS.get(model)
    if cached is None or cached[0] != key:
        cached = _VIEWS[model] = (key, _build(model))
    view = cached[1]
    return None if view is None else view.refresh()


def attack_model(model: nn.Module, bn_mode: str = "eval") -> nn.Module:
    """What an attack-side forward in `bn_mode` should call: the folded view inside
    `attack_fold_bn()` in eval mode (when something folds), else `model` itself."""
    if bn_mode == "eval" and _ENABLED.get():
        return folded_view(model) or model
    return model
