"""Evaluation cost: AutoAttack through advmem vs pyautoattack directly, and lite vs standard.

A small model is adversarially trained for the purpose (robust points make AutoAttack do real
work; a random model is broken by the first attack), saved as an advmem checkpoint, and
evaluated on the first N test points by:
- pyautoattack `standard` called directly (package defaults, seed 0);
- pyautoattack `lite` = version "custom" with APGD-CE + APGD-T, configured as in `standard`
  (1 restart, 9 target classes);
- `advmem eval --attack autoattack` (the same checkpoint and points), if this advmem has it, through
  the bit-exact attack view (its default) and with `--no-attack-view`.
The per-sample robust flags must be identical; the times are interleaved per round.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from advmem.bench.common import Goal, Section, Settings, data_section, make_trainer, median, sync, table
from advmem.engine.evaluate import full_fp32
from advmem.data import DataConfig, build_data
from advmem.engine.checkpoint import build_from_checkpoint, checkpoint_meta, save_checkpoint
from advmem.evaluation import ATTACKS, evaluate_checkpoint


def _train_model(settings: Settings):
    """Adversarially train a small model briefly and save it as an advmem checkpoint (no run dir)."""
    data = data_section(settings, settings.pick(2048, 1024, 64), test_size=64)
    trainer = make_trainer({
        "data": data, "model": {"name": "small_cnn", "kwargs": {"width": 8, "hidden": 64}},
        "method": {"name": "pgd_at"}, "attack": {"eps": "8/255", "step_size": "2/255", "steps": 5},
        "optim": {"epochs": settings.pick(2, 1, 1), "batch_size": 64, "lr": 0.05},
        "eval": {"train_subset": 0, "final_full": False}}, settings)
    for epoch in range(1, trainer.recipe.optim.epochs + 1):
        trainer.train_epoch(epoch)
    path = settings.workdir / "aa-model"
    save_checkpoint(path, trainer.model, checkpoint_meta(trainer.recipe, trainer.bundle, trainer.model,
                                                       trainer.recipe.optim.epochs, {}))
    return path.with_suffix(".safetensors"), trainer.recipe


def _direct(model, x, y, eps: float, version: str, settings: Settings, bs: int) -> torch.Tensor:
    from pyautoattack import AutoAttack

    if version == "lite":
        aa = AutoAttack(model, attacks=["apgd-ce", "apgd-t"], version="custom", eps=eps, norm="Linf", seed=0,
                        device=settings.device)
        aa.apgd.n_restarts = 1
        aa.apgd_targeted.n_target_classes = 9
        aa.apgd_targeted.n_restarts = 1
    else:
        aa = AutoAttack(model, version="standard", eps=eps, norm="Linf", seed=0, device=settings.device)
    aa.verbose = False
    with full_fp32():  # as advmem's evaluation runs (no TF32 on CUDA), so both compute the same
        _, y_adv = aa.run_standard_evaluation(x, y, batch_size=bs)
    return (y_adv == y).cpu()


ADVMEM = "standard (advmem eval --attack autoattack)"
ADVMEM_NO_VIEW = "standard (advmem eval --attack autoattack --no-attack-view)"


def advmem_autoattack_available() -> bool:
    return "autoattack" in ATTACKS


def run(settings: Settings) -> Section:
    section = Section("Evaluation: AutoAttack")
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    ckpt, recipe = _train_model(settings)
    model, meta = build_from_checkpoint(ckpt, settings.device)
    model.eval()
    n = settings.pick(256, 64, 8)
    cfg = DataConfig.model_validate(meta["data"]).model_copy(update={"test_size": None})
    test = build_data(cfg, settings.device).test
    x, y = test.all_float()[:n], test.y[:n]
    eps, bs = recipe.attack.eps_value, 256

    variants = {"standard (pyautoattack)": lambda: _direct(model, x, y, eps, "standard", settings, bs),
                "lite (pyautoattack)": lambda: _direct(model, x, y, eps, "lite", settings, bs)}
    note = ""
    if advmem_autoattack_available():
        counter = iter(range(10**6))

        def through_advmem(attack_view: bool) -> torch.Tensor:
            # A fresh output folder per call: advmem eval resumes finished components from its state file.
            # Sanity checks off: this row times AutoAttack itself, as the pyautoattack rows do.
            out_dir = settings.workdir / f"eval-{next(counter)}"
            evaluate_checkpoint(ckpt, attacks=["autoattack"], split="test", n_examples=n, batch_size=bs, steps=20,
                                restarts=1, eps=None, seed=0, device=settings.device, checks=False, quiet=True,
                                out_dir=out_dir, attack_view=attack_view)
            flags = np.load(out_dir / f"{ckpt.stem}.eval.flags.npz")
            return torch.from_numpy(flags["autoattack"]).bool()

        variants[ADVMEM] = lambda: through_advmem(True)
        variants[ADVMEM_NO_VIEW] = lambda: through_advmem(False)
    else:
        note = ("- `advmem eval --attack autoattack`: not available (this advmem's `advmem.evaluation.ATTACKS` "
                "has no 'autoattack').")

    # warm-up on 4 points, then interleaved rounds
    _direct(model, x[:4], y[:4], eps, "lite", settings, bs)
    rounds = settings.rounds(default=2, quick=1)
    times: dict[str, list[float]] = {k: [] for k in variants}
    flags: dict[str, torch.Tensor] = {}
    errors: dict[str, str] = {}
    names = list(variants)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            if name in errors:
                continue
            sync(settings.device)
            t0 = time.perf_counter()
            try:
                flags[name] = variants[name]()
            except Exception as err:  # the advmem path belongs to another module; report, do not crash
                errors[name] = f"{type(err).__name__}: {err}"
                continue
            sync(settings.device)
            times[name].append(time.perf_counter() - t0)

    with torch.inference_mode():
        clean = (model(x).argmax(1) == y).float().mean().item()
    section.add(
        f"Model: small_cnn (w8) adversarially trained by the harness ({recipe.data.dataset}, "
        f"{recipe.optim.epochs} epoch(s)); Linf eps 8/255; first {n} test points, clean accuracy {100 * clean:.1f}%; "
        f"batch {bs}; {settings.device.type}; {rounds} round(s), interleaved.",
        "",
    )
    accs = {name: f.float().mean().item() for name, f in flags.items()}
    reference = flags.get("standard (pyautoattack)")

    def same_flags(name: str) -> str:
        if name not in flags or reference is None or "standard" not in name or name == "standard (pyautoattack)":
            return ""
        return "identical" if torch.equal(flags[name], reference) else "DIFFERENT"

    rows = [[name, f"{median(ts):.2f}" if ts else "-", f"{100 * accs[name]:.1f}%" if name in accs else "-",
             same_flags(name)] for name, ts in times.items()]
    section.add(*table(["evaluation", "seconds (median)", "robust accuracy", "per-sample flags vs direct"], rows))
    if note:
        section.add("", note)
    for name, err in errors.items():
        section.add("", f"- {name}: failed: {err}")
    std, lite = times["standard (pyautoattack)"], times["lite (pyautoattack)"]
    if std and lite:
        speed = median(std) / median(lite)
        gap = 100 * (accs["lite (pyautoattack)"] - accs["standard (pyautoattack)"])
        section.goals.append(Goal("AutoAttack lite vs standard: speedup (robust-acc gap)",
                                  f"{speed:.1f}x ({gap:+.1f} pp)", "report (doc goal for a toolkit AA: >= 8x, <= 0.1 pp)",
                                  None))
    for key, label in ((ADVMEM, "advmem"), (ADVMEM_NO_VIEW, "advmem --no-attack-view")):
        if key in times and times[key] and std:
            same = same_flags(key) == "identical"
            speed = median(std) / median(times[key])
            section.goals.append(Goal(f"AutoAttack standard: pyautoattack direct / {label} (identical flags?)",
                                      f"{speed:.2f}x ({'identical' if same else 'DIFFERENT'} per-sample flags)",
                                      "identical flags (time ratio reported)", same))
        else:
            why = errors.get(key, "not available")
            section.goals.append(Goal(f"AutoAttack standard through {label} vs pyautoattack direct", why,
                                      "identical flags", None))
    return section
