"""What a report or a comparison reads from run directories, and the tables built from it.

Everything comes from files in the run directory (recipe.yaml, metrics.jsonl, summary.json,
checkpoints/*.eval.json) plus whatever memorization outputs a study or analysis left there
(measures.csv, grad_stability.json, per_sample.parquet, other PNG figures). A study folder (a
directory that is not a run) stands for the runs in it (`runs/*` or run directories as children)
plus its own outputs.

Every robust number says how it was produced: the `advmem eval` columns carry a protocol
(attacks, split, points, threat model); rows with different protocols get different ids and a
note, so numbers measured differently are never read as one ranking.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advmem.engine.rundir import RunDir
from advmem.errors import UserError

ARTIFACT_NAMES = ("measures.csv", "grad_stability.json", "per_sample.parquet")
COLUMNS = ["run", "method", "checkpoint", "epoch", "train_nat", "train_rob", "val_nat", "val_rob", "test_nat",
           "test_rob", "test_full_nat", "test_full_rob", "eval_clean", "eval_robust", "eval_autoattack",
           "eval_protocol", "sanity"]
CSV_COLUMNS = COLUMNS + ["eval_protocol_detail"]  # the CSV spells each protocol out (no legend there)
MISSING = "\u2014"  # an em dash: the key is absent from that run's recipe


@dataclass
class RunInfo:
    path: Path
    name: str
    is_run: bool
    recipe: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # "best"/"last"/stem -> eval.json
    artifacts: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    @property
    def method(self) -> str:
        m = self.recipe.get("method")
        return (m.get("name") if isinstance(m, dict) else m) or self.summary.get("method") or "?"


def load_run(path: str | Path) -> RunInfo:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a directory; pass advmem run directories (runs/NAME) or study folders")
    run = RunDir(path)
    info = RunInfo(path=path, name=path.name, is_run=run.is_run())
    if info.is_run:
        info.recipe = run.recipe_data()
        info.rows = run.read_metrics()
        info.summary = run.read_summary()
        info.evals = run.read_evals()
    for f in _outputs(path):
        (info.artifacts if f.name in ARTIFACT_NAMES else info.figures).append(f)
    if not info.is_run and not info.artifacts and not info.figures:
        raise UserError(f"{path}: neither an advmem run directory (no recipe.yaml) nor a study folder (runs/ "
                        f"with run directories, or {', '.join(ARTIFACT_NAMES)}, figures)")
    return info


def child_runs(path: Path) -> list[Path]:
    """The run directories of a study folder: `path/runs/*`, else `path/*`, with a recipe.yaml."""
    for parent in (path / "runs", path):
        found = sorted(p for p in parent.glob("*") if (p / "recipe.yaml").is_file()) if parent.is_dir() else []
        if found:
            return found
    return []


def load_targets(paths: list[str | Path]) -> list[RunInfo]:
    """The runs named on the command line; a study folder contributes its runs, then its own outputs
    (figures, measures) without those already inside its runs."""
    out: list[RunInfo] = []
    for p in map(Path, paths):
        runs = child_runs(p) if p.is_dir() and not (p / "recipe.yaml").is_file() else []
        if not runs:
            out.append(load_run(p))
            continue
        out += [load_run(r) for r in runs]
        own = RunInfo(path=p, name=p.name, is_run=False)
        inside = tuple(runs)
        for f in _outputs(p):
            if not any(r in f.parents for r in inside):
                (own.artifacts if f.name in ARTIFACT_NAMES else own.figures).append(f)
        if own.artifacts or own.figures:
            out.append(own)
    return out


def _outputs(path: Path) -> list[Path]:
    """Memorization outputs and figures up to four levels down (not curves.png, not exports)."""
    return [f for f in sorted(p for p in path.rglob("*") if p.is_file() and len(p.relative_to(path).parts) <= 4)
            if f.name in ARTIFACT_NAMES or (f.suffix == ".png" and f.name != "curves.png" and "export" not in f.parts)]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def recipe_differences(runs: list[RunInfo]) -> tuple[list[str], list[list[str]]]:
    """Keys whose values differ between the runs' recipes (all keys if there is one run)."""
    flats = [_flatten(r.recipe) for r in runs if r.is_run]
    names = [r.name for r in runs if r.is_run]
    keys = sorted(set().union(*flats)) if flats else []
    rows = []
    for k in keys:
        values = [_value_text(f[k]) if k in f else MISSING for f in flats]
        if len(flats) == 1 or len(set(values)) > 1:
            rows.append([k] + values)
    return ["key"] + names, rows


