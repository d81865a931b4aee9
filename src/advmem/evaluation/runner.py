"""Evaluate a model: attacks, per-sample worst case, sanity checks, resumable, RobustBench-style output.

The reported robust accuracy is the per-sample worst case over every attack run: a point
counts as robust only if it is classified correctly clean and under every attack. For a
checkpoint `<dir>/<stem>.safetensors` (or an external `<stem>.pt`) the outputs are

    <stem>.eval.json          clean_acc, autoattack_acc, robust_acc, per-attack accuracies,
                              eps as written, threat model, dataset, architecture, n_examples,
                              seed, versions, sanity checks and flags
    <stem>.eval.flags.npz     per-sample flags: index, label, clean, one array per attack, robust
    <stem>.autoattack.log     pyautoattack's log (when AutoAttack ran)
    <stem>.eval.state.json    while running: the flags of completed attacks (resume), then removed

Resume: rerunning the same command after an interruption skips the attacks (and AutoAttack
components) already completed, as long as the settings and checkpoint are unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from advmem import __version__
from advmem.engine.io import atomic_write_bytes, atomic_write_json
from advmem.errors import UserError
from advmem.evaluation.attacks import WHITE_BOX, AttackSettings, run_white_box
from advmem.recipe import budget_value

AUTOATTACKS = {"autoattack": "standard", "autoattack-lite": "lite"}
ATTACKS = WHITE_BOX + tuple(AUTOATTACKS)
DEFAULT_ATTACKS = ["clean", "pgd"]


def _acc(flags: torch.Tensor) -> float:
    return flags.float().mean().item() if flags.numel() else float("nan")


def versions() -> dict[str, str]:
    try:
        import pyautoattack

        aa = pyautoattack.__version__
    except ImportError:  # pragma: no cover
        aa = "not installed"
    return {"advmem": __version__, "torch": torch.__version__, "pyautoattack": aa,
            "python": platform.python_version()}


class EvalState:
    """Flags of completed attacks, written atomically after each one, keyed by a fingerprint."""

    def __init__(self, path: Path | None, fingerprint: dict[str, Any]) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.data: dict[str, Any] = {"fingerprint": fingerprint, "attacks": {}, "autoattack": {}}
        self.resumed: list[str] = []
        if path is not None and path.is_file():
            try:
                old = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
            if old and old.get("fingerprint") == fingerprint:
                self.data = old
                self.resumed = list(old["attacks"]) + [f"autoattack:{k}" for k in old.get("autoattack", {})]

    def get(self, name: str) -> torch.Tensor | None:
        flags = self.data["attacks"].get(name)
        return None if flags is None else torch.tensor(flags, dtype=torch.bool)

    def put(self, name: str, flags: torch.Tensor) -> None:
        self.data["attacks"][name] = flags.int().tolist()
        self._write()

    def aa_done(self, tier: str) -> dict[str, list[bool]]:
        return {k: [bool(v) for v in vals] for k, vals in self.data["autoattack"].get(tier, {}).items()}

    def aa_put(self, tier: str, component: str, flags: torch.Tensor) -> None:
        self.data["autoattack"].setdefault(tier, {})[component] = flags.int().tolist()
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self.data)

    def finish(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


def evaluate_model(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, attacks: list[str],
                   settings: AttackSettings, num_classes: int, checks: bool = True, n_check: int = 64,
                   state: EvalState | None = None, aa_log: Path | None = None,
                   echo: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run `attacks` on (x, y); returns accuracies, per-sample flags and sanity checks."""
    from advmem.evaluation.autoattack import run_autoattack

    state = state or EvalState(None, {})
    model.eval()
    x, y = x.cpu(), y.cpu()
    raw: dict[str, torch.Tensor] = {}
    flags: dict[str, torch.Tensor] = {}
    order = ["clean"] + [a for a in attacks if a != "clean"]
    aa_info: dict[str, Any] = {}
    for name in order:
        done = state.get(name)
        if done is not None:
            echo(f"  {name}: restored from the resume state")
            raw[name] = done
        elif name in AUTOATTACKS:
            tier = AUTOATTACKS[name]
            echo(f"  {name}: pyautoattack version={tier} on {len(x)} points (log: {aa_log})")
            robust, after, warnings = run_autoattack(
                model, x, y, tier=tier, eps=settings.eps, norm=settings.norm, seed=settings.seed,
                batch_size=settings.batch_size, num_classes=num_classes, log_path=aa_log,
                done=state.aa_done(tier), on_stage=lambda comp, f, t=tier: state.aa_put(t, comp, f), echo=echo)
            raw[name] = robust
            aa_info[name] = {"version": tier, "accuracy_after": after, "warnings": warnings}
            state.put(name, robust)
        else:
            echo(f"  {name}: {len(x)} points")
            raw[name] = run_white_box(name, model, x, y, settings)
            state.put(name, raw[name])
        flags[name] = raw[name] & raw["clean"]
    robust = raw["clean"].clone()
    for name in order:
        robust &= flags[name]
    clean_acc = _acc(raw["clean"])
    result: dict[str, Any] = {
        "clean_acc": clean_acc,
        "robust_acc": _acc(robust),
        "attacks": {k: _acc(v) for k, v in flags.items() if k != "clean"},
        "attacks_raw": {k: _acc(v) for k, v in raw.items() if k != "clean"},
        "autoattack": aa_info,
        "flags": flags,
        "robust": robust,
    }
    if checks:
        from advmem.evaluation.checks import run_checks

        echo(f"  sanity checks on {min(n_check, len(x))} points")
        white_raw = {k: v for k, v in result["attacks_raw"].items() if k in WHITE_BOX}
        found = run_checks(model, x, y, settings, num_classes=num_classes, full_clean_acc=clean_acc,
                           full_raw_accs=white_raw, n=n_check)
        for aa in aa_info.values():  # AutoAttack's own warnings are flags too
            for msg in aa["warnings"]:
                if "zero gradient" in msg or "Square Attack" in msg or "randomized" in msg or "probability" in msg:
                    from advmem.evaluation.checks import Check

                    found.append(Check("autoattack_warning", True, f"pyautoattack: {msg}"))
                    break
        result["sanity"] = {"enabled": True, "n_points": min(n_check, len(x)),
                            "checks": {c.name: c.as_dict() for c in found}}
        result["sanity_flags"] = sorted({c.name for c in found if c.flagged})
    else:
        result["sanity"] = {"enabled": False}
        result["sanity_flags"] = []
    result["flagged"] = bool(result["sanity_flags"])
    return result


