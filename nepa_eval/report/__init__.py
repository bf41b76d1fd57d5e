"""Rebuild the paper's tables from run directories: rows from the ablate manifests and the runs' own records, CSV,
plots and a summary page (`nepa-eval report`).

A table spec (reports/<name>.yaml, `spec`) names its rows and the paper's values. `runs` finds the run directories
and links each to the run it started from by what the run recorded (final_metrics.json `started_from`); `tables`
puts the runs in rows (the row an ablate manifest names, else the row whose config keys a hand-made run holds) and
makes the cells; `plots` draws them.

Rows of our own beside the paper's: `init: random` (the same stages from random initialisation: the reference a
pretraining must beat), `task: pixels` (classifiers on raw pixels, no network), and `scale: tiny|paper` (a row
that only takes runs of that scale, read from the run config's `run_scale`, 'paper' when absent). Runs of one
row that differ only in their seed (`randomness.seed`) are averaged: the cell holds mean and std, and `agrees`
is set only where the direction holds beyond the spread.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .manifest import MANIFEST, entry, read_manifest, write_manifest  # noqa: F401
from .plots import HEALTH_KEYS, plot_bars, plot_curves
from .runs import FAIL_STATUSES, Run, discover_runs, flatten, load_run, read_config, scalars_of  # noqa: F401
from .spec import PIXELS_METRIC, PIXELS_TASK, ROOT, SCALES, SPEC_DIR, Row, TableSpec, list_tables, load_spec  # noqa: F401
from .tables import (CSV_COLUMNS, Cell, assign_runs, build_cells, cell_line, fmt_num, markdown_table,  # noqa: F401
                     row_score, write_csv)


@dataclass
class TableResult:
    """What the report wrote for one table."""

    spec: TableSpec
    cells: list[Cell]
    csv: Path
    images: list[Path]


def report_table(spec: TableSpec, runs: list[Run], out: Path) -> TableResult:
    """CSV, the ours-vs-paper bars, training curves and health curves of one table."""
    out.mkdir(parents=True, exist_ok=True)
    cells = build_cells(spec, runs)
    images = [plot_bars(spec, cells, out)]
    for kw in (dict(), dict(keys=list(HEALTH_KEYS), suffix="health", title="health (collapse: cos -> 1, std -> 0)")):
        p = plot_curves(spec, cells, out, **kw)
        if p is not None:
            images.append(p)
    return TableResult(spec, cells, write_csv(spec, cells, out), images)


def write_summary(results: list[TableResult], out: Path, run_dirs: list[str],
                  extra: Optional[dict[str, "list[Path] | str"]] = None) -> Path:
    """summary.md: per table the cells and the images, then any extra sections (Markdown text, or images), for a
    Markdown viewer."""
    lines = ["# nepa-eval report", "",
             f"Runs read from: {', '.join(str(d) for d in run_dirs)}. Cells: `fail` = the run collapsed, diverged, "
             "found the trivial copy solution or crashed (as the paper prints it); empty with status `missing` = no run matched the row. "
             "The `scale` column says where each number comes from: " + "; ".join(f"`{k}` = {v}" for k, v in SCALES.items())
             + ". Tiny numbers are not comparable in value to the paper's; `agrees` checks the direction against the "
             "table's baseline row (with several seeds, only beyond the spread: otherwise `within spread`).", ""]
    for res in results:
        lines += [f"## {res.spec.title}", "", f"Paper: {res.spec.paper_metric}. CSV: [{res.csv.name}]({res.csv.name})",
                  "", markdown_table(res.cells, res.spec.columns), ""]
        lines += [f"![{p.stem}]({p.name})" for p in res.images] + [""]
    for title, body in (extra or {}).items():
        lines += [f"## {title}", ""]
        if isinstance(body, str):
            lines += [body, ""]
        else:
            lines += [f"![{p.stem}]({os.path.relpath(p, out)})" for p in body] + [""]
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


def run_report(run_dirs: list[str], tables: Optional[list[str]] = None, out: str | os.PathLike = "reports/out",
               extra: Optional[dict[str, "list[Path] | str"]] = None) -> tuple[Path, list[TableResult]]:
    """Read the run directories, write every requested table and the summary page; return the page's path."""
    out = Path(out)
    runs = discover_runs(run_dirs)
    results = [report_table(load_spec(t), runs, out) for t in (tables or list_tables())]
    return write_summary(results, out, run_dirs, extra), results