def _value_text(v: Any) -> str:
    """A recipe value as written: strings bare, others as JSON with non-ASCII characters kept."""
    return v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)


def _get(recipe: dict[str, Any], dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(recipe, dict) or part not in recipe:
            return default
        recipe = recipe[part]
    return recipe


def attack_text(recipe: dict[str, Any]) -> tuple[str, str]:
    """(training attack, per-epoch evaluation attack) of a recipe, e.g. 'PGD-10 step 2/255'."""
    steps, step = _get(recipe, "attack.steps", "?"), _get(recipe, "attack.step_size", "?")
    ev_steps = _get(recipe, "eval.attack.steps", "?")
    ev_step = _get(recipe, "eval.attack.step_size") or step
    ev_eps = _get(recipe, "eval.attack.eps") or _get(recipe, "attack.eps", "?")
    restarts = _get(recipe, "eval.attack.restarts", 1)
    return (f"PGD-{steps} step {step}",
            f"PGD-{ev_steps}{f'x{restarts}' if restarts != 1 else ''} step {ev_step} eps {ev_eps}")


SHARED = (("dataset", lambda r: _get(r, "data.dataset", "?")),
          ("model", lambda r: _get(r, "model.name", "?")),
          ("threat model", lambda r: f"{_get(r, 'attack.norm', '?')} eps {_get(r, 'attack.eps', '?')}"),
          ("training attack", lambda r: attack_text(r)[0]),
          ("per-epoch robust accuracy (train/val/test_rob)", lambda r: attack_text(r)[1]),
          ("test points per epoch", lambda r: _get(r, "data.test_size") or "all"),
          ("epochs", lambda r: _get(r, "optim.epochs", "?")))


def shared_settings(runs: list[RunInfo]) -> list[tuple[str, str]]:
    """(setting, value) for the settings a reader needs first; 'differs: a, b' when the runs disagree."""
    recipes = [r.recipe for r in runs if r.is_run]
    out = []
    for name, get in SHARED:
        values = list(dict.fromkeys(str(get(rec)) for rec in recipes))
        if values:
            out.append((name, values[0] if len(values) == 1 else "differs: " + ", ".join(values)))
    return out


def pct(v: Any) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) and v == v else "-"


def sanity_cell(ev: dict[str, Any] | None) -> str:
    if not ev:
        return "-"
    if not ev.get("sanity", {}).get("enabled", False):
        return "unchecked"
    return "FLAGGED:" + ",".join(ev["sanity_flags"]) if ev.get("flagged") else "ok"


def _attack_name(record: dict[str, Any]) -> str:
    """One attack of a protocol: 'pgd-20', 'pgd-cw-50x5', 'autoattack (standard)', 'fgsm'."""
    attack, settings = record.get("attack", "?"), record.get("settings") or {}
    if attack in ("pgd", "pgd-cw") and "steps" in settings:
        restarts = settings.get("restarts", 1)
        return f"{attack}-{settings['steps']}" + (f"x{restarts}" if restarts != 1 else "")
    if "version" in settings:
        return f"{attack} ({settings['version']})" if attack == "autoattack" else attack
    return attack


