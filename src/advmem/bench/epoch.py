"""Epoch-level figures: speedup over the reference-style loop, fixed-overhead index, TE/AWP overhead.

All epochs start from the same weights (reset before every timed epoch) and see the same
training images; the reference loop is documented in `reference_loop.py`.

- S_epoch = t(reference epoch) / t(toolkit epoch), numerics-matched (fp32, contiguous, no
  compile, same batch size; BN folded in the attack, equal up to rounding, and the attack's
  max-pools run before their ReLU through the NHWC kernel, bit for bit); and with the
  toolkit's per-device defaults (channels_last). The toolkit epoch without BN folding and
  without the fast pooling is timed too, to show what each adds.
- O = (t(PGD-10 epoch) / t(FGSM-RS epoch)) / (23/5): 1.0 means epoch time scales with FLOPs.
- TE / AWP overhead: t(steps with the feature on) / t(the same steps with it off) - 1, on one
  trainer, alternating off/on at every batch (`on_off_steps`), with an A/A control timed the
  same way. Per-epoch costs are the same either way, so the step figure bounds the epoch one.
- Parity: PGD-20 robust accuracy of the reference-trained and toolkit-trained models, each trained
  for a few epochs from the same weights.
"""

from __future__ import annotations

import copy
import math

import torch

from advmem.bench.common import (
    Goal,
    Section,
    Settings,
    data_section,
    fresh_sums,
    interleaved,
    make_trainer,
    median,
    on_off_steps,
    ratio,
    table,
)
from advmem.bench.reference_loop import loader_from_device_dataset, reference_epoch
from advmem.bench.reference_loop import reference_step
from advmem.engine.evaluate import EvalAttack, clean_per_sample, robust_per_sample, summarize
from advmem.engine.perf import resolve_perf
from advmem.recipe import PerfConfig
from advmem.methods import method_names
from advmem.data.dataset import Augment

EPOCH_INDEX = 10  # epochs are timed as epoch 10 of 10 (constant LR), so warm-up-gated method features are on


def _base_recipe(settings: Settings) -> dict:
    if settings.cuda:
        n = settings.pick(10_000, 5_000, 256)
        data = {"dataset": "synthetic", "augment": "crop_flip",
                "synthetic": {"n_train": n, "n_test": settings.pick(1000, 500, 64), "channels": 3, "image_size": 32}}
        if settings.data_root:
            data = {"dataset": "cifar10", "data_root": settings.data_root, "train_size": n,
                    "test_size": settings.pick(1000, 500, 64)}
        model = {"name": "preact_resnet18"}
    else:
        n = settings.pick(4096, 1024, 128)
        data = data_section(settings, n, test_size=settings.pick(1000, 500, 64))
        model = {"name": "small_cnn", "kwargs": {"width": 16, "hidden": 128} if not settings.tiny
                 else {"width": 4, "hidden": 16}}
    return {"data": data, "model": model, "method": {"name": "pgd_at"},
            "attack": {"eps": "8/255", "step_size": "2/255", "steps": 10},
            "optim": {"batch_size": settings.pick(128, 128, 32), "epochs": EPOCH_INDEX, "lr": 0.05},
            "eval": {"train_subset": 0}}


def _matched(recipe: dict) -> dict:
    return {**recipe, "perf": {"channels_last": False, "precision": "fp32", "compile": False}}


def _with(recipe: dict, **changes) -> dict:
    out = copy.deepcopy(recipe)
    for key, value in changes.items():
        out[key] = {**out.get(key, {}), **value}
    return out


