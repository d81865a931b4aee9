"""One self-contained HTML report for one or more runs (figures embedded as base64 PNG).

Sections (each an element with a stable id): the settings the runs share (`settings`), recipe
differences (`recipe`), learning curves (`curves`), best/last table (`best-last`), evaluation
results with sanity flags and the protocol of each robust number (`evaluation`), memorization
outputs (`memorization`, when a run or study folder has them), thumbnail grids of the memorized
samples of every run with per-sample tracking (`memorized-samples`, report/memorized.py).
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

from advmem.version import __version__
from advmem.report.tables import (COLUMNS, MISSING, RunInfo, comparison_rows, eval_stems, legend_lines, pct, protocol,
                                  protocol_ids, protocol_notes, recipe_differences, sanity_cell, shared_settings)
from advmem.report.memorized import DEFINITIONS, FIGURES as MEMORIZED_FIGURES, TITLES, report_entries

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#111}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #bbb;padding:3px 7px;text-align:right}th{background:#eee;white-space:nowrap}
td:first-child,th:first-child{text-align:left;white-space:nowrap}
.wide{overflow-x:auto}
.flagged{background:#ffe1e1;font-weight:bold}.ok{color:#146c2e}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.note{color:#555;font-size:13px}
"""


def _text(value: Any) -> str:
    """Text of an element, escaped only where HTML needs it (&, <, >): quotes and non-ASCII characters
    stay as written, so the page's source reads like the page."""
    return html.escape(str(value), quote=False)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str], rows: list[list[Any]], flag_col: int | None = None) -> str:
    out = ['<div class="wide"><table><tr>' + "".join(f"<th>{_text(str(h))}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            text = _text(str(v))
            cls = ""
            if i == flag_col:
                cls = ' class="flagged"' if str(v).startswith("FLAGGED") else (' class="ok"' if v == "ok" else "")
            cells.append(f"<td{cls}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table></div>"


def _notes(lines: list[str]) -> str:
    return "".join(f'<p class="note">{_text(line)}</p>' for line in lines)


def _eval_section(runs: list[RunInfo], colour_of: dict[int, str]) -> str:
    # matplotlib: only when a figure is drawn (the CLI's parser imports this module)
    from advmem.report.plots import bar_chart

    ids = protocol_ids(runs)
    several = len(ids) > 1
    parts, labels, clean, robust, colours = [], [], [], [], []
    for r in runs:
        for stem in eval_stems(r):
            ev = r.evals[stem]
            pid = ids[protocol(ev)]
            attacks = ev.get("attacks", {})
            header = ["run / checkpoint", "epoch", "clean"] + list(attacks) + ["worst case", "protocol", "sanity"]
            row = [f"{r.name} / {stem}", ev.get("epoch") or "-", pct(ev["clean_acc"])] + [pct(v) for v in attacks.values()]
            row += [pct(ev["robust_acc"]), f"{pid}: {protocol(ev)}", sanity_cell(ev)]
            parts.append(_table(header, [row], flag_col=len(row) - 1))
            checks = ev.get("sanity", {}).get("checks", {})
            if checks:
                parts.append(_table(["sanity check", "flagged", "detail"],
                                    [[c["name"], "FLAGGED" if c["flagged"] else "ok", c["detail"]] for c in checks.values()],
                                    flag_col=1))
            labels.append(f"{r.name}/{stem}" + (f" [{pid}]" if several else ""))
            clean.append(100 * ev["clean_acc"])
            robust.append(100 * ev["robust_acc"])
            colours.append(colour_of.get(id(r), "#7f7f7f"))
    if not labels:
        return '<p class="note">No evaluation results yet: run <code>advmem eval RUN</code> (writes checkpoints/*.eval.json).</p>'
    title = "advmem eval: clean and worst-case robust accuracy"
    if several:
        title += f"\n{len(ids)} protocols ([P1], [P2], ...): compare bars only within one protocol"
    png = bar_chart(labels, {"clean": clean, "worst-case robust": robust}, "accuracy (%)", title, colours)
    return _img(png, "evaluation accuracies") + _notes(legend_lines({pid: text for text, pid in ids.items()})) + \
        "".join(parts) + \
        '<p class="note">Accuracies in %. Worst case = per-sample worst case over all attacks of the protocol. ' \
        'FLAGGED rows failed a sanity check (possible gradient masking): do not trust their robust numbers.</p>'


def _artifact_html(path: Path, root: Path) -> str:
    # matplotlib: only when a figure is drawn
    from advmem.report.plots import line_plot

    rel = _text(str(path.relative_to(root)))
    out = [f"<h4>{rel}</h4>"]
    try:
        if path.suffix == ".csv":
            with path.open() as fh:
                rows = list(csv.reader(fh))
            if rows:
                out.append(_table(rows[0], rows[1:51]))
                if len(rows) > 51:
                    out.append(f'<p class="note">{len(rows) - 51} more rows in the file.</p>')
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
            flat = _scalars(data)
            series = {k: v for k, v in (data.items() if isinstance(data, dict) else [])
                      if isinstance(v, list) and v and all(isinstance(t, (int, float)) for t in v)}
            xkey = next((k for k in ("epoch", "epochs", "step") if k in series), None)
            if xkey and len(series) > 1:
                ys = {k: v for k, v in series.items() if k != xkey}
                out.append(_img(line_plot(series[xkey], ys, xkey, "value", path.stem), path.stem))
            if flat:
                out.append(_table(["key", "value"], [[k, v] for k, v in list(flat.items())[:60]]))
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            out.append(f'<p class="note">{table.num_rows} rows; columns: {_text(", ".join(table.column_names))}</p>')
            cols = table.column_names
            if "epoch" in cols:
                import numpy as np

                df = {c: table.column(c).to_numpy(zero_copy_only=False) for c in cols}
                epochs = sorted(set(df["epoch"].tolist()))
                numeric = [c for c in cols if c not in ("epoch", "index", "sample", "label")
                           and df[c].dtype.kind in "biuf"][:6]
                if numeric:
                    ys = {c: [float(np.mean(df[c][df["epoch"] == e])) for e in epochs] for c in numeric}
                    out.append(_img(line_plot(epochs, ys, "epoch", "mean over samples", path.stem), path.stem))
    except Exception as err:  # a report renders what it can; say what it could not
        out.append(f'<p class="note">could not render: {_text(type(err).__name__)}: {_text(str(err)[:200])}</p>')
    return "".join(out)


def _scalars(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_scalars(v, f"{prefix}{k}."))
    elif isinstance(data, (int, float, str, bool)) or data is None:
        out[prefix[:-1]] = data
    return out


def _memorized_section(runs: list[RunInfo]) -> str:
    """Thumbnail grids of the memorized samples of every run with per-sample tracking (report/memorized.py)."""
    entries, untracked = report_entries(runs)
    out = ['<section id="memorized-samples"><h2>Memorized samples</h2>']
    if entries:
        out.append(_table(["selection", "definition (tracked epochs of per_sample.parquet)"],
                          [[k, v] for k, v in DEFINITIONS.items()]))
        out.append(_notes([("Tiles: #position in the training set, given (trained-on) label, true label, memorized "
                            "epoch (mem; not fit = not robust-correct at the last tracked epoch), and for TE runs the "
                            "TE target's top class (probability); red = changed label. Why these definitions: "
                            "docs/memorization.md.")]))
    for e in entries:
        out.append(f"<h3>{_text(e.run)}</h3>")
        for key, png in e.pngs.items():
            out.append(_img(png, f"{e.run}: {TITLES.get(key, key)}"))
        counts = e.summary.get("counts")
        if counts:
            out.append(_table(["robust-correct"] + counts["epoch"],
                              [[f"clean label (n={counts['n_clean']})"] + counts["clean"],
                               [f"changed label (n={counts['n_corrupted']})"] + counts["corrupted"]]))
        out.append(_notes(e.notes))
    if untracked:
        out.append(_notes([f"Without per-sample tracking (track.per_sample), not shown: {', '.join(untracked)}."]))
    if not entries and not untracked:
        out.append('<p class="note">No runs among the inputs.</p>')
    return "".join(out) + "</section>"


def build_report(runs: list[RunInfo], title: str = "advmem report") -> str:
    # matplotlib: only when a figure is drawn
    from advmem.report.plots import compare_learning_curves, run_colour

    trained = [r for r in runs if r.is_run]
    colour_of = {id(r): run_colour(i) for i, r in enumerate(trained)}  # the same colour in every figure
    body = [f"<h1>{_text(title)}</h1>",
            f'<p class="note">Runs: {_text(", ".join(str(r.path) for r in runs))}. advmem {__version__}.</p>']
    settings = shared_settings(runs)
    body.append('<section id="settings"><h2>Settings</h2>')
    body.append(_table(["setting", "value"], [list(kv) for kv in settings]) if settings
                else '<p class="note">No run directories (recipe.yaml) among the inputs.</p>')
    body.append("</section>")
    header, diff = recipe_differences(runs)
    body.append('<section id="recipe"><h2>Recipe differences</h2>')
    body.append(_table(header, diff) if diff else '<p class="note">The recipes are identical (apart from names).</p>')
    if any(MISSING in row for row in diff):
        body.append(f'<p class="note">{MISSING} = the key is not in that run\'s recipe.</p>')
    body.append("</section>")

    body.append('<section id="curves"><h2>Learning curves</h2>')
    curves = [r for r in trained if r.rows]
    if curves:
        png = compare_learning_curves([(r.name, r.method, r.rows) for r in curves],
                                      best=[(r.summary.get("best") or {}).get("epoch") for r in curves],
                                      colours=[colour_of[id(r)] for r in curves])
        body.append(_img(png, "learning curves"))
        body.append('<p class="note">Colour = run, line style = split (train solid, val dashed, test dotted); '
                    'a star marks each run\'s best epoch, dotted grey lines the learning-rate decays. '
                    'Robust accuracy is the per-epoch PGD evaluation of each recipe\'s eval.attack (see Settings).</p>')
    else:
        body.append('<p class="note">No metrics.jsonl found.</p>')
    body.append("</section>")

    body.append('<section id="best-last"><h2>Best and last checkpoints</h2>')
    rows = comparison_rows(runs)
    body.append(_table(COLUMNS, [[r[c] for c in COLUMNS] for r in rows], flag_col=len(COLUMNS) - 1))
    body.append(_notes(protocol_notes(rows)))
    body.append('<p class="note">"best" is selected on the validation split when the run has one '
                '(summary.json: best_selected_on). test_*: the per-epoch test subset (data.test_size); '
                'test_full_*: the last epoch\'s evaluation on the full test set. eval_* columns come from '
                '<code>advmem eval</code>; eval_protocol names the attacks and points behind each eval_robust.</p>'
                '</section>')

    body.append('<section id="evaluation"><h2>Evaluation results and sanity flags</h2>')
    body.append(_eval_section(runs, colour_of))
    body.append("</section>")

    body.append('<section id="memorization"><h2>Memorization outputs</h2>')
    found = False
    for r in runs:
        for f in r.artifacts:
            body.append(_artifact_html(f, r.path.parent))
            found = True
        for f in r.figures:
            if f.name in MEMORIZED_FIGURES.values():  # drawn afresh from per_sample.parquet below
                continue
            body.append(f"<h4>{_text(str(f.relative_to(r.path.parent)))}</h4>" + _img(f.read_bytes(), f.name))
            found = True
    if not found:
        body.append('<p class="note">None found (measures.csv, grad_stability.json, per_sample.parquet or figures '
                    'from <code>advmem study</code> / <code>advmem analyze</code>).</p>')
    body.append("</section>")
    body.append(_memorized_section(runs))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{_text(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
