"""Tables: runs matched to rows, one cell per row (mean and spread over seeds, 'fail' where the runs failed), the
direction check against the baseline row, and the CSV / Markdown / console forms of the cells.

A run is in the row an ablate manifest names for it; a run made by hand is in the row whose config keys it holds
(per stage, with the runs it started from; the most specific row when several match). A collapsed, diverged or
failed run gives "fail", as the paper prints it; a row without runs is "missing".
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nepa_eval.records import FINAL

from .runs import UNFINISHED, Run
from .spec import PIXELS_METRIC, TableSpec, Row

CSV_COLUMNS = ("row", "label", "paper", "ours", "std", "seeds", "metric", "scale", "status", "agrees", "run", "reason")


def _same(a: Any, b: Any) -> bool:
    """Config value equality, lenient about YAML vs Python spellings (1e-5 vs 1.0e-05, tuple vs list)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _stage_score(spec: TableSpec, row: Row, stage: str, run: Run) -> Optional[int]:
    """How many of the row's keys this run matches for the stage; None when one disagrees or is absent."""
    defaults = spec.defaults.get(stage, {})
    score = 0
    for key, want in row.wants(stage).items():
        if key in run.config:
            have = run.config[key]
        elif key in defaults:
            have = defaults[key]
        else:
            return None
        if not _same(have, want):
            return None
        score += 1
    return score


def row_score(spec: TableSpec, row: Row, run: Run) -> Optional[int]:
    """Match score of a run (with its lineage) for a row; None when it does not belong to the row."""
    if row.reference or (row.scale is not None and run.scale != row.scale):
        return None
    if row.task is not None:  # a raw-pixel reference row takes the reference runs, nothing else
        return 0 if run.task == row.task else None
    stages = spec.stage_names
    if run.task not in stages:
        return None
    chain = {r.task: r for r in run.lineage() if r.task in stages}
    if (row.init == "random") != run.from_scratch:
        return None
    if row.init == "random" and any(s in chain for s in stages[: stages.index(run.task)]):
        return None
    total = 0
    for stage in stages[: stages.index(run.task) + 1]:
        r = chain.get(stage)
        if r is None:
            if row.wants(stage):  # the row is defined by an earlier stage this run cannot be traced to
                return None
            continue
        s = _stage_score(spec, row, stage, r)
        if s is None:
            return None
        total += s
    for stage in set(row.match) - set(stages):  # e.g. a fine-tune table's row that names its pretraining
        r = next((x for x in run.lineage() if x.task == stage), None)
        s = None if r is None else _stage_score(spec, row, stage, r)
        if s is None:
            return None
        total += s
    return total


def assign_runs(spec: TableSpec, runs: list[Run]) -> dict[str, list[Run]]:
    """Row name -> its runs: the rows an ablate manifest names for the run; a run no manifest names for this table
    (made by hand, or by another table's ablate) goes to the most specific row its config matches (ties: all)."""
    out: dict[str, list[Run]] = {r.name: [] for r in spec.rows}
    for run in runs:
        named = run.rows(spec.name)
        if named is not None:
            for name in dict.fromkeys(named):
                if name in out:
                    out[name].append(run)
            continue
        scores = {row.name: s for row in spec.rows if (s := row_score(spec, row, run)) is not None}
        if scores:
            top = max(scores.values())
            for name, s in scores.items():
                if s == top:
                    out[name].append(run)
    return out


@dataclass
class Cell:
    """The table cell of one row: our value (the mean over seeds), its spread, metric, status and runs."""

    row: Row
    ours: Optional[float] = None
    metric: str = ""
    status: str = "missing"
    run: Optional[Run] = None
    reason: str = ""
    agrees: str = ""  # direction vs the baseline row: yes / no / within spread / "" (not decidable)
    runs: list[Run] = field(default_factory=list)
    std: Optional[float] = None  # sample std over seeds (None: one seed)
    seeds: int = 0  # seeds that make the value (failed ones excluded)
    extras: dict[str, Optional[float]] = field(default_factory=dict)  # the table's extra columns
    scale: str = ""

    @property
    def ours_text(self) -> str:
        return "fail" if self.status == "fail" else fmt_num(self.ours)

    @property
    def spread_text(self) -> str:
        return fmt_num(self.std)


