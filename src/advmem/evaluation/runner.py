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

Accumulation: eval.json keeps one record per (attack, its settings) evaluated on the same
points (`points`: the weights' digest, split, n_examples, seed, eps, threat model). A later
evaluation of the same points adds its attacks (an attack already recorded with the same
settings is kept, not rerun), and the worst case, the flags file and the AutoAttack log are
rebuilt over every record. `--overwrite`, or an evaluation of different points (or of a
rewritten checkpoint), replaces the earlier records, with a one-line message naming them;
the replacement takes effect only when the new evaluation is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from advmem.version import __version__
from advmem.device import resolve_device
from advmem.io import atomic_write_bytes, atomic_write_json
from advmem.errors import UserError
from advmem.evaluation.attacks import WHITE_BOX, AttackSettings, exact_model, exact_view, passes, run_white_box
from advmem.progress import Progress, pass_of
from advmem.recipe import budget_value
from advmem.data import DataConfig, build_data
from advmem.engine.checkpoint import build_from_checkpoint
from advmem.engine.rundir import RunDir
from advmem.evaluation.autoattack import run_autoattack
from advmem.evaluation.checks import Check, run_checks
from advmem.evaluation.loading import build_external, is_advmem_checkpoint

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
                   echo: Callable[[str], None] = lambda m: None, progress: Progress | None = None,
                   attack_view: bool = True) -> dict[str, Any]:
    """Run `attacks` on (x, y); returns accuracies, per-sample flags and sanity checks. `progress`:
    the phase whose display shows each attack (rate and ETA). `attack_view`: attack through the
    bit-exact view (`exact_view`: the same flags, faster on a CPU); False runs the model as it is."""
    with exact_view(attack_view):
        return _evaluate_model(model, x, y, attacks=attacks, settings=settings, num_classes=num_classes,
                               checks=checks, n_check=n_check, state=state, aa_log=aa_log, echo=echo,
                               progress=progress)


def _evaluate_model(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, attacks: list[str],
                    settings: AttackSettings, num_classes: int, checks: bool, n_check: int,
                    state: EvalState | None, aa_log: Path | None, echo: Callable[[str], None],
                    progress: Progress | None) -> dict[str, Any]:
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
                exact_model(model), x, y, tier=tier, eps=settings.eps, norm=settings.norm, seed=settings.seed,
                batch_size=settings.batch_size, num_classes=num_classes, log_path=aa_log,
                done=state.aa_done(tier), on_stage=lambda comp, f, t=tier: state.aa_put(t, comp, f), echo=echo,
                progress=progress)
            raw[name] = robust
            aa_info[name] = {"version": tier, "accuracy_after": after, "warnings": warnings}
            state.put(name, robust)
        else:
            echo(f"  {name}: {len(x)} points")
            with pass_of(progress, name, len(x) * passes(name, settings)) as bar:
                raw[name] = run_white_box(name, model, x, y, settings, on_batch=bar.update)
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
    white_raw = {k: v for k, v in result["attacks_raw"].items() if k in WHITE_BOX}
    warnings = [msg for aa in aa_info.values() for msg in aa["warnings"]]
    result.update(sanity_checks(model, x, y, settings, num_classes=num_classes, clean_acc=clean_acc,
                                white_raw=white_raw, aa_warnings=warnings, n_check=n_check, echo=echo,
                                progress=progress)
                  if checks else {"sanity": {"enabled": False}, "sanity_flags": []})
    result["flagged"] = bool(result["sanity_flags"])
    return result


