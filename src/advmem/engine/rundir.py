"""The run directory: the one place a run's results live, read by every later stage.

    runs/<name>/run.json           run-directory format number and advmem version
                recipe.yaml        fully resolved recipe
                metrics.jsonl/.csv one row per completed epoch (rewritten atomically)
                checkpoints/       best.*, last.*, init.* (safetensors + JSON sidecar)
                resume.pt          optimizer, RNG and method state for --resume
                curves.png         learning curves (drawn by report/plots.py from metrics.jsonl; refreshed
                                   during training, at most every 30 s, and at the end)
                summary.json       best and last numbers (rewritten after every epoch; "complete": false
                                   until the last epoch is done)
                .lock              pid and host of the process writing the run (engine/safety.py)
                user_code.json     only when the recipe named user code: the modules imported, their
                                   distribution/version or file and sha256 (advmem.plugins)
                failure.json       only after a failure: what, where (epoch, step)
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any


from advmem.version import __version__
from advmem.io import atomic_write_json, atomic_write_text, read_input_text
from advmem.engine.safety import LOCK_NAME, check_unlocked, lock_holder
from advmem.errors import UserError

# Bumped when the layout changes incompatibly; a run written with a newer format is refused.
RUN_FORMAT = 1


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
    format_path = property(lambda self: self.path / "run.json")
    user_code_path = property(lambda self: self.path / "user_code.json")

    def is_run(self) -> bool:
        return self.recipe_path.is_file()

    def is_skeleton(self) -> bool:
        """Only what `prepare` creates before run.json: an empty checkpoints/, the lock, temporaries
        (a run killed while its directory was being created). Holds nothing to lose."""
        if not self.path.is_dir():
            return False

        def debris(child: Path) -> bool:
            return child.name == LOCK_NAME or (child.name.startswith(".") and child.name.endswith(".tmp"))

        for child in self.path.iterdir():
            if debris(child):
                continue
            if child.name != "checkpoints" or child.is_symlink() or not child.is_dir():
                return False
            if any(not debris(c) for c in child.iterdir()):
                return False
        return True

    def status(self, recipe) -> str:
        """What this directory holds for `recipe`: the one "is this run done" rule of the sweep and the studies.

        "new": nothing there to lose (no directory, an empty one, or a skeleton: `is_skeleton`);
        "foreign": something that is not a run; "mismatch": a run of another recipe (its recipe.yaml
        hashes differently); then, for a run of this recipe, "running" (another live process holds its
        lock), "complete" (`finished`), "failed" (failure.json) or "incomplete". A run this version
        cannot read (a newer run format) is a UserError. Resuming rather than restarting an
        incomplete or failed run needs resume.pt (`resume_path`)."""
        if not self.path.exists() or self.is_skeleton():
            return "new"
        if not self.is_run():
            return "foreign"
        self.check_readable()
        if self.load_recipe().hash() != recipe.hash():
            return "mismatch"
        if lock_holder(self.path) is not None:
            return "running"
        if self.finished(recipe.optim.epochs):
            return "complete"
        if (self.path / "failure.json").exists():
            return "failed"
        return "incomplete"

    def finished(self, epochs: int) -> bool:
        """Trained to its last epoch: the final summary was written and the metrics end at `epochs`."""
        if not self.summary_complete():
            return False
        rows = self.read_metrics()
        return bool(rows) and rows[-1].get("epoch") == epochs

    def summary_complete(self) -> bool:
        """summary.json is the final one (those of an unfinished run say "complete": false; one
        written before that key existed was final)."""
        try:
            summary = json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(summary, dict) and summary.get("complete", True) is True

    def check_readable(self) -> None:
        """Raise UserError unless this is an advmem run directory this version can read."""
        if not self.path.exists():
            raise UserError(f"{self.path}: no such run directory; check the path (runs live under output_root, default runs/)")
        if not self.path.is_dir():
            raise UserError(f"{self.path}: is a file, not a run directory; pass the run's directory")
        if not self.is_run():
            if self.is_skeleton():
                raise UserError(f"{self.path}: holds no run yet (killed while its directory was being created); "
                                "start the run again from its recipe (advmem train RECIPE), which reuses this directory")
            raise UserError(f"{self.path}: not an advmem run directory (no recipe.yaml); check the path")
        if self.format_path.exists():
            try:
                fmt = json.loads(self.format_path.read_text()).get("format")
            except (OSError, ValueError, AttributeError):
                raise UserError(f"{self.format_path}: unreadable (corrupt); restore it or start a new run") from None
            if not isinstance(fmt, int) or fmt > RUN_FORMAT:
                raise UserError(f"{self.path}: written by a newer advmem (run format {fmt}, this version reads up to "
                                f"{RUN_FORMAT}); upgrade advmem (pip install -U advmem) to use it")

    def check_start(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse to clobber an existing run or one another process is writing; nothing is written here."""
        if resume:
            self.check_readable()
            check_unlocked(self.path)
            return
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path} is a file; pick another run name with --name")
        self._check_creatable()
        if self.is_skeleton():
            # only a lock and an empty checkpoints/: a live writer, or a run killed at its start
            check_unlocked(self.path)
        elif self.path.exists():
            if not overwrite:
                raise UserError(f"run directory {self.path} exists; pass --resume {self.path} to continue it, "
                                "--overwrite to replace it, or --name to pick another name")
            if not self.is_run() and not self.format_path.exists():
                raise UserError(f"{self.path} is not an advmem run directory; refusing to delete it with --overwrite; "
                                "pick another name with --name or output_root")
            check_unlocked(self.path)

    def _check_creatable(self) -> None:
        """Refuse an output_root that cannot hold run directories (a file such as /etc/passwd, a
        read-only place), before anything is built or written."""
        parent = self.path.parent
        ancestor = parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise UserError(f"output_root {parent}: {ancestor} is a file, not a directory; set output_root to a "
                            "directory (default runs/)")
        target = self.path if self.path.is_dir() else ancestor
        if not os.access(target, os.W_OK | os.X_OK):
            raise UserError(f"cannot create runs under {parent}: {target} is not writable; set output_root to a "
                            "writable directory")

    def prepare(self, recipe, data_info: dict[str, Any], *, overwrite: bool) -> None:
        """Create (or, with overwrite, empty) the run directory; the caller holds its lock."""
        if overwrite and self.path.exists():
            for child in self.path.iterdir():
                if child.name == LOCK_NAME:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        for folder in (self.path, self.checkpoints):  # temporaries of a writer killed mid-write
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        if not self.format_path.exists():
            atomic_write_json(self.format_path, {"format": RUN_FORMAT, "advmem_version": __version__})
        if not self.recipe_path.exists():
            atomic_write_text(self.recipe_path, recipe.to_yaml())
            atomic_write_json(self.path / "data.json", data_info)

    def recipe_data(self) -> dict[str, Any]:
        """recipe.yaml as written: a plain dict, not validated (a report shows runs of other versions too)."""
        from advmem.recipe import parse_recipe_text  # pydantic: when a recipe is read

        try:
            text = read_input_text(self.recipe_path, "recipe")
        except FileNotFoundError:
            raise UserError(f"{self.recipe_path}: missing; not a usable run directory") from None
        return parse_recipe_text(text, str(self.recipe_path))

    def load_recipe(self, overrides: list[str] | None = None):
        from advmem.recipe import apply_overrides, recipe_from_dict  # pydantic: when a recipe is read

        return recipe_from_dict(apply_overrides(self.recipe_data(), overrides or []), source=str(self.recipe_path),
                                overrides=overrides)

    def read_summary(self) -> dict[str, Any]:
        """summary.json ({} when there is none yet); a corrupt one is a one-line UserError."""
        if not self.summary_path.is_file():
            return {}
        try:
            summary = json.loads(read_input_text(self.summary_path, "summary"))
        except (ValueError, RecursionError):
            summary = None
        if not isinstance(summary, dict):
            raise UserError(f"{self.summary_path}: not a JSON object (corrupt or edited); restore it, or resume the run "
                            f"(advmem train --resume {self.path}), which rewrites it")
        return summary

    def read_evals(self) -> dict[str, dict[str, Any]]:
        """The `advmem eval` results kept beside the checkpoints: stem (best, last, epoch-N, ...) -> its
        checkpoints/STEM.eval.json; an unreadable one is left out."""
        evals = {}
        for f in sorted(self.checkpoints.glob("*.eval.json")):
            try:
                evals[f.name[: -len(".eval.json")]] = json.loads(read_input_text(f, "evaluation result"))
            except (ValueError, RecursionError):
                continue
        return evals

    def committed_epoch(self) -> tuple[int, str] | None:
        """The latest epoch whose resume state must have been written, judged from the other files.

        Each epoch writes best, last, the metrics and then resume.pt, so a kill during epoch k can
        leave files of epoch k without its resume state; files of epoch k >= 2 (or a summary)
        prove that epoch k - 1 (or the last epoch) was committed. Returns (epoch, which file)."""
        if self.summary_path.is_file():
            try:
                summary = json.loads(self.summary_path.read_text())
                last = summary.get("epochs_completed") or (summary.get("last") or {}).get("epoch")
            except (OSError, ValueError, AttributeError):
                last = None
            return (last if isinstance(last, int) and last > 0 else 1), self.summary_path.name
        found: list[tuple[int, str]] = []
        try:
            epochs = [row.get("epoch") for row in self.read_metrics() if isinstance(row, dict)]
        except UserError:
            epochs = []
        epochs = [e for e in epochs if isinstance(e, int)]
        if epochs:
            found.append((max(epochs) - 1, self.metrics_jsonl.name))
        for stem in ("last", "best"):
            epoch = _checkpoint_epoch(self.checkpoints / stem)
            if epoch is not None:
                found.append((epoch - 1, f"checkpoints/{stem}"))
        best = max(found, default=None)
        return best if best is not None and best[0] >= 1 else None

    # -- metrics ---------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_jsonl.exists():
            return []
        return read_metrics_file(self.metrics_jsonl)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        from advmem.engine.checkpoint import json_safe  # torch and safetensors: only when writing

        rows = json_safe(rows)  # a NaN loss is written as null (JSON has no NaN)
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
    def write_summary(self, rows: list[dict[str, Any]], best: dict[str, Any] | None, recipe, *,
                      complete: bool = True) -> dict[str, Any]:
        """summary.json: best and last evaluated numbers; `complete`: False for the summary an
        unfinished run keeps after each epoch."""
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
            "epochs_completed": rows[-1]["epoch"] if rows else 0,
            "complete": complete,
            "best_selected_on": best["split"] if best else None,
            "best": pick(best_row),
            "last": pick(last),
            "advmem_version": __version__,
            "recipe_hash": recipe.hash(),
        }
        from advmem.engine.checkpoint import json_safe  # torch and safetensors: only when writing

        atomic_write_json(self.summary_path, json_safe(summary))
        return summary


def read_metrics_file(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl: one JSON object per line, or a one-line UserError naming the
    line (binary garbage, a torn or edited line, a value that is not an object)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    rows = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            row = None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: not a JSON object (corrupt or edited); restore the file, or resume "
                            "the run (advmem train --resume), which rewrites it from resume.pt") from None
        rows.append(row)
    return rows


def _checkpoint_epoch(stem: Path) -> int | None:
    """The epoch recorded with checkpoint `stem` (embedded or sidecar metadata); None if unreadable."""
    from advmem.engine.checkpoint import embedded_meta  # torch and safetensors: only when a checkpoint is read

    meta = embedded_meta(stem.with_suffix(".safetensors"))
    if meta is None:
        try:
            meta = json.loads(stem.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return None
    epoch = meta.get("epoch") if isinstance(meta, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