def fmt_num(v: Optional[float]) -> str:
    """A table number as every output prints it: two decimals, empty when absent."""
    return "" if v is None else f"{v:.2f}"


def cell_line(c: Cell, label_width: int = 44) -> str:
    """One cell as a console line (ablate's and the demo's printout): ours (± std), metric, scale, the extra
    columns, agrees."""
    paper = str(c.row.paper if c.row.paper is not None else "-")
    ours = (c.ours_text or c.status) + (f" ± {c.spread_text}" if c.std is not None else "")
    extra = "".join(f"  {k} {fmt_num(v)}" for k, v in c.extras.items())
    return (f"  {c.row.label:{label_width}s} paper {paper:>6s}   ours {ours:>14s} {c.metric:11s} {c.scale:5s}{extra}"
            + (f"  agrees: {c.agrees}" if c.agrees else ""))


def _pick(runs: list[Run]) -> Run:
    """Of several runs of one row and stage: a finished one over a running one, then the newest."""
    return max(runs, key=lambda r: (r.status not in UNFINISHED, r.mtime))


def _seed_key(run: Run) -> tuple:
    """The seeds of a run and the runs it started from: runs that differ only here are replicates of one row."""
    return tuple(r.seed for r in run.lineage())


def _common_stage(spec: TableSpec, assigned: dict[str, list[Run]]) -> Optional[str]:
    """The deepest stage that every row with healthy runs reached, so that one table compares one metric."""
    reached = [{r.task for r in runs} for name, runs in assigned.items()
               if runs and spec.row(name).task is None and not any(x.failed for r in runs for x in r.lineage())]
    return next((s for s in reversed(spec.stage_names) if reached and all(s in t for t in reached)), None)


def _metric_of(run: Run, names: list[str]) -> Optional[float]:
    """The first of `names` that the run, or else a run it started from, recorded."""
    for r in reversed(run.lineage()):
        for n in names:
            if (v := r.metric(n)) is not None:
                return v
    return None


def _mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None)


def _fill(spec: TableSpec, cell: Cell, at: list[Run], metric: str) -> None:
    """The cell's value from its runs at one stage: one run per seed (the newest), failed seeds counted apart."""
    by_seed: dict[tuple, list[Run]] = {}
    for r in at:
        by_seed.setdefault(_seed_key(r), []).append(r)
    chosen = [_pick(rs) for rs in by_seed.values()]
    cell.run = max(chosen, key=lambda r: r.mtime)
    cell.scale = cell.run.scale
    failure = {id(r): next((x for x in r.lineage() if x.failed), None) for r in chosen}  # the first failed run
    bad = [(r, failure[id(r)]) for r in chosen if failure[id(r)] is not None]
    good = [r for r in chosen if r.status not in UNFINISHED and failure[id(r)] is None]
    if len(bad) * 2 > len(chosen):  # most seeds failed: the row failed, as the paper prints it
        run, why = bad[0]
        cell.run, cell.status = run, "fail"
        cell.reason = f"{why.task} {why.status}" + (f": {why.reason}" if why.reason else "")
        if len(chosen) > 1:
            cell.reason = f"{len(bad)} of {len(chosen)} seeds failed; " + cell.reason
        return
    if not good:
        cell.status = "running"
        return
    cell.metric = metric
    values = [v for r in good if (v := r.metric(metric)) is not None]
    if not values:
        cell.status, cell.reason = "no metric", f"{metric} not in {good[0].path / FINAL}"
        return
    cell.status, cell.seeds = "ok", len(values)
    cell.ours, cell.std = _mean_std(values)
    if bad:
        cell.reason = f"{len(bad)} of {len(chosen)} seeds failed (not in the mean)"
    for name, col in spec.columns.items():
        vals = [v for r in good if (v := _metric_of(r, list(col.get("metrics") or [name]))) is not None]
        cell.extras[name] = _mean_std(vals)[0] if vals else None