# ---------------------------------------------------------------------------------------------
# Checkpoints and targets


def checkpoints_of(target: str | Path, which: str = "both") -> list[Path]:
    """The checkpoints `advmem eval` evaluates: a run's best and/or last, or one file."""
    path = Path(target)
    if path.is_dir():
        from advmem.engine.rundir import RunDir

        if RunDir(path).is_run():
            RunDir(path).check_readable()  # refuses a run written by a newer advmem
        stems = {"both": ("best", "last"), "best": ("best",), "last": ("last",)}[which]
        found = [path / "checkpoints" / f"{s}.safetensors" for s in stems]
        found = [p for p in found if p.is_file()]
        if not found:
            raise UserError(f"{path}: no checkpoints/{' or '.join(s + '.safetensors' for s in stems)}; "
                            "is this an advmem run directory?")
        return found
    if not path.exists() and not path.with_suffix(".safetensors").exists():
        raise UserError(f"{path}: no such run directory or checkpoint file")
    return [path]


def dataset_split(meta: dict[str, Any], split: str, device: torch.device, bundle=None):
    from advmem.data import DataConfig, build_data

    if bundle is None:
        cfg = DataConfig.model_validate(meta.get("data") or {"dataset": meta["dataset"]})
        if split == "test":
            cfg = cfg.model_copy(update={"test_size": None})  # the full test set
        bundle = build_data(cfg, device)
    data = {"train": bundle.train, "val": bundle.val, "test": bundle.test}[split]
    if data is None or len(data) == 0:
        raise UserError(f"split '{split}' is empty for this checkpoint (data.val_size was 0); use --split test")
    return data


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_for_eval(path: Path, opts: dict[str, Any], device: torch.device):
    """(model, meta, weights_path, data bundle or None) for an advmem or external checkpoint."""
    from advmem.engine.checkpoint import build_from_checkpoint
    from advmem.evaluation.loading import build_external, is_advmem_checkpoint

    if is_advmem_checkpoint(path):
        model, meta = build_from_checkpoint(path, device)
        return model, meta, path.with_suffix(".safetensors"), None
    model, meta, bundle = build_external(
        path, arch=opts.get("arch"), dataset=opts.get("dataset"), num_classes=opts.get("num_classes"),
        model_kwargs=opts.get("model_kwargs") or {}, mean=opts.get("mean"), std=opts.get("std"),
        no_normalize=bool(opts.get("no_normalize")), norm=opts.get("norm") or "Linf", eps=opts.get("eps"),
        device=device)
    return model, meta, path, bundle


def output_stem(weights: Path, out_dir: str | Path | None) -> Path:
    stem = weights.with_suffix("")
    return Path(out_dir) / stem.name if out_dir else stem


