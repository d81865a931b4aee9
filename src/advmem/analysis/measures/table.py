"""measures.csv (one row per run), measures_kendall.csv and measures.md."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from advmem.analysis.measures.kendall import kendall_tau
from advmem.io import atomic_write_text

RUN_COLUMNS = ["run", "method", "checkpoint", "epoch", "train_nat_acc", "train_rob_acc", "test_nat_acc", "test_rob_acc",
               "natural_gap", "robust_gap", "gap_source", "n_samples"]
NOT_MEASURES = set(RUN_COLUMNS) | {"path", "train_nat_acc_sample", "train_rob_acc_sample", "folded_bn", "kept_bn"}


def measure_names(rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [k for k, v in row.items() if k not in NOT_MEASURES and not k.endswith("_capped")
                  and isinstance(v, (int, float)) and k not in names]
    return names


def correlations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kendall's tau of every measure with the robust and the natural generalization gap, across runs."""
    out = []
    for name in measure_names(rows):
        values = [row.get(name, float("nan")) for row in rows]
        tau_rob, n_rob = kendall_tau(values, [row["robust_gap"] for row in rows])
        tau_nat, n_nat = kendall_tau(values, [row["natural_gap"] for row in rows])
        out.append({"measure": name, "tau_robust_gap": tau_rob, "n_robust": n_rob,
                    "tau_natural_gap": tau_nat, "n_natural": n_nat})
    return out


def _csv(rows: list[dict[str, Any]], fields: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if value == int(value) and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def write_tables(rows: list[dict[str, Any]], out_dir: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    names = measure_names(rows)
    flags = sorted({k for row in rows for k in row if k.endswith("_capped")})
    extra = ["train_nat_acc_sample", "train_rob_acc_sample"]
    atomic_write_text(out_dir / "measures.csv", _csv(rows, RUN_COLUMNS + names + flags + extra))
    taus = correlations(rows)
    atomic_write_text(out_dir / "measures_kendall.csv",
                      _csv(taus, ["measure", "tau_robust_gap", "n_robust", "tau_natural_gap", "n_natural"]))

    lines = ["# Complexity measures", "",
             f"{len(rows)} run(s) at checkpoint `{rows[0]['checkpoint']}`; measures on {rows[0]['n_samples']} "
             f"training samples (seed {settings['seed']}) with their training labels; margins: 10th percentile over "
             f"{'all samples' if settings['margin_over'] == 'all' else 'the correctly classified samples'}. "
             "Gaps: train accuracy - test accuracy (robust: under the run's PGD evaluation attack). "
             "See docs/analysis.md for the definitions.", "",
             "| run | method | epoch | train nat | train rob | test nat | test rob | natural gap | robust gap | gaps from |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k)) for k in
                                        ("run", "method", "epoch", "train_nat_acc", "train_rob_acc", "test_nat_acc",
                                         "test_rob_acc", "natural_gap", "robust_gap", "gap_source")) + " |")
    lines += ["", "Measures (one column per run) and Kendall's tau with the gaps across the runs "
              "(tau-b; runs where a measure is NaN are left out, n = runs used):", "",
              "| measure | " + " | ".join(row["run"] for row in rows) + " | tau (robust gap) | tau (natural gap) | n |",
              "|---|" + "---|" * len(rows) + "---|---|---|"]
    for tau in taus:
        cells = [fmt(row.get(tau["measure"], float("nan"))) for row in rows]
        lines.append(f"| {tau['measure']} | " + " | ".join(cells) +
                     f" | {fmt(tau['tau_robust_gap'])} | {fmt(tau['tau_natural_gap'])} | {tau['n_robust']} |")
    notes = []
    if len(rows) < 3:
        notes.append(f"Kendall's tau over {len(rows)} run(s) says little (it is +-1 or NaN with 2 runs).")
    for row in rows:
        if not row["clean_margin"] > 0 or not row["adv_margin"] > 0:
            notes.append(f"{row['run']}: 10th-percentile margin clean {fmt(row['clean_margin'])}, adversarial "
                         f"{fmt(row['adv_margin'])}; a margin that is <= 0 (over 10% of the samples misclassified) or "
                         "NaN leaves the margin-normalized measures undefined (NaN)"
                         + ("; `--margin-over correct` normalizes by the margin of the correctly classified samples."
                            if settings["margin_over"] == "all" else "."))
        for flag in flags:
            if row.get(flag):
                notes.append(f"{row['run']}: {flag.removesuffix('_capped')} flatness never lost "
                             f"{settings['flatness_drop']:.0%} accuracy up to sigma = {settings['flatness_sigma_max']} "
                             "(the accuracy is too low to drop that much); sigma is capped there.")
        if row.get("kept_bn"):
            notes.append(f"{row['run']}: BatchNorm layers not directly after a conv/linear kept as diagonal layers: "
                         f"{row['kept_bn']}.")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    atomic_write_text(out_dir / "measures.md", "\n".join(lines) + "\n")
    return taus