def sanity_checks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, settings: AttackSettings, *,
                  num_classes: int, clean_acc: float, white_raw: dict[str, float], aa_warnings: list[str],
                  n_check: int, echo: Callable[[str], None] = lambda m: None,
                  progress: Progress | None = None) -> dict[str, Any]:
    """The sanity checks (`sanity`, `sanity_flags`); `white_raw` and `aa_warnings` come from every
    attack in the results, so a check sees the whole evaluation."""
    echo(f"  sanity checks on {min(n_check, len(x))} points")
    with pass_of(progress, "sanity checks"):  # no count: the display shows the time spent
        found = run_checks(model, x, y, settings, num_classes=num_classes, full_clean_acc=clean_acc,
                           full_raw_accs=white_raw, n=n_check)
    for msg in aa_warnings:  # AutoAttack's own warnings are flags too
        if "zero gradient" in msg or "Square Attack" in msg or "randomized" in msg or "probability" in msg:
            found.append(Check("autoattack_warning", True, f"pyautoattack: {msg}"))
            break
    return {"sanity": {"enabled": True, "n_points": min(n_check, len(x)),
                       "checks": {c.name: c.as_dict() for c in found}},
            "sanity_flags": sorted({c.name for c in found if c.flagged})}


# ---------------------------------------------------------------------------------------------
# Checkpoints and targets


EXTERNAL_FLAGS = {"arch": "--arch", "dataset": "--dataset", "num_classes": "--num-classes",
                  "model_kwargs": "--model-kwargs", "norm": "--norm", "no_normalize": "--no-normalize",
                  "mean": "--mean", "std": "--std"}


def refuse_external_flags(paths: list[Path], external: dict[str, Any]) -> None:
    """The flags that describe an external .pt/.pth file contradict an advmem checkpoint, whose sidecar
    records its architecture, dataset and threat model: refuse them rather than ignore them."""
    given = [flag for key, flag in EXTERNAL_FLAGS.items() if external.get(key) not in (None, False, {}, [])]
    ours = [p for p in paths if is_advmem_checkpoint(p)]
    if given and ours:
        raise UserError(f"{', '.join(given)} describe an external .pt/.pth checkpoint, but {ours[0]} is an advmem "
                        "checkpoint whose sidecar records its architecture, dataset and threat model; drop "
                        f"{'them' if len(given) > 1 else 'it'} (to evaluate under another budget, use --eps)")


def checkpoints_of(target: str | Path, which: str = "both") -> list[Path]:
    """The checkpoints `advmem eval` evaluates: a run's best and/or last, or one file."""
    path = Path(target)
    if path.is_dir():
        if RunDir(path).is_run():
            RunDir(path).check_readable()  # refuses a run written by a newer advmem
        stems = {"both": ("best", "last"), "best": ("best",), "last": ("last",)}[which]
        found = [path / "checkpoints" / f"{s}.safetensors" for s in stems]
        found = [p for p in found if p.is_file()]
        if not found:
            wanted = " or ".join(s + ".safetensors" for s in stems)
            if RunDir(path).is_run():
                raise UserError(f"{path}: no checkpoints/{wanted}: the run has not completed an epoch yet (interrupted "
                                f"or still training?); continue it with 'advmem train --resume {path}', then evaluate")
            raise UserError(f"{path}: no checkpoints/{wanted} and no recipe.yaml: not an advmem run directory; "
                            "pass a directory made by 'advmem train' or a checkpoint file")
        return found
    if not path.exists() and not path.with_suffix(".safetensors").exists():
        raise UserError(f"{path}: no such run directory or checkpoint file")
    return [path]


def dataset_split(meta: dict[str, Any], split: str, device: torch.device, bundle=None):
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
    if is_advmem_checkpoint(path):
        model, meta = build_from_checkpoint(path, device)
        return model, meta, path.with_suffix(".safetensors"), None
    model, meta, bundle = build_external(
        path, arch=opts.get("arch"), dataset=opts.get("dataset"), num_classes=opts.get("num_classes"),
        model_kwargs=opts.get("model_kwargs") or {}, mean=opts.get("mean"), std=opts.get("std"),
        no_normalize=bool(opts.get("no_normalize")), norm=opts.get("norm"), eps=opts.get("eps"),
        device=device)
    return model, meta, path, bundle


def output_stem(weights: Path, out_dir: str | Path | None) -> Path:
    stem = weights.with_suffix("")
    return Path(out_dir) / stem.name if out_dir else stem


