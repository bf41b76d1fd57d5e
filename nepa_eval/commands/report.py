"""`nepa-eval report`: the paper's tables as CSV, plots and a Markdown summary, from run directories alone."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `nepa-eval report`."""
    from nepa_eval.report import list_tables

    p.add_argument("--runs", nargs="+", default=["work_dirs"],
                   help="run directories, or folders searched for them (default: work_dirs)")
    p.add_argument("--table", action="append", choices=list_tables(), metavar="NAME",
                   help=f"table to build, repeatable (default: all of {', '.join(list_tables())})")
    p.add_argument("--out", default="reports/out", help="output folder for CSV, PNG and summary.md [%(default)s]")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(args: argparse.Namespace) -> int:
    """Build the tables, print one line per table, and the summary page's path."""
    from nepa_eval.report import run_report

    summary, results = run_report(args.runs, args.table, args.out)
    for res in results:
        counts: dict[str, int] = {}
        for c in res.cells:
            counts[c.status] = counts.get(c.status, 0) + 1
        print(f"{res.spec.name:12s} {res.csv}  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print(f"summary: {summary}")
    return 0
