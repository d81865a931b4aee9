"""AutoAttack through the reference implementation (`pyautoattack`), run one component at a time.

Tiers: `standard` (APGD-CE, APGD-T, FAB-T, Square with the package's standard settings) and
`lite` (APGD-CE + APGD-T with the same settings as in `standard`: one APGD-CE restart, nine
target classes).

Why components are run as stages: pyautoattack 0.2.0 can write a state file (`state_path`),
but cannot resume from it (the attack set is stored as a string and never equals the set it is
compared with; a restored run also references an unset variable). So advmem runs each
component through `run_standard_evaluation` on the points still robust, in the same order and
batching as one call would, and records the per-sample flags after each. The flags are the
same as one direct call with the same seed and settings (tested), and an interrupted
evaluation continues after the last completed component.

The package's log (including its own sanity warnings: randomized defence, probability
outputs, too few classes, zero gradients, Square beating the white-box attacks) goes to a
log file next to the results; its warnings are also returned so they reach eval.json.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from advmem.engine.evaluate import full_fp32
from advmem.progress import Progress, pass_of

TIERS = {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"], "lite": ["apgd-ce", "apgd-t"]}


def make_autoattack(model: nn.Module, *, tier: str, eps: float, norm: str, seed: int, num_classes: int,
                    device: torch.device | str):
    """An `AutoAttack` configured as advmem runs it (also what tests call directly)."""
    from pyautoattack import AutoAttack

    if tier == "standard":
        aa = AutoAttack(model, version="standard", eps=eps, norm=norm, seed=seed, device=device)
    elif tier == "lite":
        aa = AutoAttack(model, version="custom", attacks=list(TIERS["lite"]), eps=eps, norm=norm, seed=seed,
                        device=device)
        aa.apgd.n_restarts = 1  # the 'standard' settings for these two components
        aa.apgd_targeted.n_restarts = 1
        aa.apgd_targeted.n_target_classes = 9
    elif tier == "square":
        aa = AutoAttack(model, version="custom", attacks=["square"], eps=eps, norm=norm, seed=seed, device=device)
    else:
        raise ValueError(tier)
    # With fewer than 10 classes there are fewer than 9 target classes (AutoAttack would index
    # past the logits); use all the others.
    targets = min(9, num_classes - 1)
    aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, targets)
    aa.fab.n_target_classes = min(aa.fab.n_target_classes, targets)
    return aa


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class aa_logging:
    """Route the 'auto-attack' logger to `log_path` (appending) and collect its warnings."""

    def __init__(self, log_path: Path | None) -> None:
        self.log_path = log_path
        self.collect = _Collect()

    def __enter__(self) -> "aa_logging":
        self.logger = logging.getLogger("auto-attack")
        self.old_level, self.old_propagate = self.logger.level, self.logger.propagate
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self.handlers: list[logging.Handler] = [self.collect]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(self.log_path, mode="a")
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            self.handlers.append(fh)
        for h in self.handlers:
            self.logger.addHandler(h)
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handlers:
            self.logger.removeHandler(h)
            h.close()
        self.logger.setLevel(self.old_level)
        self.logger.propagate = self.old_propagate

    def note(self, message: str) -> None:
        self.logger.info(message)


# What pyautoattack 0.2.0 logs after each batch of an attack (at DEBUG): the one place its loop
# tells how far it is. Another wording only loses the per-batch count, not the component's.
BATCH_DONE = re.compile(r"^\S+ - \d+/\d+ - \d+ out of (\d+) successfully perturbed")


class _CountBatches(logging.Handler):
    def __init__(self, bar: Progress) -> None:
        super().__init__(level=logging.DEBUG)
        self.bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        found = BATCH_DONE.match(record.getMessage())
        if found:
            self.bar.update(int(found.group(1)))


@contextmanager
def counting_batches(logger: logging.Logger, bar: Progress) -> Iterator[None]:
    """`bar` advances by each batch's points as pyautoattack logs the batch done."""
    handler = _CountBatches(bar)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@full_fp32()
def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, tier: str, eps: float, norm: str,
                   seed: int, batch_size: int, num_classes: int, log_path: Path | None = None,
                   done: dict[str, list[bool]] | None = None,
                   on_stage: Callable[[str, torch.Tensor], None] | None = None,
                   echo: Callable[[str], None] | None = None,
                   progress: Progress | None = None) -> tuple[torch.Tensor, dict[str, float], list[str]]:
    """Per-sample robust flags under AutoAttack (`tier`), the accuracy after each component,
    and the package's warnings. `done` holds flags of components completed earlier (resume);
    `progress`: the phase whose display shows each component, batch by batch."""
    done = dict(done or {})
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, y = x.cpu(), y.cpu()
    after: dict[str, float] = {}
    with aa_logging(log_path) as logs:
        aa = make_autoattack(model, tier=tier, eps=eps, norm=norm, seed=seed, num_classes=num_classes, device=device)
        aa.logger.info(f"advmem: AutoAttack tier={tier} eps={eps} norm={norm} seed={seed} n={len(x)} "
                       f"batch_size={batch_size}")
        with torch.no_grad():
            robust = torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]
                                for i in range(0, len(x), batch_size)]) if len(x) else torch.zeros(0, dtype=torch.bool)
        after["clean"] = robust.float().mean().item() if len(x) else float("nan")
        for component in TIERS[tier]:
            if component in done:
                robust = torch.tensor(done[component], dtype=torch.bool)
                aa.logger.info(f"advmem: {component} restored from the resume state")
            else:
                idx = robust.nonzero().squeeze(1)
                if len(idx) > 0:
                    if echo:
                        echo(f"  autoattack-{tier}: {component} on {len(idx)} points")
                    aa.attacks_to_run = [component]
                    with pass_of(progress, f"autoattack-{tier} {component}", len(idx)) as bar, \
                            counting_batches(logs.logger, bar):
                        _, y_adv = aa.run_standard_evaluation(x[idx], y[idx], batch_size=batch_size)
                    robust = robust.clone()
                    robust[idx] = y_adv.cpu() == y[idx]
                if on_stage is not None:
                    on_stage(component, robust)
            after[component] = robust.float().mean().item() if len(x) else float("nan")
            aa.logger.info(f"advmem: robust accuracy after {component}: {after[component]:.2%}")
    model.train(was_training)
    return robust, after, logs.collect.messages