def save_flags(path: Path, index: torch.Tensor, labels: torch.Tensor, result: dict[str, Any]) -> None:
    arrays = {"index": index.cpu().numpy(), "label": labels.cpu().numpy(),
              "robust": result["robust"].numpy()}
    for name, f in result["flags"].items():
        arrays[flags_key(name)] = f.numpy()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# Accumulated results: one record per (attack, settings) on the same points


def flags_key(label: str) -> str:
    """The array name of an attack's flags in .eval.flags.npz (`pgd-cw` -> `pgd_cw`)."""
    return re.sub(r"[^0-9A-Za-z.]+", "_", label).strip("_")


def attack_settings(name: str, s: AttackSettings) -> dict[str, Any]:
    """What changes an attack's result beyond the points (those are in `points`)."""
    if name in ("pgd", "pgd-cw"):
        return {"steps": s.steps, "restarts": s.restarts, "step": s.step}
    if name in AUTOATTACKS:
        return {"version": AUTOATTACKS[name]}
    return {}


def _settings_text(settings: dict[str, Any]) -> str:
    return ",".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())


def assign_labels(records: list[dict[str, Any]]) -> None:
    """Each record's label: the attack name, or name(settings) when one attack has several settings."""
    names = [r["attack"] for r in records]
    for r in records:
        r["label"] = r["attack"] if names.count(r["attack"]) == 1 else f"{r['attack']}({_settings_text(r['settings'])})"


def describe(records: list[dict[str, Any]], points: dict[str, Any] | None) -> str:
    names = ", ".join(r.get("label", r.get("attack", "?")) for r in records) or "clean only"
    if not points:
        return names
    return f"{names} on {points.get('split')}, {points.get('n_examples')} points, seed {points.get('seed')}"


POINT_WORDS = {"weights": "checkpoint weights", "model": "model", "split": "split", "n_examples": "n_examples",
               "seed": "seed", "eps_value": "eps", "threat_model": "threat model"}


def _point_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    changes = []
    for key, word in POINT_WORDS.items():
        if old.get(key) != new.get(key):
            changes.append(f"the {word} changed (rewritten since)" if key == "weights"
                           else f"{word} {old.get(key)} -> {new.get(key)}")
    return ", ".join(changes)


@dataclass
class Previous:
    """What an earlier eval.json of the same stem holds and what this evaluation does with it."""

    records: list[dict[str, Any]] = field(default_factory=list)  # kept, with their "flags" tensors
    sanity: dict[str, Any] | None = None
    dropped: str | None = None  # one line: what is replaced and why


