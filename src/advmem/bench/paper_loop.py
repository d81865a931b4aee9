"""A training loop with the semantics of the memorization paper's own code (Dong et al., ICLR 2022).

Written here from the equations and from what that code computes (dongyp13/memorization-AT,
`train.py`: `pgd_loss`, `trades_loss` and the `train` loop); no code is copied. The peers
benchmark (`python -m advmem.bench peers`) times it next to advmem. What it does per batch:

- data: a `torch.utils.data.DataLoader` over a dataset that builds a PIL image per sample and
  converts it with ToTensor (the torchvision datasets the paper's code reads; no augmentation,
  its default);
- PGD-AT: eval mode; x0 = clip(x + U(-eps, eps), 0, 1); K steps of
  x <- clip(proj_eps(x + alpha sign(grad_x CE(f(x), y))), 0, 1) with the gradient taken for
  the input only (`torch.autograd.grad`); train mode; CE(f(x_adv), y);
- TRADES: eval mode; the clean logits f(x) once, without a graph; x0 = x + 0.001 N(0, I)
  (not clipped); K sign steps on sum_i KL(softmax(f(x)_i) || softmax(f(x_k)_i)), input gradient
  only; train mode; CE(f(x), y) + beta / B * sum_i KL(softmax(f(x)_i) || softmax(f(x_adv)_i));
- after the backward pass, the squared gradient norm summed over parameters with one `.item()`
  per parameter, and the loss read with `.item()` (the code's logging), then the SGD step.

Inputs are [0,1] images; the model normalizes inside, as advmem's models do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _sign_step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: float, alpha: float) -> torch.Tensor:
    x_adv = x_adv.detach() + alpha * grad.sign()
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    return x_adv.clamp(0.0, 1.0)


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
               steps: int) -> torch.Tensor:
    """Linf PGD on the mean cross-entropy, uniform start clipped to [0,1], input gradients only."""
    x_adv = (x.detach() + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = _sign_step(x_adv, grad, x, eps, alpha)
    return x_adv.detach()


def trades_attack(model: nn.Module, x: torch.Tensor, *, eps: float, alpha: float, steps: int) -> torch.Tensor:
    """Linf PGD on the summed KL to the clean prediction, computed once; unclipped Gaussian start."""
    with torch.no_grad():
        target = F.softmax(model(x), dim=1)
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = _sign_step(x_adv, grad, x, eps, alpha)
    return x_adv.detach()


def paper_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *, method: str,
               eps: float, alpha: float, steps: int, beta: float = 6.0) -> float:
    """One training step of `method` ("pgd_at" or "trades"); returns the loss (host value)."""
    model.eval()
    if method == "pgd_at":
        x_adv = pgd_attack(model, x, y, eps=eps, alpha=alpha, steps=steps)
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(x_adv), y)
    elif method == "trades":
        x_adv = trades_attack(model, x, eps=eps, alpha=alpha, steps=steps)
        model.train()
        opt.zero_grad()
        nat = model(x)
        kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(nat, dim=1), reduction="sum")
        loss = F.cross_entropy(nat, y) + beta * kl / x.shape[0]
    else:
        raise ValueError(f"paper_step: unknown method {method!r}")
    loss.backward()
    norm_sq = 0.0
    for p in model.parameters():  # the code's per-parameter gradient-norm log: one host read each
        norm_sq += p.grad.norm(2).item() ** 2
    opt.step()
    return loss.item()


def paper_epoch(model: nn.Module, opt: torch.optim.Optimizer, loader, device: torch.device, *, method: str,
                eps: float, alpha: float, steps: int, beta: float = 6.0) -> float:
    """One epoch over `loader`; returns the mean logged loss."""
    total, n = 0.0, 0
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        total += paper_step(model, opt, x, y, method=method, eps=eps, alpha=alpha, steps=steps, beta=beta) * len(y)
        n += len(y)
    return total / max(n, 1)
