"""advmem against the tools researchers use: epoch time and accuracy side by side.

One process, one torch thread, interleaved rounds (forward/reverse pairs), process CPU time
per epoch on CPU (wall time with device syncs on CUDA). Every variant trains the same small
CNN (advmem's `small_cnn`, built once per variant from the model registry and loaded with
one shared initial state), on the same images (a Fashion-MNIST subset, synthetic data of the
same shape when it is absent), with the same attack (Linf PGD-10, same eps and step) and the
same optimizer (SGD, same lr, momentum and weight decay, constant lr):

- advmem: `Trainer.train_epoch` at the toolkit's per-device `perf:` defaults; the same with
  channels_last, fold_bn and fast_pool off (what the kernel-level options contribute); and on a
  CPU with native bf16 (AMX / AVX512-BF16), the same with `perf.precision: bf16`, opt-in because
  it changes the arithmetic: its row says what it buys and what accuracy it keeps;
- the paper's loop: `paper_loop.py` (the semantics of the memorization paper's code);
- torchattacks: `PGD` / `TPGD` in a plain loop over a DataLoader;
- IBM ART: `AdversarialTrainer` with `ProjectedGradientDescent` (Madry's protocol, ratio 1)
  and `AdversarialTrainerTRADESPyTorch` (whose attack is the same PGD on the cross-entropy,
  as in ART's own TRADES example), fed numpy arrays, as ART's API takes them.

Each timed epoch is also a training epoch (no reset between rounds), so after the rounds
every variant has trained the same number of epochs from the same weights; one function,
`common_evaluator`, then measures natural and PGD-20 accuracy of every model. A peer that is
not installed gets a row saying so (they are in the `bench` extra).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advmem.bench.common import Goal, Section, Settings, common_evaluator, data_section, fresh_sums, interleaved
from advmem.bench.common import make_trainer, median, ratio, table
from advmem.bench.paper_loop import paper_epoch, paper_step
from advmem.bench.reference_loop import loader_from_device_dataset
from advmem.engine.checkpoint import model_normalization
from advmem.models import build_model

EPS, ALPHA, STEPS, BETA = 0.1, 0.025, 10, 6.0
METHODS = {"pgd_at": "PGD-AT", "trades": f"TRADES (beta {BETA:g})"}
# import name -> PyPI name (both in the `bench` extra)
PEER_PACKAGES = {"torchattacks": "torchattacks", "art": "adversarial-robustness-toolbox"}
# summary rows: family -> label ({v}: the peer's version); ROWS: per-method rows where they differ
FAMILIES = {
    "advmem": "advmem (toolkit defaults)",
    "paper": "the paper's loop (paper_loop.py: input-gradient attack, TRADES clean logits once, DataLoader)",
    "torchattacks": "torchattacks{v} PGD / TPGD in a plain loop",
    "art": "IBM ART{v} adversarial trainers",
    "kernels_off": "advmem with channels_last, fold_bn and fast_pool off",
    "bf16": "advmem with perf.precision: bf16 (opt-in: bf16 autocast on a CPU with native bf16)",
}
ROWS = {"torchattacks": {"pgd_at": "torchattacks{v} PGD in a plain loop", "trades": "torchattacks{v} TPGD in a plain loop"},
        "art": {"pgd_at": "IBM ART{v} AdversarialTrainer + ProjectedGradientDescent (Madry's protocol)",
                "trades": "IBM ART{v} AdversarialTrainerTRADESPyTorch + ProjectedGradientDescent"}}
SHORT = {"paper": "the paper's loop", "torchattacks": "torchattacks", "art": "IBM ART",
         "kernels_off": "advmem with kernel options off", "bf16": "advmem bf16"}
# advmem's own variants: not peers in the accuracy comparison
OWN = ("advmem", "kernels_off", "bf16")
GOALS = {"paper": (">= 2x (issue 18)", 2.0), "art": (">= 3x (issue 18)", 3.0)}


@dataclass
class Variant:
    """One row: a training loop on its own copy of the model. `missing` says why it cannot run."""

    family: str
    method: str
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    epoch: Callable[[int], Any] | None = None
    warm: Callable[[], Any] | None = None
    missing: str | None = None
    version: str = ""
    result: dict[str, float] = field(default_factory=dict)

    def family_label(self) -> str:
        return FAMILIES[self.family].format(v=f" {self.version}" if self.version else "")

    def label(self) -> str:
        row = ROWS.get(self.family, {}).get(self.method, FAMILIES[self.family])
        return row.format(v=f" {self.version}" if self.version else "")


def peer_module(name: str):
    """The peer's module, or None when it is not importable (not installed, or broken)."""
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def native_bf16_cpu() -> bool:
    """oneDNN runs bf16 natively here (AMX or AVX512-BF16; `ONEDNN_MAX_CPU_ISA` respected)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def not_installed(module: str, method: str) -> Variant:
    return Variant(module, method, missing=f"not installed (pip install {PEER_PACKAGES[module]}, or 'advmem[bench]')")


def _recipe(settings: Settings, method: str, epochs: int) -> dict:
    n = settings.pick(4096, 1024, 128)
    model = {"name": "small_cnn", "kwargs": {"width": 16, "hidden": 128} if not settings.tiny
             else {"width": 4, "hidden": 16}}
    return {"data": data_section(settings, n, test_size=settings.pick(1000, 500, 64)), "model": model,
            "method": {"name": method, **({"beta": BETA} if method == "trades" else {})},
            "attack": {"eps": str(EPS), "step_size": str(ALPHA), "steps": STEPS},
            "optim": {"batch_size": settings.pick(128, 128, 32), "epochs": epochs, "lr": 0.05,
                      "schedule": {"name": "constant"}},
            "eval": {"train_subset": 0}}


class Factory:
    """Builds every variant from one advmem trainer: its data, architecture, initial weights and optimizer."""

    def __init__(self, settings: Settings, epochs: int):
        self.settings, self.epochs = settings, epochs
        self.base = make_trainer(_recipe(settings, "pgd_at", epochs), settings)
        r, b = self.base.recipe, self.base.bundle
        self.init = {k: v.detach().clone() for k, v in self.base.model.state_dict().items()}
        mean, std = model_normalization(r, b)
        self.model_args = dict(name=r.model.name, in_channels=b.in_channels, num_classes=b.num_classes,
                               image_size=b.image_size, mean=mean, std=std, **dict(r.model.kwargs))
        self.train, self.test = b.train, b.test
        self.batch_size = r.optim.batch_size
        self.optim = r.optim
        self.warm_batch = next(b.train.batches(self.batch_size, shuffle=False))

    def model(self) -> nn.Module:
        m = build_model(**self.model_args).to(self.settings.device)
        m.load_state_dict(self.init)
        return m

    def sgd(self, model: nn.Module) -> torch.optim.Optimizer:
        o = self.optim
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)

    def loader(self, seed: int):
        return loader_from_device_dataset(self.train, self.batch_size, num_workers=0, seed=seed)

    # -- advmem

    def advmem(self, method: str, kernels_off: bool = False, bf16: bool = False) -> Variant:
        family = "kernels_off" if kernels_off else "bf16" if bf16 else "advmem"
        if bf16 and (self.settings.cuda or not native_bf16_cpu()):
            why = ("bf16 is the CUDA default already" if self.settings.cuda
                   else "this CPU has no native bf16 (AMX or AVX512-BF16): oneDNN would emulate it")
            return Variant(family, method, missing=why)
        recipe = _recipe(self.settings, method, self.epochs)
        if kernels_off:
            recipe["perf"] = {"channels_last": False, "fold_bn": False, "fast_pool": False}
        if bf16:
            recipe["perf"] = {"precision": "bf16"}
        t = self.base if family == "advmem" and method == "pgd_at" else make_trainer(recipe, self.settings)
        t.model.load_state_dict(self.init)
        dev = self.settings.device
        return Variant(family, method, t.model, t.optimizer,
                       epoch=lambda e: t.train_epoch(e),
                       warm=lambda: t.train_step(self.warm_batch, 1, 1, fresh_sums(dev)))

    # -- the paper's loop

    def paper(self, method: str) -> Variant:
        model = self.model()
        opt, loader, dev = self.sgd(model), self.loader(seed=1), self.settings.device
        kw = dict(method=method, eps=EPS, alpha=ALPHA, steps=STEPS, beta=BETA)
        w = self.warm_batch
        return Variant("paper", method, model, opt, epoch=lambda e: paper_epoch(model, opt, loader, dev, **kw),
                       warm=lambda: paper_step(model, opt, w.x, w.y, **kw))

    # -- torchattacks

    def torchattacks(self, method: str) -> Variant:
        ta = peer_module("torchattacks")
        if ta is None:
            return not_installed("torchattacks", method)
        model = self.model()
        opt, loader, dev = self.sgd(model), self.loader(seed=2), self.settings.device
        attack = (ta.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True) if method == "pgd_at"
                  else ta.TPGD(model, eps=EPS, alpha=ALPHA, steps=STEPS))

        def step(x, y):
            x_adv = attack(x, y)  # eval mode inside (torchattacks' default), train mode restored
            model.train()
            opt.zero_grad()
            if method == "pgd_at":
                loss = F.cross_entropy(model(x_adv), y)
            else:
                nat = model(x)
                loss = F.cross_entropy(nat, y) + BETA * F.kl_div(F.log_softmax(model(x_adv), dim=1),
                                                                 F.softmax(nat, dim=1), reduction="batchmean")
            loss.backward()
            opt.step()
            return loss.item()

        def epoch(e):
            model.train()
            for x, y in loader:
                step(x.to(dev), y.to(dev))

        w = self.warm_batch
        return Variant("torchattacks", method, model, opt, epoch=epoch, warm=lambda: step(w.x, w.y), version=ta.__version__)

    # -- IBM ART

    def art(self, method: str) -> Variant:
        art = peer_module("art")
        if art is None:
            return not_installed("art", method)
        try:
            from art.attacks.evasion import ProjectedGradientDescent
            from art.defences.trainer import AdversarialTrainer, AdversarialTrainerTRADESPyTorch
            from art.estimators.classification import PyTorchClassifier
        except Exception as err:  # an ART without its PyTorch parts
            return Variant("art", method, missing=f"not usable: {type(err).__name__}: {err}")
        model = self.model()
        opt = self.sgd(model)
        x0 = self.train.all_float()
        classifier = PyTorchClassifier(model=_Whole(model), loss=nn.CrossEntropyLoss(), optimizer=opt,
                                       input_shape=tuple(x0.shape[1:]), nb_classes=int(self.base.bundle.num_classes),
                                       clip_values=(0.0, 1.0),
                                       device_type="gpu" if self.settings.cuda else "cpu")
        pgd = ProjectedGradientDescent(classifier, norm=np.inf, eps=EPS, eps_step=ALPHA, max_iter=STEPS,
                                       num_random_init=1, batch_size=self.batch_size, verbose=False)
        trainer = (AdversarialTrainer(classifier, pgd, ratio=1.0) if method == "pgd_at"
                   else AdversarialTrainerTRADESPyTorch(classifier, pgd, beta=BETA))
        x, y = x0.cpu().numpy().astype(np.float32), self.train.y.cpu().numpy()
        bs = self.batch_size

        def fit(xs, ys):
            with contextlib.redirect_stderr(io.StringIO()):  # ART's tqdm bars
                trainer.fit(xs, ys, nb_epochs=1, batch_size=bs)

        return Variant("art", method, model, opt, epoch=lambda e: fit(x, y),
                       warm=lambda: fit(x[:bs], y[:bs]), version=art.__version__)


class _Whole(nn.Module):
    """`model` as one module. ART's wrapper runs an nn.Sequential layer by layer and its TRADES
    trainer reads output [0] for the accuracy (the first layer's output); this computes the same."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def build_variants(factory: Factory) -> list[Variant]:
    out = []
    for method in METHODS:
        out += [factory.advmem(method), factory.paper(method), factory.torchattacks(method), factory.art(method),
                factory.advmem(method, kernels_off=True), factory.advmem(method, bf16=True)]
    return out


def reset(variants: list[Variant], init: dict[str, torch.Tensor]) -> None:
    """Every runnable variant back to the shared initial weights, with fresh optimizer state."""
    for v in variants:
        if v.model is not None:
            v.model.load_state_dict(init)
            v.optimizer.state.clear()


def run(settings: Settings) -> Section:
    section = Section("Peers: advmem against torchattacks, IBM ART and the paper's loop")
    rounds = settings.rounds(default=4, quick=2)
    threads = torch.get_num_threads()
    if not settings.cuda:
        torch.set_num_threads(1)
    try:
        np.random.seed(0)  # ART shuffles with numpy's global generator
        factory = Factory(settings, epochs=max(rounds, 1))
        variants = build_variants(factory)
        runnable = [v for v in variants if v.missing is None]
        for _ in range(2):  # warm-up steps (lazy init, allocator, fx tracing), then back to the initial weights
            for v in runnable:
                v.warm()
        reset(runnable, factory.init)
        done = {id(v): 0 for v in runnable}

        def epoch_of(v: Variant):
            def call():
                done[id(v)] += 1
                v.epoch(done[id(v)])
            return call

        clock = time.perf_counter if settings.cuda else time.process_time
        keys = {id(v): f"{v.method}:{v.family}" for v in runnable}
        times = interleaved({keys[id(v)]: epoch_of(v) for v in runnable}, rounds=rounds, warmup=0,
                            device=settings.device, clock=clock)
        for v in runnable:
            v.result = common_evaluator(v.model, factory.test, EPS)
    finally:
        torch.set_num_threads(threads)
    _report(section, settings, factory, variants, times, keys, rounds)
    return section


def _report(section: Section, settings: Settings, factory: Factory, variants: list[Variant], times, keys,
            rounds: int) -> None:
    n, dev = len(factory.train), settings.device
    clock = "wall time, device synchronized" if settings.cuda else "process CPU time, 1 torch thread"
    kw = factory.model_args
    section.add(
        f"Model small_cnn (width {kw.get('width', 32)}, hidden {kw.get('hidden', 256)}), one initial state for every "
        f"row; {factory.base.recipe.data.dataset} train subset of {n} images, no augmentation; batch "
        f"{factory.batch_size}; Linf PGD-{STEPS} eps {EPS:g} step {ALPHA:g}; SGD lr {factory.optim.lr:g} momentum "
        f"{factory.optim.momentum:g} weight decay {factory.optim.weight_decay:g}, constant; {dev.type}. {rounds} "
        f"interleaved round(s) of one epoch per row ({clock}); each timed epoch is also a training epoch, so every "
        f"row has trained {rounds} epoch(s) from the same weights when `common_evaluator` measures natural and "
        f"PGD-20 (step eps/4) accuracy on {len(factory.test)} test images. Ratio = the row's epoch time / advmem's "
        "for the same method, median [range] over forward/reverse pairs of rounds (higher = advmem faster).",
        "",
    )
    rows, summary = [], {}
    for v in variants:
        label = v.label()
        if v.missing is not None:
            rows.append([label, METHODS[v.method], "-", v.missing, "-", "-"])
            summary.setdefault(v.family_label(), {})[v.method] = v.missing
            continue
        ts = times[keys[id(v)]]
        if v.family == "advmem":
            r_text = "1 (the reference)"
        else:
            r = ratio(ts, times[keys_for(variants, keys, v.method, "advmem")])
            r_text = r.text()
            summary.setdefault(v.family_label(), {})[v.method] = r_text
            goal, limit = GOALS.get(v.family, ("report", None))
            section.goals.append(Goal(f"Epoch time, {SHORT[v.family]} / advmem, {METHODS[v.method]}, {dev.type}",
                                      f"{r_text}x", goal, None if limit is None else r.median >= limit))
        rows.append([label, METHODS[v.method], f"{median(ts):.2f}", r_text, f"{100 * v.result['nat']:.1f}",
                     f"{100 * v.result['pgd20']:.1f}"])
    section.goals += bf16_goals(variants, times, keys, len(factory.test), dev.type)
    section.add(*table(["variant", "method", "epoch s (median)", "row / advmem", "natural %", "PGD-20 %"], rows), "")
    # the compact table at the top of the goal metrics
    lines = [[family, *[cells.get(m, "-") for m in METHODS]] for family, cells in summary.items()]
    acc = []
    for m in METHODS:
        ours = [100 * v.result["pgd20"] for v in variants if v.method == m and v.family == "advmem" and v.result]
        peers = [100 * v.result["pgd20"] for v in variants
                 if v.method == m and v.family not in OWN and v.result]
        acc.append("-" if not ours else f"{ours[0]:.1f} vs {min(peers):.1f}-{max(peers):.1f}" if peers
                   else f"{ours[0]:.1f} (no peer ran)")
    lines.append([f"PGD-20 accuracy % after {rounds} epoch(s), advmem vs the peers", *acc])
    section.summary = [
        f"advmem against the tools researchers use (section 'Peers' below: same model, initial weights, data, "
        f"attack and optimizer; {clock}; accuracy by one common evaluator):", "",
        *table(["row / advmem epoch time (higher = advmem faster)", *METHODS.values()], lines), ""]


def bf16_goals(variants: list[Variant], times, keys, n_test: int, device: str) -> list[Goal]:
    """The issue's goals against advmem with the opt-in bf16: met only where the time ratio reaches the
    goal AND bf16's PGD-20 accuracy is within two binomial standard errors of fp32 advmem's (1000
    test images: about 3 points), so no speed is bought with a weaker model."""
    out = []
    for method in METHODS:
        ours = {v.family: v for v in variants if v.method == method and v.family in ("advmem", "bf16")
                and v.missing is None}
        if "bf16" not in ours:
            continue
        p = ours["advmem"].result["pgd20"]
        gap = 100 * (ours["bf16"].result["pgd20"] - p)
        two_se = 200 * (p * (1 - p) / n_test) ** 0.5
        same = abs(gap) <= two_se
        for family, (goal, limit) in GOALS.items():
            if not any(v.family == family and v.method == method and v.missing is None for v in variants):
                continue
            r = ratio(times[keys_for(variants, keys, method, family)], times[keys_for(variants, keys, method, "bf16")])
            out.append(Goal(f"Epoch time, {SHORT[family]} / advmem bf16 (opt-in), {METHODS[method]}, {device}; "
                            f"PGD-20 bf16 - fp32 {gap:+.1f} pp (2 SE {two_se:.1f})", f"{r.text()}x",
                            f"{goal}, accuracy within 2 SE", r.median >= limit and same))
    return out


def keys_for(variants: list[Variant], keys: dict[int, str], method: str, family: str) -> str:
    return next(keys[id(v)] for v in variants if v.method == method and v.family == family and v.missing is None)