def run(settings: Settings) -> Section:
    section = Section("Epoch: speedup over a reference-style loop, fixed overhead, TE/AWP overhead")
    dev = settings.device
    base = _base_recipe(settings)
    trainers = {"toolkit PGD-10": make_trainer(_matched(base), settings)}
    trainers["toolkit FGSM-RS"] = make_trainer(
        _matched(_with(base, attack={"steps": 1, "step_size": "10/255", "start": "uniform"})), settings)
    # the same loop without BN folding in the attack: what perf.fold_bn contributes (report only)
    trainers["toolkit PGD-10, fold_bn off"] = make_trainer(_with(_matched(base), perf={"fold_bn": False}), settings)
    trainers["toolkit PGD-10, fast_pool off"] = make_trainer(_with(_matched(base), perf={"fast_pool": False}),
                                                             settings)
    defaults_differ = trainers["toolkit PGD-10"].perf != resolve_perf(PerfConfig(), dev)
    if defaults_differ:
        trainers["toolkit PGD-10, defaults"] = make_trainer(base, settings)
    main = trainers["toolkit PGD-10"]
    train_set = main.bundle.train
    init = copy.deepcopy(main.model.state_dict())
    ref_model = copy.deepcopy(main.model)
    o = main.recipe.optim
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    crop = main.bundle.augment
    loader = loader_from_device_dataset(
        train_set, o.batch_size, crop_padding=crop.padding if crop.crops else 0, flip=crop.flips,
        num_workers=2 if settings.cuda else 0, seed=0)
    a = main.recipe.attack

    def reset(name: str) -> None:
        model, opt = (ref_model, ref_opt) if name == "reference" else (trainers[name].model, trainers[name].optimizer)
        model.load_state_dict(init)
        opt.state.clear()

    variants = {"reference": lambda: reference_epoch(ref_model, ref_opt, loader, dev, eps=a.eps_value,
                                                     alpha=a.step_value, steps=a.steps)}
    for name, t in trainers.items():
        variants[name] = (lambda t=t: t.train_epoch(EPOCH_INDEX))
    rounds = settings.rounds(default=4, quick=2)
    # warm-up: two untimed steps of each variant (lazy init, allocator, compile) instead of whole epochs
    warm = next(train_set.batches(o.batch_size, shuffle=False))
    stats = {"robust_loss": 0.0, "robust_acc": 0.0, "loss": 0.0, "acc": 0.0, "n": 0}
    for _ in range(2):
        reference_step(ref_model, ref_opt, warm.x, warm.y, eps=a.eps_value, alpha=a.step_value, steps=a.steps,
                       stats=stats)
        for t in trainers.values():
            t.train_step(warm, EPOCH_INDEX, 1, fresh_sums(dev))
    times = interleaved(variants, rounds=rounds, warmup=0, device=dev, before=reset)
    n = len(train_set)
    speed = ratio(times["reference"], times["toolkit PGD-10"])
    overhead = ratio(times["toolkit PGD-10"], times["toolkit FGSM-RS"], scale=5 / 23)
    model_desc = f"{main.recipe.model.name} {main.recipe.model.kwargs or ''}".strip()
    section.add(
        f"Model {model_desc}; {main.recipe.data.dataset} train subset of {n} images; batch {o.batch_size}; "
        f"PGD-10 eps 8/255 step 2/255; {dev.type}. {rounds} interleaved rounds (forward/reverse pairs) after "
        "warm-up steps; ratios are the median [range] over pairs; every epoch starts from the same weights. "
        "Reference loop: `src/advmem/bench/reference_loop.py` "
        f"(DataLoader with per-sample PIL transforms, {loader.num_workers} workers; weight gradients in the attack; "
        "restart-selection and extra clean forwards; `.item()` per step).",
        "",
    )
    rows = [[name, f"{median(ts):.2f}", f"{n / median(ts):.0f}"] for name, ts in times.items()]
    section.add(*table(["variant", "epoch s (median)", "images/s"], rows), "")
    section.goals.append(Goal(f"Epoch speedup vs reference loop, numerics-matched, {dev.type}", f"{speed.text()}x",
                              ">= 1.5x", speed.median >= 1.5))
    if defaults_differ:
        sd = ratio(times["reference"], times["toolkit PGD-10, defaults"])
        perf = trainers["toolkit PGD-10, defaults"].perf.as_dict()
        section.goals.append(Goal(f"Epoch speedup vs reference loop, toolkit defaults {perf}", f"{sd.text()}x",
                                  "report", None))
    else:
        section.add("- Toolkit-default figure: on this device the `perf:` defaults resolve to the numerics-matched "
                    f"settings ({main.perf.as_dict()}), so it is the same figure: {speed.text()}x.")
    unfolded = ratio(times["toolkit PGD-10, fold_bn off"], times["toolkit PGD-10"])
    section.add(f"- BN folding in the attack (`perf.fold_bn`, on in the toolkit rows): the PGD-10 epoch without it "
                f"takes {unfolded.text()}x as long.")
    slow_pool = ratio(times["toolkit PGD-10, fast_pool off"], times["toolkit PGD-10"])
    section.add(f"- Fast pooling in the attack (`perf.fast_pool`: max-pool before ReLU, NHWC kernel on CPU; on in the "
                f"toolkit rows): the PGD-10 epoch without it takes {slow_pool.text()}x as long.")
    section.goals.append(Goal(f"Fixed-overhead index O = (PGD-10/FGSM-RS)/(23/5), {dev.type}", overhead.text(),
                              ">= 0.9", overhead.median >= 0.9))
    _overheads(section, settings, base, main)

    # parity: both loops train from the same weights for a few epochs (one epoch of a few steps
    # can leave either model at chance, where the comparison says nothing), then PGD-20
    parity_epochs = settings.pick(6, 3, 1)
    for name in ("reference", "toolkit PGD-10"):
        reset(name)
        for _ in range(parity_epochs):
            variants[name]()
    test = main.bundle.test
    eps = a.eps_value
    attack = EvalAttack(eps=eps, step_size=eps / 4, steps=20)
    accs, clean = {}, {}
    for name, model in (("reference", ref_model), ("toolkit", main.model)):
        accs[name] = summarize(robust_per_sample(model, test, attack, 256, generator=torch.Generator().manual_seed(0)))
        clean[name] = summarize(clean_per_sample(model, test, 256))
    p = (accs["reference"]["acc"] + accs["toolkit"]["acc"]) / 2
    se = math.sqrt(max(p * (1 - p), 1e-12) * 2 / max(len(test), 1))  # SE of a difference of two proportions
    diff = 100 * (accs["toolkit"]["acc"] - accs["reference"]["acc"])
    section.add(
        "",
        f"Parity after {parity_epochs} epoch(s) of each loop from the same weights ({len(test)} test images; "
        f"PGD-20, step eps/4): reference {100 * accs['reference']['acc']:.1f}% robust "
        f"({100 * clean['reference']['acc']:.1f}% clean), toolkit {100 * accs['toolkit']['acc']:.1f}% robust "
        f"({100 * clean['toolkit']['acc']:.1f}% clean); difference {diff:+.1f} pp, sampling SE of the difference "
        f"{100 * se:.1f} pp. The two loops draw different data orders and random starts, so they agree only up "
        "to that noise and the spread between training runs.",
    )
    section.goals.append(Goal("Parity: PGD-20 robust acc, toolkit - reference", f"{diff:+.1f} pp (SE {100 * se:.1f})",
                              "within max(1 pp, 2 SE)", abs(diff) <= max(1.0, 200 * se)))
    _data_pipeline(section, settings, train_set, o.batch_size)
    return section


