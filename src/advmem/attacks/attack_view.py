"""The attack view: the model rewritten for eval-mode attack passes, equal up to rounding.

Two kinds of rewrite, each switchable (`perf.fold_bn`, `perf.fast_pool`):

**BatchNorm folded into the preceding convolution** (`fold_bn`). An attack in eval mode runs K
forward and backward passes through weights that do not change during the attack, so conv -> BatchNorm (running statistics) is one affine map: a convolution
with weight w * s and bias (b - mean) * s + beta, s = gamma / sqrt(var + eps). Folding it once
per attack removes the BatchNorm forward and backward from every attack step (on a CPU the
eval-mode BatchNorm backward costs more than the train-mode one). The result equals the
unfolded model up to floating-point rounding (tests/test_optimizations.py).

**Max-pooling before its ReLU, through the channels_last kernel on CPU** (`fast_pool`).
ReLU -> max-pool becomes max-pool -> ReLU, so the ReLU and its backward touch a quarter of the
elements. The two orders agree bit for bit, gradient included: max commutes with a monotone
map, a window whose maximum is <= 0 gets no gradient either way, and among positive ties the
same first element wins. And torch's NCHW max-pool kernel on CPU is several times slower than
its NHWC one (128x16x28x28, one thread: 8.6 ms vs 1.8 ms) and the attack runs it K times per
step, so `NHWCMaxPool` converts a contiguous CPU input to NHWC, pools with indices there and
routes the backward through the NCHW backward kernel with those indices (flat spatial
offsets, the same in both layouts): again bit for bit the NCHW result, ties included.

`folded_view(model)` traces the model with torch.fx once (cached per model) and swaps every
Conv2d whose only user is a BatchNorm2d with running statistics for a module that holds both
and convolves with the folded weights; the view shares the model's parameters and buffers.
Pre-activation blocks (BN -> ReLU -> conv) fold only their inner conv1 -> bn2 pair. With
`fast_pool` it also swaps each MaxPool2d for an `NHWCMaxPool` and moves it before its ReLU. Models that
cannot be traced, or have nothing to rewrite, get None and the attack uses the model as it is.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn.modules.utils import _pair


@dataclass(frozen=True)
class ViewOptions:
    """Which rewrites the attack view applies."""

    fold_bn: bool = True
    fast_pool: bool = False

    def __bool__(self) -> bool:
        return self.fold_bn or self.fast_pool


_OPTIONS: ContextVar[ViewOptions] = ContextVar("advmem_attack_view", default=ViewOptions(False, False))
# model -> (fingerprint, view or None); the fingerprint catches replaced modules and tensors
# (load_state_dict(assign=True), .to(device), swapped layers), added hooks and other options,
# after which the model is traced again
_VIEWS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, FoldedView | None]]" = weakref.WeakKeyDictionary()


@contextmanager
def use_attack_view(fold_bn: bool = True, fast_pool: bool = False) -> Iterator[None]:
    """Let every eval-mode attack pass inside the block run on the attack view of its model."""
    token = _OPTIONS.set(ViewOptions(bool(fold_bn), bool(fast_pool)))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


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


class _MaxPoolNHWC(torch.autograd.Function):
    """max_pool2d computed by the NHWC kernel, backward by the NCHW kernel with the same indices."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):
        out, indices = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), kernel, stride, padding, dilation, ceil_mode)
        ctx.save_for_backward(x, indices)
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        out = out.contiguous()
        if out.stride() != _nchw_strides(out.shape):
            # a 1x1 map counts as contiguous with NHWC strides, and convolutions read those strides
            # as channels_last (another kernel, other rounding): copy it into NCHW strides
            out = torch.empty(out.shape, dtype=out.dtype, device=out.device).copy_(out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, indices = ctx.saved_tensors
        grad = torch.ops.aten.max_pool2d_with_indices_backward(grad_out.contiguous(), x, *ctx.args,
                                                              indices.contiguous())
        return grad, None, None, None, None, None


def _nchw_strides(shape: torch.Size) -> tuple[int, ...]:
    n, c, h, w = shape
    return (c * h * w, h * w, w, 1)


class NHWCMaxPool(nn.Module):
    """`pool` (an nn.MaxPool2d) run through the NHWC kernel when its input is a contiguous CPU
    tensor; otherwise (CUDA, or an input already channels_last) `pool` itself."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool
        self.args = (_pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding), _pair(pool.dilation),
                     bool(pool.ceil_mode))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous() or x.is_contiguous(
                memory_format=torch.channels_last):
            return self.pool(x)
        return _MaxPoolNHWC.apply(x, *self.args)


class FoldedView(nn.Module):
    """The traced model with its rewrites; call `refresh()` whenever the weights changed."""

    def __init__(self, graph_module: nn.Module, folded: list[FoldedConvBN], pools: int = 0, swapped: int = 0) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.folded = folded  # plain list: the modules are registered in graph_module
        self.pools = pools  # how many max-pools run through the NHWC kernel
        self.swapped = swapped  # how many relu -> max-pool pairs now pool first

    def refresh(self) -> "FoldedView":
        for f in self.folded:
            f.refresh()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x)


def _build(model: nn.Module, options: ViewOptions = ViewOptions()) -> FoldedView | None:
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # untraceable models (data-dependent control flow, compiled or DDP wrappers) stay as they are
        return None
    modules = dict(gm.named_modules())
    folded: list[FoldedConvBN] = []
    pools = 0
    for node in list(gm.graph.nodes):
        module = modules.get(node.target) if node.op == "call_module" else None
        if (options.fast_pool and type(module) is nn.MaxPool2d and not module.return_indices
                and not _has_hooks(module)):
            name = f"advmem_pool_{pools}"
            gm.add_submodule(name, NHWCMaxPool(module))
            node.target = name
            pools += 1
            continue
        if not options.fold_bn or not isinstance(module, nn.BatchNorm2d):
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
    swapped = _pool_before_relu(gm, modules) if options.fast_pool else 0
    if not folded and not pools and not swapped:
        return None
    gm.graph.lint()
    gm.recompile()
    return FoldedView(gm, folded, pools, swapped)


_RELU_FUNCTIONS = (torch.relu, torch.nn.functional.relu)


def _pool_before_relu(gm, modules: dict[str, nn.Module]) -> int:
    """Rewrite every relu -> max-pool pair (the relu's only user is the pool) as pool -> relu."""
    import torch.fx as fx

    swapped = 0
    for pool in list(gm.graph.nodes):
        if pool.op != "call_module" or not isinstance(gm.get_submodule(pool.target), (nn.MaxPool2d, NHWCMaxPool)):
            continue
        relu = pool.args[0] if len(pool.args) == 1 and not pool.kwargs else None
        if not isinstance(relu, fx.Node) or len(relu.users) != 1 or len(relu.args) != 1:
            continue
        if relu.op == "call_module":
            is_relu = type(modules.get(relu.target)) is nn.ReLU and not _has_hooks(modules[relu.target])
        else:
            is_relu = relu.op == "call_function" and relu.target in _RELU_FUNCTIONS and set(relu.kwargs) <= {"inplace"}
        if not is_relu:
            continue
        users = list(pool.users)
        pool.args = (relu.args[0],)
        pool.append(relu)  # move the relu right after the pool
        relu.args = (pool,)
        for user in users:
            user.replace_input_with(pool, relu)
        swapped += 1
    return swapped


def _has_hooks(module: nn.Module) -> bool:
    """Hooks (e.g. the old weight_norm / spectral_norm) would not run inside the folded unit."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _fingerprint(model: nn.Module) -> tuple:
    return (tuple((id(m), len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()),
            tuple((id(t), t.data_ptr()) for t in (*model.parameters(), *model.buffers())))


def folded_view(model: nn.Module, options: ViewOptions = ViewOptions()) -> FoldedView | None:
    """The cached attack view of `model` with weights refreshed now, or None if nothing is rewritten.
    The view is rebuilt when the model's modules or tensors were replaced since it was traced."""
    key = (options, _fingerprint(model))
    cached = _VIEWS.get(model)
    if cached is None or cached[0] != key:
        cached = _VIEWS[model] = (key, _build(model, options))
    view = cached[1]
    return None if view is None else view.refresh()


def attack_model(model: nn.Module, bn_mode: str = "eval") -> nn.Module:
    """What an attack-side forward in `bn_mode` should call: the attack view inside
    `use_attack_view()` in eval mode (when something is rewritten), else `model` itself."""
    options = _OPTIONS.get()
    if bn_mode == "eval" and options:
        return folded_view(model, options) or model
    return model