def read_previous(stem: Path, points: dict[str, Any], index: torch.Tensor, overwrite: bool) -> Previous:
    """The records of `<stem>.eval.json` this evaluation adds to; refuses (UserError) files it cannot
    combine and would otherwise destroy. Reads only."""
    json_path, flags_path = Path(f"{stem}.eval.json"), Path(f"{stem}.eval.flags.npz")
    if not json_path.exists():
        return Previous()
    try:
        old = json.loads(json_path.read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        if overwrite:
            return Previous(dropped=f"{json_path}: --overwrite: replacing an unreadable earlier result "
                                    f"({type(err).__name__})")
        raise UserError(f"{json_path}: the earlier result is not readable JSON ({type(err).__name__}); "
                        "move it away, or pass --overwrite to replace it") from None
    records = old.get("results")
    legacy = not isinstance(records, list) or not isinstance(old.get("points"), dict)
    if legacy:
        attacks = old.get("attacks") if isinstance(old.get("attacks"), dict) else {}
        what = f"{', '.join(attacks) or 'clean only'} on {old.get('split')}, {old.get('n_examples')} points"
        if not overwrite:
            raise UserError(f"{json_path}: written by an earlier advmem without per-attack records ({what}), so "
                            "new results cannot be added to it; pass --overwrite to replace it, or move it away")
        return Previous(dropped=f"{json_path}: --overwrite: replacing the earlier results ({what})")
    if overwrite:
        return Previous(dropped=f"{json_path}: --overwrite: replacing the earlier results "
                                f"({describe(records, old['points'])})")
    changes = _point_changes(old["points"], points)
    if changes:
        return Previous(dropped=f"{json_path}: replacing the earlier results ({describe(records, old['points'])}): "
                                f"this evaluation is of different points ({changes}), which cannot share a worst "
                                "case; pass the same --split/--n-examples/--seed/--eps to add to them")
    fix = "move both away, or pass --overwrite to replace them"
    try:
        with np.load(flags_path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{flags_path}: the per-sample flags of {json_path.name} are missing or unreadable "
                        f"({type(err).__name__}), so its results cannot be combined with new ones; {fix}") from None
    kept = []
    for r in records:
        key = r.get("flags_key") if isinstance(r, dict) else None
        if key not in arrays or "index" not in arrays or not np.array_equal(arrays["index"], index.cpu().numpy()) \
                or len(arrays[key]) != len(index):
            raise UserError(f"{flags_path} does not match {json_path.name} (no per-sample flags for "
                            f"{r.get('label', key) if isinstance(r, dict) else r!r}); {fix}")
        kept.append(dict(r, flags=torch.from_numpy(arrays[key].astype(bool))))
    sanity = old.get("sanity") if isinstance(old.get("sanity"), dict) and old["sanity"].get("enabled") else None
    return Previous(records=kept, sanity=sanity)


def _finish_aa_log(final: Path, partial: Path, replace: bool, keep: bool) -> None:
    """Make `<stem>.autoattack.log` hold the logs of exactly the AutoAttack records in eval.json."""
    if partial.exists():
        if replace or not final.exists():
            os.replace(partial, final)
        else:
            atomic_write_bytes(final, final.read_bytes() + partial.read_bytes())
            partial.unlink()
    elif not keep and final.exists():
        final.unlink()


# ---------------------------------------------------------------------------------------------
# The options, then one checkpoint: prepare (load and validate, writes nothing), then run


@dataclass(frozen=True)
class EvalOptions:
    """What `advmem eval` was asked for (one field per command-line option), checked when made: a
    bad value is a one-line UserError before any checkpoint is loaded.

    attacks: names from ATTACKS (None: DEFAULT_ATTACKS; repeats dropped); split / n_examples: the
    points; batch_size, steps, restarts, eps, step_size, seed: the attacks' settings (eps and
    step_size as written, e.g. "8/255"; None: the checkpoint's eps, the default step); device:
    "auto", "cpu", "cuda" or a torch.device; checks / n_check: the sanity checks; which: the
    checkpoints of a run ("best", "last", "both"); out_dir: where results go (None: beside the
    weights); external: how to read a checkpoint not written by advmem; overwrite: rerun what is
    already there; attack_view: attack through the bit-exact view (`exact_view`; False: the model
    as it is, the same flags, slower on a CPU)."""

    attacks: tuple[str, ...] | None = None
    split: str = "test"
    n_examples: int | None = None
    batch_size: int = 256
    steps: int = 20
    restarts: int = 1
    eps: str | None = None
    seed: int = 0
    device: str | torch.device = "auto"
    quiet: bool = False
    step_size: str | None = None
    checks: bool = True
    n_check: int = 64
    which: str = "both"
    out_dir: str | Path | None = None
    external: dict[str, Any] | None = None
    overwrite: bool = False
    attack_view: bool = True

    def __post_init__(self) -> None:
        attacks = tuple(dict.fromkeys(self.attacks or DEFAULT_ATTACKS))
        object.__setattr__(self, "attacks", attacks)
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown:
            raise UserError(f"unknown attack '{unknown[0]}'; choose from: {', '.join(ATTACKS)}")
        for flag, value in (("--steps", self.steps), ("--restarts", self.restarts), ("--batch-size", self.batch_size),
                            ("--n-check", self.n_check), ("--n-examples", self.n_examples)):
            if value is not None and value < 1:
                raise UserError(f"{flag} must be a positive integer, got {value}")
        for flag, text in (("--eps", self.eps), ("--step-size", self.step_size)):
            if text is not None:
                try:
                    if budget_value(text) < 0:
                        raise ValueError
                except ValueError:
                    raise UserError(f"{flag} '{text}' is not a non-negative number or fraction like 8/255") from None

    def resolved_device(self) -> torch.device:
        return self.device if isinstance(self.device, torch.device) else resolve_device(self.device)


@dataclass
class EvalPlan:
    path: Path
    model: torch.nn.Module
    meta: dict[str, Any]
    weights: Path
    data: Any
    settings: AttackSettings
    eps_text: str
    stem: Path
    state: EvalState
    points: dict[str, Any]
    previous: Previous
    to_run: list[str]
    kept_notes: list[str]
    options: EvalOptions


def prepare_checkpoint(path: Path, opts: EvalOptions, device: torch.device) -> EvalPlan:
    """Load the checkpoint and its data, read earlier results; raises UserError before anything is written."""
    attacks, split, n_examples, batch_size = opts.attacks, opts.split, opts.n_examples, opts.batch_size
    steps, restarts, eps, seed, step_size = opts.steps, opts.restarts, opts.eps, opts.seed, opts.step_size
    external, out_dir, overwrite = opts.external, opts.out_dir, opts.overwrite
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
    digest = _file_digest(weights)
    fingerprint = {"weights": digest, "split": split, "n": len(data), "eps": eps_value, "norm": norm,
                   "steps": steps, "restarts": restarts, "step": settings.step, "seed": seed,
                   "batch_size": batch_size, "advmem": __version__}
    arch = json.dumps(meta["architecture"], sort_keys=True, default=str)
    points = {"weights": digest, "model": hashlib.sha256(arch.encode()).hexdigest()[:16], "split": split,
              "n_examples": len(data), "seed": seed, "eps_value": eps_value, "threat_model": norm}
    previous = read_previous(stem, points, data.index, overwrite)
    have = {(r["attack"], json.dumps(r["settings"], sort_keys=True)): r for r in previous.records}
    to_run, kept_notes = [], []
    for a in attacks:
        if a == "clean":
            continue
        if (a, json.dumps(attack_settings(a, settings), sort_keys=True)) in have:
            kept_notes.append(a)
        else:
            to_run.append(a)
    return EvalPlan(path=Path(path), model=model, meta=meta, weights=weights, data=data, settings=settings,
                    eps_text=eps_text, stem=stem, state=EvalState(Path(f"{stem}.eval.state.json"), fingerprint),
                    points=points, previous=previous, to_run=to_run, kept_notes=kept_notes,
                    options=opts)


def run_plan(plan: EvalPlan, *, quiet: bool = False) -> dict[str, Any]:
    echo = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr))
    stem, data, settings, meta, prev = plan.stem, plan.data, plan.settings, plan.meta, plan.previous
    json_path, flags_path = Path(f"{stem}.eval.json"), Path(f"{stem}.eval.flags.npz")
    if prev.dropped:
        print(f"advmem eval: {prev.dropped}", file=sys.stderr)  # always shown: results are being replaced
    if plan.kept_notes:
        echo(f"advmem eval: {', '.join(plan.kept_notes)}: already in {json_path.name} with these settings, kept "
             "(--overwrite reruns)")
    if plan.state.resumed:
        echo(f"advmem eval: resuming {plan.weights.name}: {', '.join(plan.state.resumed)} already done")
    source = f" (threat model from {meta['threat_model_from']})" if meta.get("threat_model_from") else ""
    echo(f"advmem eval: {plan.weights} on {plan.points['split']} ({len(data)} points), {settings.norm} "
         f"eps={plan.eps_text}{source}")
    final_log, partial_log = Path(f"{stem}.autoattack.log"), Path(f"{stem}.autoattack.log.partial")
    aa_log = partial_log if any(a in AUTOATTACKS for a in plan.to_run) else None
    x = data.all_float()
    num_classes = meta["architecture"]["num_classes"]
    shown = f"{meta['run']}/{plan.weights.stem}" if meta.get("run") else plan.weights.stem
    with Progress(f"eval {shown}", enabled=not quiet) as phase:
        result = evaluate_model(plan.model, x, data.y, attacks=["clean"] + plan.to_run, settings=settings,
                                num_classes=num_classes, checks=False, state=plan.state, aa_log=aa_log, echo=echo,
                                progress=phase, attack_view=plan.options.attack_view)
    when = time.strftime("%Y-%m-%dT%H:%M:%S")
    records = [{k: v for k, v in r.items()} for r in prev.records]
    for name in plan.to_run:
        records.append({"attack": name, "settings": attack_settings(name, settings), "acc": result["attacks"][name],
                        "acc_raw": result["attacks_raw"][name], "autoattack": result["autoattack"].get(name),
                        "evaluated": when, "flags": result["flags"][name], "versions": versions()})
    assign_labels(records)
    clean = result["flags"]["clean"]
    robust = clean.clone()
    for r in records:
        robust &= r["flags"]
    robust_acc = _acc(robust)
    if plan.options.checks:
        white_raw = {r["label"]: r["acc_raw"] for r in records if r["attack"] in WHITE_BOX}
        warnings = [m for r in records if r.get("autoattack") for m in r["autoattack"].get("warnings", [])]
        with Progress(f"eval {shown}", enabled=not quiet, since=phase) as checks, exact_view(plan.options.attack_view):
            sanity = sanity_checks(plan.model, x, data.y, settings, num_classes=num_classes,
                                   clean_acc=result["clean_acc"], white_raw=white_raw, aa_warnings=warnings,
                                   n_check=plan.options.n_check, echo=echo, progress=checks)
    elif prev.sanity is not None:
        sanity = {"sanity": prev.sanity, "sanity_flags": sorted(n for n, c in prev.sanity.get("checks", {}).items()
                                                                if c.get("flagged"))}
    else:
        sanity = {"sanity": {"enabled": False}, "sanity_flags": []}
    for r in records:
        r["flags_key"] = flags_key(r["label"])
    save_flags(flags_path, data.index, data.y,
               {"robust": robust, "flags": {"clean": clean, **{r["label"]: r["flags"] for r in records}}})
    aa_records = [r for r in records if r["attack"] in AUTOATTACKS]
    _finish_aa_log(final_log, partial_log, replace=prev.dropped is not None, keep=bool(aa_records))
    headline = next((r for r in aa_records if r["attack"] == "autoattack"), aa_records[0] if aa_records else None)
    pgd_like = [r for r in records if r["attack"] in ("pgd", "pgd-cw")]
    pgd_settings = pgd_like[-1]["settings"] if pgd_like else attack_settings("pgd", settings)
    step_text = f"{pgd_settings['step']:.6g}"
    out = {
        "checkpoint": str(plan.path),
        "split": plan.points["split"],
        "clean_acc": result["clean_acc"],
        "autoattack_acc": headline["acc"] if headline else None,
        "autoattack_version": headline["settings"]["version"] if headline else None,
        "robust_acc": robust_acc,
        "robust_acc_is": "per-sample worst case over: " + ", ".join(["clean"] + [r["label"] for r in records]),
        "attacks": {r["label"]: r["acc"] for r in records},
        "attacks_raw": {r["label"]: r["acc_raw"] for r in records},
        "autoattack": {r["label"]: r["autoattack"] for r in aa_records},
        "eps": plan.eps_text,
        "eps_value": settings.eps,
        "threat_model": settings.norm,
        "dataset": meta["dataset"],
        "architecture": meta["architecture"]["name"],
        "additional_data": False,
        "n_examples": len(data),
        "pgd": {"steps": pgd_settings["steps"], "restarts": pgd_settings["restarts"], "step_size": step_text},
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "epoch": meta.get("epoch"),
        "method": meta.get("method"),
        "run": meta.get("run"),
        "sanity": sanity["sanity"],
        "sanity_flags": sanity["sanity_flags"],
        "flagged": bool(sanity["sanity_flags"]),
        "flags_file": str(flags_path),
        "autoattack_log": str(final_log) if aa_records else None,
        "points": plan.points,
        "results": [{k: v for k, v in r.items() if k != "flags"} for r in records],
        "replaced": prev.dropped,
        "versions": versions(),
    }
    atomic_write_json(json_path, out)
    plan.state.finish()
    out["eval_json"] = str(json_path)
    return out