def _overheads(section: Section, settings: Settings, base: dict, main) -> None:
    """TE and AWP overhead over PGD-AT: one trainer per method, its feature off (TE before its
    start epoch, AWP in its warm-up, where each runs exactly its base method's code) and on
    (TE at full weight, AWP perturbing), alternating at every batch of an epoch's batches.

    An epoch-level interleave of separate trainers could not resolve a 5% goal: an identical
    second PGD-10 trainer, timed where TE and AWP were, read +3.6% on its own."""
    dev = settings.device
    methods = {"TE": {"name": "te", "base": "pgd_at", "start_epoch": 2, "end_epoch": EPOCH_INDEX - 1},
               "AWP": {"name": "awp", "base": "pgd_at", "warmup_epochs": 1}}
    available = set(method_names())
    cases: dict[str, tuple] = {}
    for name, cfg in methods.items():
        if cfg["name"] not in available:
            section.goals.append(Goal(f"{name} overhead over pgd_at", "not available (method not registered)",
                                      "-", None))
            continue
        cases[name] = (make_trainer(_matched(_with(base, method=cfg)), settings), 1, EPOCH_INDEX)
    cases["A/A control"] = (main, EPOCH_INDEX, EPOCH_INDEX)
    o = main.recipe.optim
    batches = list(main.bundle.train.batches(o.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
                                             augment=main.bundle.augment))
    rounds = settings.rounds(default=4, quick=2)
    results = {}
    for name, (trainer, off_epoch, on_epoch) in cases.items():
        sums = fresh_sums(dev)

        def step(batch, on, trainer=trainer, off_epoch=off_epoch, on_epoch=on_epoch, sums=sums):
            trainer.train_step(batch, on_epoch if on else off_epoch, 1, sums)

        for batch in batches[:2]:  # warm-up: lazy buffers and allocator, both paths
            step(batch, False), step(batch, True)
        off, on = on_off_steps(step, batches, rounds=rounds, device=dev)
        results[name] = (off, on, ratio(on, off, group=1))
    section.add(
        "",
        f"Method overheads: for each method one trainer runs each of {len(batches)} batches twice, with the "
        f"feature off and on, alternating the order at every batch; {rounds} such round(s); the figure is the "
        "median [range] over rounds of t(on)/t(off) - 1. Off is TE before its start epoch and AWP in its "
        "warm-up, where each runs exactly PGD-AT's code; on is TE at full weight and AWP perturbing. The A/A "
        "control times the PGD-10 trainer against itself the same way (0% expected). Per-epoch costs "
        "(shuffle, augmentation, metrics) are the same off and on, so these step figures bound the epoch "
        "overhead from above.",
        "",
    )
    rows = []
    for name, (off, on, r) in results.items():
        rows.append([name, f"{1e3 * sum(off) / (len(off) * len(batches)):.1f}",
                     f"{1e3 * sum(on) / (len(on) * len(batches)):.1f}", _percent(r)])
    section.add(*table(["method", "step ms, off", "step ms, on", "overhead"], rows), "")
    for name, goal, limit in (("TE", "<= 5%", 0.05), ("AWP", "report (FLOPs: 13%; AWP paper ~9%)", None)):
        if name in results:
            r = results[name][2]
            section.goals.append(Goal(f"{name} overhead over pgd_at", _percent(r), goal,
                                      None if limit is None else r.median - 1 <= limit))
    section.goals.append(Goal("A/A control: PGD-10 steps against themselves, timed like TE/AWP",
                              _percent(results["A/A control"][2]), "report (0% expected)", None))


