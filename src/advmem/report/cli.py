"""`advmem report` (one self-contained HTML file) and `advmem compare` (terminal, CSV, Markdown)."""

from __future__ import annotations

import argparse
from pathlib import Path

from advmem.commands import COMMANDS
from advmem.io import atomic_write_text
from advmem.report.html import build_report
from advmem.report.tables import comparison_rows, format_terminal, load_targets, to_csv, to_markdown


def cmd_report(args: argparse.Namespace) -> int:
    runs = load_targets(args.runs)  # validates every path before writing anything
    out = Path(args.output)
    atomic_write_text(out, build_report(runs, title=args.title))
    print(f"report: {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    runs = load_targets(args.runs)
    rows = comparison_rows(runs)
    print(format_terminal(rows))
    if any(r["sanity"].startswith("FLAGGED") for r in rows):
        print("FLAGGED rows failed an `advmem eval` sanity check: their robust accuracy is not trustworthy.")
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "compare.csv", to_csv(rows))
        atomic_write_text(out / "compare.md", to_markdown(rows))
        print(f"wrote {out / 'compare.csv'} and {out / 'compare.md'}")
    return 0


@COMMANDS.register("report")
def add_parser(subparsers, common) -> None:
    p = subparsers.add_parser("report", help="HTML report of one or more runs",
                              description="Write one self-contained HTML file: recipe differences, learning curves, "
                                          "best/last table, evaluation results with sanity flags, memorization outputs, "
                                          "and the memorized samples of runs with per-sample tracking.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or study folders (their runs/ and outputs)")
    p.add_argument("--out", "-o", "--output", dest="output", metavar="FILE", default="report.html",
                   help="output HTML file (default report.html; -o and --output are aliases)")
    p.add_argument("--title", default="advmem report")
    common(p)
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("compare", help="best/last and evaluation table of runs",
                              description="Print the best/last and evaluation table of runs (with the protocol "
                                          "behind each robust number); --out writes CSV and Markdown.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or study folders (their runs/)")
    p.add_argument("--out", "-o", "--output", dest="out", default=None, metavar="DIR",
                   help="also write DIR/compare.csv and DIR/compare.md (-o and --output are aliases)")
    common(p)
    p.set_defaults(func=cmd_compare)
