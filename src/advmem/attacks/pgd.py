"""Projected gradient descent (Madry et al.) for Linf and L2, with any objective.

The attack asks autograd for the input gradient only: parameters have `requires_grad` turned
off while it runs, so no weight gradient is computed (and `.grad` of the weights is untouched).
The model runs in eval mode by default (`bn_mode`), and its mode is restored afterwards.

Under fp16 autocast a small input gradient can underflow to zero in the half-precision
backward, silently cancelling that pixel's sign step. `grad_scale` (or the ambient
`attack_grad_scale(...)` context, which the trainer sets for fp16) multiplies the loss before
the backward pass; sign steps and L2-normalized steps are invariant to it, so with a power of
two it changes nothing in fp32 and keeps fp16 gradients representable.

Inside `use_attack_view()` (the trainer's `perf.fold_bn` / `perf.fast_pool`) an eval-mode attack runs
on the model with its conv -> BatchNorm pairs folded and its CPU max-pools computed by the NHWC
kernel (advmem.attacks.attack_view): equal up to rounding, faster.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Literal

import torch
from torch import nn

from advmem.attacks.attack_view import attack_model
from advmem.attacks.objectives import Objective

Norm = Literal["Linf", "L2"]
Start = Literal["uniform", "gaussian", "none"]

_GRAD_SCALE: ContextVar[float] = ContextVar("advmem_attack_grad_scale", default=1.0)


def current_grad_scale() -> float:
    """The attack-loss scale in force (1.0 unless fp16 autocast); AWP's weight gradient uses it too."""
    return _GRAD_SCALE.get()


@contextmanager
def attack_grad_scale(scale: float) -> Iterator[None]:
    """Scale the attack loss by `scale` in every `pgd` call inside the block (fp16 autocast)."""
    token = _GRAD_SCALE.set(float(scale))
    try:
        yield
    finally:
        _GRAD_SCALE.reset(token)


@contextmanager
def attack_mode(model: nn.Module, bn_mode: str = "eval") -> Iterator[None]:
    """Put the model in the attack's mode with weight gradients off; restore both after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.train(bn_mode == "train")
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    factor = (eps / _per_sample_norm(delta)).clamp(max=1.0)
    return delta * factor


def _draw(kind: str, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random numbers from `generator` (on its own device), moved to `like`'s device and dtype."""
    device = generator.device if generator is not None else like.device
    fn = torch.rand if kind == "uniform" else torch.randn
    return fn(shape, generator=generator, device=device).to(like.device, like.dtype)


def random_start(x: torch.Tensor, eps: float, norm: Norm, start: Start, generator: torch.Generator | None) -> torch.Tensor:
    """Initial perturbation: uniform in the ball, 0.001 x Gaussian (TRADES), or none."""
    if start == "none" or eps == 0:
        return torch.zeros_like(x)
    if start == "gaussian":
        return project(0.001 * _draw("normal", tuple(x.shape), x, generator), eps, norm)
    if norm == "Linf":
        return (2 * _draw("uniform", tuple(x.shape), x, generator) - 1) * eps
    direction = _draw("normal", tuple(x.shape), x, generator)
    radius = _draw("uniform", (x.shape[0],), x, generator).view(-1, *([1] * (x.dim() - 1)))
    return direction / _per_sample_norm(direction) * radius * eps


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm = "Linf",
    start: Start = "uniform",
    bn_mode: str = "eval",
    generator: torch.Generator | None = None,
    grad_scale: float | None = None,
    on_logits: Callable[[torch.Tensor], None] | None = None,
    clamp_start: bool = True,
) -> torch.Tensor:
    """Return x_adv in the eps-ball around x and in [0,1] that ascends `objective`.

    `clamp_start=False` takes the first gradient at x + start, unclamped, as the TRADES and TE
    code of Dong et al. does (`attack.start_clamp`); the result is in [0,1] after the first step.

    `on_logits` sees the (detached) logits of every iterate, which evaluation uses to count a
    point as broken if any iterate misclassifies it. A model whose output has no gradient path
    to its input (gradient masking) gets a zero gradient rather than an autograd error."""
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    scale = _GRAD_SCALE.get() if grad_scale is None else float(grad_scale)
    with attack_mode(model, bn_mode):
        forward = attack_model(model, bn_mode)
        delta = random_start(x, eps, norm, start, generator)
        if clamp_start:
            delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = forward(x + delta)
            if on_logits is not None:
                on_logits(logits.detach())
            loss = objective(logits).sum()
            if scale != 1.0:
                loss = loss * scale
            grad = torch.autograd.grad(loss, delta)[0] if loss.requires_grad else torch.zeros_like(delta)
            if scale != 1.0:  # fp16 overflow (inf, or NaN from inf - inf) must not make the iterate NaN;
                # an L2 step would spread it over the whole sample (sign(NaN) is 0 on CPU, stated here for all)
                grad = torch.nan_to_num(grad, nan=0.0) if norm == "Linf" else \
                    torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
            with torch.no_grad():
                if norm == "Linf":
                    delta = delta + step_size * grad.sign()
                else:
                    delta = delta + step_size * grad / _per_sample_norm(grad)
                delta = project(delta, eps, norm)
                delta = (x + delta).clamp(0, 1) - x
        return (x + delta).detach()


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective,
    *,
    eps: float,
    step_size: float | None = None,
    norm: Norm = "Linf",
    start: Start = "none",
    bn_mode: str = "eval",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One gradient step (FGSM; FGSM-RS with `start="uniform"` and a step of 1.25 eps)."""
    return pgd(
        model, x, objective, eps=eps, step_size=eps if step_size is None else step_size, steps=1,
        norm=norm, start=start, bn_mode=bn_mode, generator=generator,
    )