def _percent(r) -> str:
    if r.rounds == 1:
        return f"{100 * (r.median - 1):+.1f}%"
    return f"{100 * (r.median - 1):+.1f}% [{100 * (r.low - 1):+.1f}..{100 * (r.high - 1):+.1f}]"


def _data_pipeline(section: Section, settings: Settings, train_set, batch_size: int) -> None:
    """The input pipeline alone, with crop+flip augmentation: per-sample PIL DataLoader vs the
    device-resident dataset with batched tensor augmentation (what the toolkit uses)."""
    dev = settings.device
    loader = loader_from_device_dataset(train_set, batch_size, crop_padding=4, flip=True,
                                        num_workers=2 if settings.cuda else 0, seed=1)
    augment = Augment("crop_flip", 4)

    def reference() -> None:
        for x, y in loader:
            x.to(dev), y.to(dev)

    def resident() -> None:
        for _ in train_set.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(1),
                                   augment=augment):
            pass

    times = interleaved({"reference": reference, "resident": resident}, rounds=settings.rounds(default=6, quick=4),
                        warmup=1, device=dev)
    r = ratio(times["reference"], times["resident"])
    section.add("", f"Input pipeline alone (one epoch of {len(train_set)} images with random crop + flip, no model): "
                f"per-sample PIL DataLoader {median(times['reference']):.3f} s, device-resident dataset with "
                f"batched augmentation {median(times['resident']):.3f} s: {r.text(1)}x faster.")
    section.goals.append(Goal(f"Input pipeline: PIL DataLoader / device-resident batches, {dev.type}",
                              f"{r.text(1)}x", "report", None))