def _same_evaluation(plan: EvalPlan) -> str:
    """What an evaluation of `plan` computes: two plans with the same text (a run whose best and last
    are one epoch: the same weights, points, attacks and earlier records) get the same result."""
    return json.dumps({"points": plan.points, "to_run": plan.to_run, "options": plan.options,
                       "settings": [attack_settings(a, plan.settings) for a in plan.to_run],
                       "kept": [(r["attack"], r["settings"]) for r in plan.previous.records],
                       "sanity": plan.previous.sanity is not None}, sort_keys=True, default=str)


def write_copy(result: dict[str, Any], plan: EvalPlan, quiet: bool = False) -> dict[str, Any]:
    """Write `result` (of other checkpoint files with the same weights) as `plan`'s outputs: its
    eval.json names its own checkpoint and says whose evaluation it shares; flags and AutoAttack log
    are copied."""
    echo = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr))
    if plan.previous.dropped:
        print(f"advmem eval: {plan.previous.dropped}", file=sys.stderr)
    stem = plan.stem
    json_path, flags_path, log = Path(f"{stem}.eval.json"), Path(f"{stem}.eval.flags.npz"), Path(f"{stem}.autoattack.log")
    atomic_write_bytes(flags_path, Path(result["flags_file"]).read_bytes())
    if result.get("autoattack_log"):
        atomic_write_bytes(log, Path(result["autoattack_log"]).read_bytes())
    elif log.exists():
        log.unlink()
    out = {k: v for k, v in result.items() if k != "eval_json"}
    out.update(checkpoint=str(plan.path), flags_file=str(flags_path), replaced=plan.previous.dropped,
               autoattack_log=str(log) if result.get("autoattack_log") else None,
               same_weights_as=result["checkpoint"])
    atomic_write_json(json_path, out)
    plan.state.finish()
    echo(f"advmem eval: {plan.weights.name}: the same weights as {Path(result['checkpoint']).name} (epoch "
         f"{out.get('epoch')}), evaluated once; results written to {json_path.name} too")
    out["eval_json"] = str(json_path)
    return out


