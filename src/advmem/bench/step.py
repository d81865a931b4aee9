"""R_step: cost of one adversarial training step in units of plain training steps.

R_step(PGD-K) = t(one PGD-K AT step) / ((K+1) x t(one plain forward+backward+optimizer step)),
same model, batch, dtype and trainer code path (`Trainer.train_step`; the plain step is the
`standard` method). A lean step costs 2F per attack step + 3F, so the FLOP floor for K=10 is
23/33 = 0.70; a reference step (weight gradients in the attack, extra clean and restart
forwards) costs 35F, i.e. ~1.06. TRADES-K has the same denominator (lean floor 27/33 = 0.82).
The timed unit for the denominator is K+1 consecutive plain steps, so both sides of each ratio
take about as long and are timed back to back.
"""

from __future__ import annotations

import torch

from advmem.bench.common import Goal, Section, Settings, fresh_sums, interleaved, make_trainer, median, ratio, table
from advmem.bench.reference_loop import reference_step

K = 10


def _configs(settings: Settings) -> list[dict]:
    small = {"label": "small_cnn (w32) 1x28x28", "model": {"name": "small_cnn"}, "channels": 1, "size": 28,
             "batch": settings.pick(128, 128, 8)}
    prn = {"label": "preact_resnet18 3x32x32", "model": {"name": "preact_resnet18"}, "channels": 3, "size": 32,
           "batch": settings.pick(32, 8, 2)}
    if settings.tiny:
        small["model"] = {"name": "small_cnn", "kwargs": {"width": 4, "hidden": 16}}
        prn["model"] = {"name": "preact_resnet18", "kwargs": {"width": 4}}
        prn["label"] = "preact_resnet18 (w4) 3x32x32"
        small["label"] = "small_cnn (w4) 1x28x28"
    if settings.cuda:
        prn["batch"] = settings.pick(128, 128, 8)
    return [small, prn]


def _trainer(cfg: dict, method: str, settings: Settings, steps: int, channels_last: bool | None = None):
    data = {"dataset": "synthetic", "augment": "none",
            "synthetic": {"n_train": cfg["batch"], "n_test": 8, "channels": cfg["channels"], "image_size": cfg["size"]}}
    layout = "auto" if channels_last is None else channels_last
    recipe = {"data": data, "model": cfg["model"], "method": {"name": method}, "attack": {"steps": steps},
              "optim": {"batch_size": cfg["batch"], "epochs": 1}, "eval": {"train_subset": 0},
              "perf": {"channels_last": layout, "precision": "fp32"}}
    return make_trainer(recipe, settings)


def run(settings: Settings) -> Section:
    section = Section("Step cost: R_step")
    section.add(
        "R_step(PGD-K) = t(PGD-K AT step) / ((K+1) x t(plain fwd+bwd+SGD step)); K = 10, fp32, same model, batch, "
        "memory layout and code path (`Trainer.train_step`, toolkit defaults: input-gradient-only attack, BN folded "
        "in eval-mode attacks, channels_last); on CPU each model is also run contiguous (NCHW) for comparison. FLOP floor 0.70 (PGD) and 0.82 (TRADES); a reference-style step "
        "(weight gradients in the attack, extra forwards, `.item()` syncs) is ~1.06 by FLOPs. "
        f"{settings.rounds()} interleaved rounds (forward/reverse pairs) after a warm-up round; median [range] over "
        "pairs.",
        "",
    )
    rows = []
    configs = [(cfg, None) for cfg in _configs(settings)]
    if not settings.cuda:  # NCHW too (report only: the default layout is channels_last)
        configs += [({**cfg, "label": cfg["label"] + ", contiguous"}, False) for cfg in _configs(settings)]
    for cfg, layout in configs:
        plain = _trainer(cfg, "standard", settings, K, layout)
        pgd_t = _trainer(cfg, "pgd_at", settings, K, layout)
        trades_t = _trainer(cfg, "trades", settings, K, layout)
        dev = settings.device
        batch = next(plain.bundle.train.batches(cfg["batch"], shuffle=False))
        sums = fresh_sums(dev)
        ref_model = _trainer(cfg, "pgd_at", settings, K, layout)
        ref_opt = ref_model.optimizer
        a = ref_model.recipe.attack
        stats = {"robust_loss": 0.0, "robust_acc": 0.0, "loss": 0.0, "acc": 0.0, "n": 0}

        def plain_steps():
            for _ in range(K + 1):
                plain.train_step(batch, 1, 1, sums)

        variants = {
            "plain x11": plain_steps,
            "pgd": lambda: pgd_t.train_step(batch, 1, 1, sums),
            "trades": lambda: trades_t.train_step(batch, 1, 1, sums),
            "reference": lambda: reference_step(ref_model.model, ref_opt, batch.x, batch.y, eps=a.eps_value,
                                                alpha=a.step_value, steps=K, stats=stats),
        }
        times = interleaved(variants, rounds=settings.rounds(), warmup=1, device=dev)
        r_pgd = ratio(times["pgd"], times["plain x11"])
        r_trades = ratio(times["trades"], times["plain x11"])
        r_ref = ratio(times["reference"], times["plain x11"])
        plain_ms = median(times["plain x11"]) / (K + 1) * 1e3
        rows.append([cfg["label"], cfg["batch"], f"{plain_ms:.1f}", f"{median(times['pgd']) * 1e3:.0f}",
                     f"**{r_pgd.text()}**", f"{median(times['trades']) * 1e3:.0f}", f"**{r_trades.text()}**",
                     r_ref.text()])
        name = cfg["label"].split()[0] + (", contiguous" if layout is False else "")
        scored = layout is None  # goals are judged at the device's default layout; other layouts are reported
        section.goals.append(Goal(f"R_step(PGD-10), {name}, {dev.type}", r_pgd.text(),
                                  "<= 0.80 (floor 0.70)" if scored else "report",
                                  r_pgd.median <= 0.80 if scored else None))
        section.goals.append(Goal(f"R_step(TRADES-10), {name}, {dev.type}", r_trades.text(),
                                  "<= 0.90 (floor 0.82)" if scored else "report",
                                  r_trades.median <= 0.90 if scored else None))
        del plain, pgd_t, trades_t, ref_model
        if settings.cuda:
            torch.cuda.empty_cache()
    section.add(*table(["model", "batch", "plain step ms", "PGD-10 step ms", "R_step(PGD-10)", "TRADES-10 step ms",
                        "R_step(TRADES-10)", "reference-style PGD-10 step / 11 plain"], rows))
    return section
