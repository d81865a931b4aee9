"""Temporal ensembling (TE) for adversarial training (Dong et al., ICLR 2022), as in the authors' code.

Each training sample i has a row p_i of an N x C buffer (fp32, on the device, zeros at start,
addressed by `batch.index`). From epoch `start_epoch` on, every visit first updates the row,

    p_i <- momentum * p_i + (1 - momentum) * softmax(f(x_i)),

with f in eval mode on the natural (augmented) input and no autograd graph, then uses the
target p_i / sum_c p_i,c (for a sample seen t times this is p_i / (1 - momentum^t), Laine and
Aila's start-up bias correction). The squared error between the model's softmax output and the
target is added to the attack objective (on the adversarial output) and to the training loss
(on the adversarial output for PGD-AT, on the natural output for TRADES, switchable with
`outer_target`), with weight `weight * r(epoch)`,

    r = 0 before start_epoch, exp(-5 (1 - T)^2) with T = (epoch - start)/(end - start) in
    [start, end], 1 after end_epoch          (epochs 1-indexed, as everywhere in advmem).

Weight units: `code` (default) averages the squared error over the B x C entries exactly like
the authors' code, so `weight: 300` is their `--reg-weight 300` (a per-sample weight of
300 / C: 30 on CIFAR-10, 3 on CIFAR-100; the authors recommend 300 for both). `per_sample`
sums over classes and averages over the batch: the paper's written w (w = 30 on CIFAR-10 is
code 300). The attack's objective is per-sample base objective + the same per-sample penalty,
which makes PGD's summed objective B times the authors' batch loss (same sign gradient); for
TRADES the attack term is beta * KL as in the authors' TRADES_TE (beta matters once the TE
term is added).

What matches the authors' code (tests/test_fidelity.py re-derives each update from these
equations): the ensemble update and its normalization, the ramp, the attack objectives, the
outer losses, the unclamped random start of PGD_TE / TRADES_TE (`attack.start_clamp: auto`;
0.001 N(0, I) for an L2 PGD-AT+TE start), the natural-before-adversarial forward order of the
TRADES+TE outer loss (BatchNorm running statistics), eval-mode natural logits. Deliberate
choices: the natural forward has no autograd graph (the authors' keeps an unused one), the
TRADES+TE clean logits are computed once per batch and reused by the ensemble update (the same
eval-mode forward), `weight_units: per_sample` and `outer_target` are extra switches, and the
model's input normalization is the recipe's (`model.normalize: none` is the authors' raw [0,1]).

Cost: PGD-AT+TE adds one no-grad eval-mode forward of the natural batch per step (from
start_epoch on); TRADES+TE reuses the clean logits the TRADES attack already computes (eval
mode, no graph), so it adds no forward pass.

TE wraps its base through the `Method` interface only (base.py): the base's attack reference
prediction, the part of its loss its attack maximizes, and its loss with the outputs that loss
was taken on; so MART+TE (no authors' code) is built the same way: CE + TE penalty in the
attack, the MART loss + TE penalty on the adversarial output (where MART fits the labels).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from advmem.attacks import attack_mode
from advmem.attacks.attack_view import attack_model
from advmem.methods.base import AdvContext, Method, WrapsBase
from advmem.recipe.method import METHODS, MethodConfig
from advmem.io import atomic_write_bytes

# The ensemble written at the end of training (raw N x C `buffer`, `visits`), read back by
# track/memorized.py for the memorized-samples captions.
TE_BUFFER_FILE = "te_buffer.safetensors"


class TEConfig(MethodConfig):
    name: Literal["te"] = "te"
    base: Literal["pgd_at", "trades", "mart"] = "pgd_at"
    momentum: float = Field(0.9, ge=0, lt=1)
    start_epoch: int = Field(90, ge=1)
    end_epoch: int = Field(150, ge=1)
    weight: float = Field(300.0, ge=0)
    weight_units: Literal["code", "per_sample"] = "code"
    # "auto": the output the base fits the labels on: adversarial for PGD-AT and MART, natural
    # for TRADES (the authors' code for PGD-AT and TRADES).
    outer_target: Literal["auto", "natural", "adversarial"] = "auto"
    beta: float = Field(6.0, ge=0)  # the base's beta (bases with one: trades, mart)
    # start_epoch / end_epoch may be written as fractions of optim.epochs (e.g. 0.45, 0.75);
    # advmem.recipe.resolve_epoch_fractions turns them into epochs before these checks run.
    EPOCH_FIELDS: ClassVar[tuple[str, ...]] = ("start_epoch", "end_epoch")

    @model_validator(mode="after")
    def _check_epochs(self) -> "TEConfig":
        if self.start_epoch >= self.end_epoch:
            raise ValueError(f"method.start_epoch ({self.start_epoch}) must be before method.end_epoch "
                             f"({self.end_epoch}); the ramp runs from start to end")
        return self

    def check_against(self, recipe) -> None:
        if self.end_epoch > recipe.optim.epochs:
            raise ValueError(f"method.end_epoch {self.end_epoch} is after the last epoch {recipe.optim.epochs}; "
                             "lower method.start_epoch/end_epoch or raise optim.epochs")

    @property
    def resolved_outer_target(self) -> str:
        if self.outer_target != "auto":
            return self.outer_target
        return METHODS.get(self.base).fits_labels_on


def te_attack(attack):
    """The attack settings TE's base method runs with: "auto" resolved as in PGD_TE / TRADES_TE.

    Both take the first attack gradient at the unclamped start (before start_epoch too, where
    they run the plain attack), and both start an L2 attack at x + 0.001 N(0, I) (TRADES' own
    start, PGD_TE's L2 start)."""
    update = {}
    if attack.start_clamp == "auto":
        update["start_clamp"] = False
    if attack.start == "auto" and attack.norm == "L2":
        update["start"] = "gaussian"
    return attack.model_copy(update=update) if update else attack


def te_ramp(epoch: int, start: int, end: int) -> float:
    """Laine and Aila's sigmoid ramp-up: 0 before start, exp(-5 (1-T)^2) on [start, end], 1 after."""
    if epoch < start:
        return 0.0
    if epoch > end:
        return 1.0
    t = (epoch - start) / (end - start)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def te_penalty(probs: torch.Tensor, target: torch.Tensor, units: str) -> torch.Tensor:
    """Per-sample squared error sum_c (probs - target)^2, divided by C in `code` units.

    Its batch mean is the authors' mean over B x C (`code`) or the per-sample form."""
    sq = (probs.float() - target).pow(2).sum(dim=1)
    return sq / probs.shape[1] if units == "code" else sq


@METHODS.register("te")
class TemporalEnsembling(WrapsBase, Method):
    Config = TEConfig

    def __init__(self, cfg: TEConfig, attack, *, num_train, num_classes, device="cpu", label_smoothing=0.0):
        super().__init__(cfg, attack, num_train=num_train, num_classes=num_classes, device=device,
                         label_smoothing=label_smoothing)
        base_cls = METHODS.get(cfg.base)
        base_cfg = {"name": cfg.base, **({"beta": cfg.beta} if "beta" in base_cls.Config.model_fields else {})}
        self.base = self.build_base(base_cls.Config.model_validate(base_cfg), te_attack(attack))
        self.buffer = torch.zeros(num_train, num_classes, dtype=torch.float32, device=self.device)
        self.visits = torch.zeros(num_train, dtype=torch.int64, device=self.device)

    # -- the ensemble ------------------------------------------------------------------------------
    def weight_at(self, epoch: int) -> float:
        return self.cfg.weight * te_ramp(epoch, self.cfg.start_epoch, self.cfg.end_epoch)

    @torch.no_grad()
    def update(self, index: torch.Tensor, natural_logits: torch.Tensor) -> torch.Tensor:
        """EMA-update the rows `index` with softmax(natural_logits); return their normalized targets."""
        m = self.cfg.momentum
        rows = self.buffer[index] * m + F.softmax(natural_logits.detach().float(), dim=1) * (1.0 - m)
        self.buffer[index] = rows
        self.visits[index] += 1
        return rows / rows.sum(dim=1, keepdim=True)

    def targets(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized targets p / sum(p) (rows never visited are NaN)."""
        rows = self.buffer if index is None else self.buffer[index]
        return rows / rows.sum(dim=1, keepdim=True)

    def natural_logits(self, model, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode natural logits without a graph (the authors' code also uses eval mode)."""
        with attack_mode(model, "eval"), torch.no_grad():
            return attack_model(model, "eval")(x)

    def attack_objective(self, batch, target: torch.Tensor, weight: float, clean_logits: torch.Tensor | None):
        """Per-sample inner objective: the base's (in its loss units) + weight * TE penalty on the adversarial output."""
        units = self.cfg.weight_units
        base = self.base.loss_objective(batch, clean_logits)

        def objective(logits: torch.Tensor) -> torch.Tensor:
            return base(logits) + weight * te_penalty(F.softmax(logits.float(), dim=1), target, units)

        return objective

    # -- the step ----------------------------------------------------------------------------------
    def attack(self, model, batch, epoch):
        if epoch < self.cfg.start_epoch:
            return self.base.attack(model, batch, epoch)
        weight = self.weight_at(epoch)
        clean = self.base.clean_logits(model, batch.x)
        if clean is not None:
            # a copy: with perf.cuda_graphs a later compiled call (the natural forward below in
            # train-mode attacks, then PGD's) reuses the memory of an earlier call's output
            clean = clean.clone()
        # an eval-mode reference prediction (TRADES) is the natural forward the ensemble needs
        reuse = clean is not None and self.attack_cfg.bn_mode == "eval"
        natural = clean if reuse else self.natural_logits(model, batch.x)
        target = self.update(batch.index, natural)
        x_adv = self.base.run_pgd(model, batch.x, self.attack_objective(batch, target, weight, clean))
        return AdvContext(x_adv=x_adv, clean_logits=clean, extras={"te_target": target, "te_weight": weight})

    def outer_loss(self, model, batch, ctx, epoch):
        if "te_target" not in ctx.extras:
            return self.base.outer_loss(model, batch, ctx, epoch)
        target, weight = ctx.extras["te_target"], ctx.extras["te_weight"]
        # the base's forwards in its own order (TRADES: natural first, as in TRADES_TE; train-mode
        # BatchNorm updates its running statistics in call order)
        loss, logs, logits = self.base.loss_and_logits(model, batch, ctx, epoch)
        on = self.cfg.resolved_outer_target
        te_logits = logits.get(on)
        if te_logits is None:  # an output the base's loss does not take (PGD-AT's natural one)
            te_logits = model(batch.x if on == "natural" else ctx.x_adv)
        penalty = te_penalty(F.softmax(te_logits.float(), dim=1), target, self.cfg.weight_units).mean()
        logs["te_penalty"] = penalty.detach()
        return loss + weight * penalty, logs

    def sync_state(self, batch, comm) -> None:
        """DDP: every rank gets every row updated in this step (called only when WORLD_SIZE > 1)."""
        index = comm.all_gather(batch.index)
        self.buffer[index] = comm.all_gather(self.buffer[batch.index])
        self.visits[index] = comm.all_gather(self.visits[batch.index])

    # -- state and export -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.detach().cpu().clone(), "visits": self.visits.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["buffer"].shape) != tuple(self.buffer.shape):
            raise ValueError(f"TE buffer shape {tuple(state['buffer'].shape)} does not match {tuple(self.buffer.shape)}")
        self.buffer.copy_(state["buffer"].to(self.device))
        self.visits.copy_(state["visits"].to(self.device))

    def export_rows(self) -> dict[str, Any]:
        """Per-sample columns for a per-sample table (index = position in the training set as used):
        te_visits, te_target_label (argmax of the target), te_target_conf (its max), and the
        normalized target te_p_0 .. te_p_{C-1} (NaN for samples never visited)."""
        visited = self.visits > 0
        target = torch.where(visited[:, None], self.targets(), torch.full_like(self.buffer, float("nan")))
        conf, label = target.nan_to_num(-1.0).max(dim=1)
        cols: dict[str, Any] = {
            "index": torch.arange(self.num_train).tolist(),
            "te_visits": self.visits.cpu().tolist(),
            "te_target_label": torch.where(visited, label, torch.full_like(label, -1)).cpu().tolist(),
            "te_target_conf": torch.where(visited, conf, torch.full_like(conf, float("nan"))).cpu().tolist(),
        }
        for c in range(self.num_classes):
            cols[f"te_p_{c}"] = target[:, c].cpu().tolist()
        return cols

    def save_artifacts(self, directory) -> None:
        """Write TE_BUFFER_FILE (buffer: raw N x C EMA, visits: N) into the run directory."""
        from safetensors.torch import save

        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(Path(directory) / TE_BUFFER_FILE, save(state))