def run_plans(plans: list[EvalPlan], *, quiet: bool = False) -> list[dict[str, Any]]:
    """Run the plans, each distinct evaluation once: when best and last are the same weights (the best
    epoch was the last) the second gets a copy of the first's results instead of a second run."""
    done: dict[str, dict[str, Any]] = {}
    out = []
    for plan in plans:
        key = _same_evaluation(plan)
        out.append(write_copy(done[key], plan, quiet) if key in done else run_plan(plan, quiet=quiet))
        done.setdefault(key, out[-1])
    return out


def evaluate_checkpoint(path: Path, options: EvalOptions | None = None, /, **fields: Any) -> dict[str, Any]:
    """Evaluate one checkpoint, adding to its earlier results on the same points (see the module doc).
    `options`, or the fields of an `EvalOptions`."""
    opts = _options(options, fields)
    return run_plan(prepare_checkpoint(Path(path), opts, opts.resolved_device()), quiet=opts.quiet)


def evaluate_target(target: str, options: EvalOptions | None = None, /, **fields: Any) -> list[dict[str, Any]]:
    """Check the options and every checkpoint of `target` (a run or a file), then evaluate each: a bad
    checkpoint is refused before any result is written. `options`, or the fields of an `EvalOptions`."""
    opts = _options(options, fields)
    dev = opts.resolved_device()
    paths = checkpoints_of(target, opts.which)
    refuse_external_flags(paths, opts.external or {})
    plans = [prepare_checkpoint(p, opts, dev) for p in paths]
    return run_plans(plans, quiet=opts.quiet)


def _options(options: EvalOptions | None, fields: dict[str, Any]) -> EvalOptions:
    if options is not None and fields:
        raise TypeError("pass an EvalOptions or its fields, not both")
    return options if options is not None else EvalOptions(**fields)
