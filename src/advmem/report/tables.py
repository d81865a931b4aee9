"""What a report or a comparison reads from run directories, and the tables built from it.

Everything comes from files in the run directory (recipe.yaml, metrics.jsonl, summary.json,
checkpoints/*.eval.json) plus whatever memorization outputs a study or analysis left there
(measures.csv, grad_stability.json, per_sample.parquet, other PNG figures). A directory that is
not a run but holds such outputs (a study folder) is read for those alone.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advmem.errors import UserError

ARTIFACT_NAMES = ("measures.csv", "grad_stability.json", "per_sample.parquet")
COLUMNS = ["run", "method", "checkpoint", "epoch", "train_nat", "train_rob", "val_nat", "val_rob", "test_nat",
           "test_rob", "eval_clean", "eval_robust", "eval_autoattack", "eval_threat", "sanity"]


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
    info = RunInfo(path=path, name=path.name, is_run=(path / "recipe.yaml").is_file())
    if info.is_run:
        from advmem.io import read_input_text
        from advmem.engine.rundir import read_metrics_file
        from advmem.recipe import parse_recipe_text

        info.recipe = parse_recipe_text(read_input_text(path / "recipe.yaml", "recipe"), str(path / "recipe.yaml"))
        metrics = path / "metrics.jsonl"
        if metrics.is_file():
            info.rows = read_metrics_file(metrics)
        if (path / "summary.json").is_file():
            try:
                summary = json.loads(read_input_text(path / "summary.json", "summary"))
            except (ValueError, RecursionError):
                summary = None
            if not isinstance(summary, dict):
                raise UserError(f"{path / 'summary.json'}: not a JSON object (corrupt or edited); restore it, or "
                                f"resume the run (advmem train --resume {path}), which rewrites it")
            info.summary = summary
        for f in sorted((path / "checkpoints").glob("*.eval.json")):
            try:
                info.evals[f.name[: -len(".eval.json")]] = json.loads(read_input_text(f, "evaluation result"))
            except (ValueError, RecursionError):
                continue
    for f in sorted(p for p in path.rglob("*") if p.is_file() and len(p.relative_to(path).parts) <= 4):
        if f.name in ARTIFACT_NAMES:
            info.artifacts.append(f)
        elif f.suffix == ".png" and f.name != "curves.png" and "export" not in f.parts:
            info.figures.append(f)
    if not info.is_run and not info.artifacts and not info.figures:
        raise UserError(f"{path}: neither an advmem run directory (no recipe.yaml) nor a folder with study outputs "
                        f"({', '.join(ARTIFACT_NAMES)}, figures)")
    return info


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
        values = [json.dumps(f.get(k, "—"), default=str) if not isinstance(f.get(k), str) else f[k] for f in flats]
        if len(flats) == 1 or len(set(values)) > 1:
            rows.append([k] + values)
    return ["key"] + names, rows


def pct(v: Any) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) and v == v else "-"


def sanity_cell(ev: dict[str, Any] | None) -> str:
    if not ev:
        return "-"
    if not ev.get("sanity", {}).get("enabled", False):
        return "unchecked"
    return "FLAGGED:" + ",".join(ev["sanity_flags"]) if ev.get("flagged") else "ok"


def comparison_rows(runs: list[RunInfo]) -> list[dict[str, str]]:
    """One row per run and checkpoint (best, last): training-time metrics and `advmem eval` results.
    Accuracies in percent, two decimals; a flagged evaluation says FLAGGED with the flag names."""
    out = []
    for r in runs:
        if not r.is_run:
            continue
        for label in ("best", "last"):
            row = r.summary.get(label) or {}
            ev = r.evals.get(label)
            out.append({
                "run": r.name, "method": r.method, "checkpoint": label, "epoch": str(row.get("epoch", "-")),
                **{f"{s}_{k}": pct(row.get(f"{s}_{k}_acc")) for s in ("train", "val", "test") for k in ("nat", "rob")},
                "eval_clean": pct(ev["clean_acc"]) if ev else "-",
                "eval_robust": pct(ev["robust_acc"]) if ev else "-",
                "eval_autoattack": pct(ev.get("autoattack_acc")) if ev else "-",
                "eval_threat": f"{ev['threat_model']}:{ev['eps']}:n={ev['n_examples']}" if ev else "-",
                "sanity": sanity_cell(ev),
            })
    return out


def format_terminal(rows: list[dict[str, str]]) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def to_csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n\nAccuracies in %. sanity: `ok`, `unchecked`, or `FLAGGED:` with the sanity flags " \
                              "of `advmem eval` (see docs/evaluation.md).\n"