def build_cells(spec: TableSpec, runs: list[Run]) -> list[Cell]:
    """One cell per row: the deepest stage all healthy rows reached decides (else the row's deepest); a failed run
    anywhere in the chosen run's lineage is 'fail'; replicates over seeds are averaged."""
    assigned = assign_runs(spec, runs)
    common = _common_stage(spec, assigned)
    cells = []
    for row in spec.rows:
        cell = Cell(row=row, runs=assigned[row.name], scale="paper" if row.reference else "")
        cell.extras = {name: None for name in spec.columns}
        if row.reference:
            cell.status = "reference"
        elif cell.runs and row.task is not None:  # raw-pixel references: the newest run's numbers
            _fill(spec, cell, [_pick(cell.runs)], PIXELS_METRIC)
        elif cell.runs:
            at = [r for r in cell.runs if r.task == common]
            if not at:
                deepest = max(cell.runs, key=lambda r: spec.stage_names.index(r.task)).task
                at = [r for r in cell.runs if r.task == deepest]
            _fill(spec, cell, at, spec.stages[at[0].task]["metric"])
        cells.append(cell)
    _mark_agreement(spec, cells)
    return cells


def _mark_agreement(spec: TableSpec, cells: list[Cell]) -> None:
    """Direction check against the baseline row: both fail, or both higher / both lower than the baseline (a row
    without a paper value may state `expect: below|above`, and
    `versus: ROW` to be compared with that row). With seeds, a difference within the two rows' summed
    std is 'within spread', neither yes nor no."""
    by_name = {c.row.name: c for c in cells}
    for c in cells:
        base = by_name.get(c.row.versus or spec.baseline or "")
        if (base is None or c is base or c.row.reference or c.status not in ("ok", "fail")
                or (c.row.paper is None and c.row.expect is None)):
            continue
        paper_fail, ours_fail = _is_fail(c.row.paper), c.status == "fail"
        if paper_fail or ours_fail:
            c.agrees = "yes" if paper_fail == ours_fail else "no"
            continue
        same_metric = base.metric == c.metric or c.row.task is not None  # pixels: a top-1 on the same data
        if base.status != "ok" or _is_fail(base.row.paper) or base.ours is None or not same_metric:
            continue
        if c.row.expect is not None:
            dp = 1.0 if c.row.expect == "above" else -1.0
        else:
            dp = float(c.row.paper) - float(base.row.paper)
        do = c.ours - base.ours
        spread = (c.std or 0.0) + (base.std or 0.0)
        if dp != 0 and abs(do) <= spread:
            c.agrees = "within spread"
        else:
            c.agrees = "yes" if (dp > 0) == (do > 0) or dp == 0 else "no"


def _is_fail(v: Any) -> bool:
    return isinstance(v, str) and v.strip().lower() == "fail"


def write_csv(spec: TableSpec, cells: list[Cell], out: Path) -> Path:
    """<out>/<table>.csv with the CSV_COLUMNS."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{spec.name}.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS + tuple(spec.columns))
        for c in cells:
            paper = "" if c.row.paper is None else c.row.paper
            w.writerow([c.row.name, c.row.label, paper, c.ours_text, c.spread_text, c.seeds or "", c.metric, c.scale,
                        c.status, c.agrees, str(c.run.path) if c.run else "", c.reason]
                       + [fmt_num(c.extras.get(k)) for k in spec.columns])
    return path


def markdown_table(cells: list[Cell], columns: Optional[dict[str, dict[str, Any]]] = None) -> str:
    """The cells as a Markdown table: ours as mean ± std where there are several seeds, the scale of each number."""
    columns = columns or {}
    extra = [str(col.get("label", name)) for name, col in columns.items()]
    names = ["row", "paper", "ours", *extra, "metric", "scale", "status", "agrees", "run"]
    head = "| " + " | ".join(names) + " |\n|" + "---|" * len(names) + "\n"
    body = ""
    for c in cells:
        paper = "" if c.row.paper is None else c.row.paper
        run = "/".join(c.run.path.parts[-3:]) if c.run else ""
        status = c.status + (f" ({c.reason})" if c.reason and (c.status != "ok" or c.seeds > 1) else "")
        ours = c.ours_text + (f" ± {c.spread_text} ({c.seeds} seeds)" if c.std is not None else "")
        cols = [fmt_num(c.extras.get(k)) for k in columns]
        body += ("| " + " | ".join([c.row.label, str(paper), ours, *cols, c.metric, c.scale,
                                     status.replace("|", "/"), c.agrees, run]) + " |\n")
    return head + body
