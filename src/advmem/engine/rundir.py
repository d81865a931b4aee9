"""The run directory: the one place a run's results live, read by every later stage.

    runs/<name>/recipe.yaml        fully resolved recipe
                metrics.jsonl/.csv one row per completed epoch (rewritten atomically)
                checkpoints/       best.*, last.*, init.* (safetensors + JSON sidecar)
                resume.pt          optimizer, RNG and method state for --resume
                curves.png         learning curves
                summary.json       best and last numbers
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from advmem import __version__
from advmem.engine.io import atomic_write_json, atomic_write_text
from advmem.errors import UserError


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    recipe_path = property(lambda self: self.path / "recipe.yaml")
    metrics_jsonl = property(lambda self: self.path / "metrics.jsonl")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    checkpoints = property(lambda self: self.path / "checkpoints")
    resume_path = property(lambda self: self.path / "resume.pt")
    summary_path = property(lambda self: self.path / "summary.json")
    curves_path = property(lambda self: self.path / "curves.png")

    def is_run(self) -> bool:
        return self.recipe_path.is_file()

    def check_start(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse to clobber an existing run; nothing is written here."""
        if resume:
            if not self.is_run():
                raise UserError(f"{self.path}: not an advmem run directory (no recipe.yaml); check the path")
            return
        if self.path.exists() and any(self.path.iterdir()) and not overwrite:
            raise UserError(f"run directory {self.path} exists; pass --resume {self.path} to continue it, "
                            "--overwrite to replace it, or --name to pick another name")

    def prepare(self, recipe, data_info: dict[str, Any], *, overwrite: bool) -> None:
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if not self.recipe_path.exists():
            atomic_write_text(self.recipe_path, recipe.to_yaml())
            atomic_write_json(self.path / "data.json", data_info)

    def load_recipe(self, overrides: list[str] | None = None):
        from advmem.recipe import apply_overrides, recipe_from_dict

        try:
            data = yaml.safe_load(self.recipe_path.read_text())
        except (OSError, yaml.YAMLError):
            raise UserError(f"{self.recipe_path}: missing or unreadable; not a usable run directory") from None
        return recipe_from_dict(apply_overrides(data, overrides or []), source=str(self.recipe_path))

    # -- metrics ---------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_jsonl.exists():
            return []
        rows = []
        for line in self.metrics_jsonl.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
        return rows

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics_jsonl, "".join(json.dumps(row) + "\n" for row in rows))
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_csv, buffer.getvalue())

    # -- summary and plots -------------------------------------------------------------------
    def write_summary(self, rows: list[dict[str, Any]], best: dict[str, Any] | None, recipe) -> dict[str, Any]:
        evaluated = [row for row in rows if "test_nat_acc" in row]
        last = evaluated[-1] if evaluated else {}
        best_row = next((row for row in evaluated if best and row["epoch"] == best["epoch"]), {})

        def pick(row: dict[str, Any]) -> dict[str, Any]:
            keys = ["epoch"] + [f"{s}_{k}" for s in ("train", "val", "test", "test_full") for k in ("nat_acc", "rob_acc")]
            return {k: row[k] for k in keys if k in row}

        summary = {
            "run": recipe.name,
            "method": recipe.method.name,
            "model": recipe.model.name,
            "dataset": recipe.data.dataset,
            "threat_model": recipe.attack.norm,
            "eps": recipe.attack.eps,
            "epochs": recipe.optim.epochs,
            "best_selected_on": best["split"] if best else None,
            "best": pick(best_row),
            "last": pick(last),
            "advmem_version": __version__,
            "recipe_hash": recipe.hash(),
        }
        atomic_write_json(self.summary_path, summary)
        return summary

    def plot_curves(self, rows: list[dict[str, Any]]) -> None:
        from advmem.report.plots import plot_learning_curves

        plot_learning_curves(rows, self.curves_path, title=self.path.name)