def protocol(ev: dict[str, Any]) -> str:
    """How an eval.json's robust accuracy was measured: its attacks, split, number of points and threat
    model, e.g. 'pgd-20 + pgd-cw-20 on test, 500 points, Linf eps 8/255'. Two results with the same
    text were measured the same way (the seed aside)."""
    records = ev.get("results")
    if isinstance(records, list) and records:
        attacks = " + ".join(dict.fromkeys(_attack_name(r) for r in records if isinstance(r, dict)))
    else:  # an eval.json from before per-attack records
        attacks = " + ".join(ev.get("attacks") or {}) or "clean only"
    return (f"{attacks} on {ev.get('split', 'test')}, {ev.get('n_examples', '?')} points, "
            f"{ev.get('threat_model', '?')} eps {ev.get('eps', '?')}")


def eval_stems(r: RunInfo) -> list[str]:
    """A run's evaluated checkpoints: best, last, then any other (epoch-N, init, ...) by name."""
    return [s for s in ("best", "last") if s in r.evals] + sorted(s for s in r.evals if s not in ("best", "last"))


def protocol_ids(runs: list[RunInfo]) -> dict[str, str]:
    """protocol text -> 'P1', 'P2', ... in order of first appearance over the runs' best and last
    evaluations, then their other checkpoints' (so the compare table's ids run without gaps)."""
    ids: dict[str, str] = {}
    for main in (True, False):
        for r in runs:
            for stem in eval_stems(r):
                if (stem in ("best", "last")) == main:
                    ids.setdefault(protocol(r.evals[stem]), f"P{len(ids) + 1}")
    return ids


def comparison_rows(runs: list[RunInfo]) -> list[dict[str, str]]:
    """One row per run and checkpoint (best, last): training-time metrics, the final full-test numbers,
    and `advmem eval` results with the id of their protocol (`protocol_ids`; `eval_protocol_detail`
    spells it out). Accuracies in percent, two decimals; a flagged evaluation says FLAGGED with the
    flag names."""
    ids = protocol_ids(runs)
    out: list[dict[str, str]] = []
    for r in runs:
        if not r.is_run:
            continue
        for label in ("best", "last"):
            row = r.summary.get(label) or {}
            ev = r.evals.get(label)
            detail = protocol(ev) if ev else "-"
            out.append({
                "run": r.name, "method": r.method, "checkpoint": label, "epoch": str(row.get("epoch", "-")),
                **{f"{s}_{k}": pct(row.get(f"{s}_{k}_acc")) for s in ("train", "val", "test", "test_full")
                   for k in ("nat", "rob")},
                "eval_clean": pct(ev["clean_acc"]) if ev else "-",
                "eval_robust": pct(ev["robust_acc"]) if ev else "-",
                "eval_autoattack": pct(ev.get("autoattack_acc")) if ev else "-",
                "eval_protocol": ids[detail] if ev else "-",
                "sanity": sanity_cell(ev),
                "eval_protocol_detail": detail,
            })
    return out


def protocol_notes(rows: list[dict[str, str]]) -> list[str]:
    """The legend of the protocol ids and, when there are several, the warning not to rank across them."""
    legend = dict((r["eval_protocol"], r["eval_protocol_detail"]) for r in rows if r["eval_protocol"] != "-")
    return legend_lines(legend)


def legend_lines(legend: dict[str, str]) -> list[str]:
    if not legend:
        return []
    lines = [f"{pid}: eval_robust = per-sample worst case of {text}" for pid, text in legend.items()]
    if len(legend) > 1:
        lines.append(f"eval_robust comes from {len(legend)} different protocols ({', '.join(legend)}): compare "
                     "numbers only within one protocol; across protocols they are not a ranking.")
    return lines


def format_terminal(rows: list[dict[str, str]]) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines + protocol_notes(rows))


def to_csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    notes = "".join(f"\n- {line}" for line in protocol_notes(rows))
    return "\n".join(lines) + "\n\nAccuracies in %. test_full_*: the last epoch's evaluation on the full test " \
                              "set (when data.test_size subsets it). sanity: `ok`, `unchecked`, or `FLAGGED:` with " \
                              "the sanity flags of `advmem eval` (see docs/evaluation.md).\n" + notes + ("\n" if notes else "")