def save_flags(path: Path, index: torch.Tensor, labels: torch.Tensor, result: dict[str, Any]) -> None:
    arrays = {"index": index.cpu().numpy(), "label": labels.cpu().numpy(),
              "robust": result["robust"].numpy()}
    for name, f in result["flags"].items():
        arrays[name.replace("-", "_")] = f.numpy()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def evaluate_checkpoint(path: Path, *, attacks: list[str], split: str, n_examples: int | None, batch_size: int,
                        steps: int, restarts: int, eps: str | None, seed: int, device: torch.device,
                        step_size: str | None = None, checks: bool = True, n_check: int = 64,
                        out_dir: str | Path | None = None, quiet: bool = False,
                        external: dict[str, Any] | None = None) -> dict[str, Any]:
    import sys

    echo = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr))
    model, meta, weights, bundle = load_for_eval(Path(path), dict(external or {}, eps=eps), device)
    data = dataset_split(meta, split, device, bundle)
    if n_examples is not None:
        data = data.subset(torch.arange(min(n_examples, len(data)), device=data.y.device))
    eps_text = eps if eps is not None else meta["eps"]
    eps_value = budget_value(eps_text)
    norm = meta["threat_model"]
    settings = AttackSettings(eps=eps_value, norm=norm, steps=steps, restarts=restarts,
                              step_size=budget_value(step_size) if step_size is not None else None, seed=seed,
                              batch_size=batch_size)
    stem = output_stem(weights, out_dir)
    fingerprint = {"weights": _file_digest(weights), "split": split, "n": len(data), "eps": eps_value, "norm": norm,
                   "steps": steps, "restarts": restarts, "step": settings.step, "seed": seed,
                   "batch_size": batch_size, "advmem": __version__}
    state = EvalState(Path(f"{stem}.eval.state.json"), fingerprint)
    if state.resumed:
        echo(f"advmem eval: resuming {weights.name}: {', '.join(state.resumed)} already done")
    echo(f"advmem eval: {weights} on {split} ({len(data)} points), {norm} eps={eps_text}")
    aa_log = Path(f"{stem}.autoattack.log") if any(a in AUTOATTACKS for a in attacks) else None
    x = data.all_float()
    result = evaluate_model(model, x, data.y, attacks=attacks, settings=settings,
                            num_classes=meta["architecture"]["num_classes"], checks=checks, n_check=n_check,
                            state=state, aa_log=aa_log, echo=echo)
    flags_path = Path(f"{stem}.eval.flags.npz")
    save_flags(flags_path, data.index, data.y, result)
    aa_names = [a for a in attacks if a in AUTOATTACKS]
    out = {
        "checkpoint": str(path),
        "split": split,
        "clean_acc": result["clean_acc"],
        "autoattack_acc": result["attacks"][aa_names[0]] if aa_names else None,
        "robust_acc": result["robust_acc"],
        "robust_acc_is": "per-sample worst case over: " + ", ".join(["clean"] + [a for a in attacks if a != "clean"]),
        "attacks": result["attacks"],
        "attacks_raw": result["attacks_raw"],
        "autoattack": result["autoattack"],
        "eps": eps_text,
        "eps_value": eps_value,
        "threat_model": norm,
        "dataset": meta["dataset"],
        "architecture": meta["architecture"]["name"],
        "additional_data": False,
        "n_examples": len(data),
        "pgd": {"steps": steps, "restarts": restarts, "step_size": step_size or f"eps/4 = {settings.step:.6g}"},
        "batch_size": batch_size,
        "seed": seed,
        "epoch": meta.get("epoch"),
        "method": meta.get("method"),
        "run": meta.get("run"),
        "sanity": result["sanity"],
        "sanity_flags": result["sanity_flags"],
        "flagged": result["flagged"],
        "flags_file": str(flags_path),
        "autoattack_log": str(aa_log) if aa_log else None,
        "versions": versions(),
    }
    out_path = Path(f"{stem}.eval.json")
    atomic_write_json(out_path, out)
    state.finish()
    out["eval_json"] = str(out_path)
    return out


def evaluate_target(target: str, *, attacks: list[str] | None, split: str = "test", n_examples: int | None = None,
                    batch_size: int = 256, steps: int = 20, restarts: int = 1, eps: str | None = None, seed: int = 0,
                    device: str = "auto", quiet: bool = False, step_size: str | None = None, checks: bool = True,
                    n_check: int = 64, which: str = "both", out_dir: str | None = None,
                    external: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Validate the options, then evaluate each checkpoint of `target` (a run or a file)."""
    from advmem.engine.trainer import resolve_device

    attacks = list(dict.fromkeys(attacks or DEFAULT_ATTACKS))
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise UserError(f"unknown attack '{unknown[0]}'; choose from: {', '.join(ATTACKS)}")
    if steps < 1 or restarts < 1 or batch_size < 1 or n_check < 1 or (n_examples is not None and n_examples < 1):
        raise UserError("--steps, --restarts, --batch-size, --n-check and --n-examples must be positive integers")
    for flag, text in (("--eps", eps), ("--step-size", step_size)):
        if text is not None:
            try:
                if budget_value(text) < 0:
                    raise ValueError
            except ValueError:
                raise UserError(f"{flag} '{text}' is not a non-negative number or fraction like 8/255") from None
    dev = resolve_device(device)
    paths = checkpoints_of(target, which)
    return [evaluate_checkpoint(p, attacks=attacks, split=split, n_examples=n_examples, batch_size=batch_size,
                                steps=steps, restarts=restarts, eps=eps, seed=seed, device=dev, step_size=step_size,
                                checks=checks, n_check=n_check, out_dir=out_dir, quiet=quiet, external=external)
            for p in paths]
