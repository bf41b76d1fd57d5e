"""Rebuild the paper's tables from run directories alone: match runs to table rows, write CSV, plots and a summary.

A table spec (reports/<name>.yaml) names its rows, each by the config values of its runs (dotted keys of the
run's resolved config.py, per stage: pretrain / cls / seg) and the paper's value. A run belongs to the row whose
keys it matches, the most specific row when several do; a fine-tuning run also inherits the row keys of the
pretraining run it started from (found through the checkpoint path in its config). A collapsed, diverged or
failed run gives "fail", as the paper prints it; a row without runs is "missing".

Rows of our own beside the paper's: `init: random` (the same stages from random initialisation: the reference a
pretraining must beat), `task: pixels` (classifiers on raw pixels, no network), and `scale: tiny|paper` (a row
that only takes runs of that scale, read from the run config's `run_scale`, 'paper' when absent). Runs of one
row that differ only in their seed (`randomness.seed`) are averaged: the cell holds mean and std, and `agrees`
is set only where the direction holds beyond the spread.
"""
from __future__ import annotations

import ast
import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from .engine import FINAL, SCALARS, read_final

ROOT = Path(__file__).resolve().parents[1]
SPEC_DIR = ROOT / "reports"
FAIL_STATUSES = ("failed", "collapsed", "diverged", "trivial")
UNFINISHED = ("running", "preempted")  # a preempted run stopped on a signal with a checkpoint: --resume finishes it
CSV_COLUMNS = ("row", "label", "paper", "ours", "std", "seeds", "metric", "scale", "status", "agrees", "run", "reason")
SCALES = {"tiny": "tiny (Fashion-MNIST, CPU)", "paper": "paper (ImageNet-1k / ADE20K)"}
PIXELS_TASK = "pixels"  # the task of the raw-pixel reference runs (nepa_eval/tasks/pixels.py)
PIXELS_METRIC = "linear_top1"  # their main value: a linear classifier on the pixels (their k-NN is a column)
HEALTH_KEYS = ("cos", "out_std", "eff_rank")


# ----------------------------------------------------------------------------------------------
# table specs
# ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One row of a table: its name, the paper's value ('fail' or a number or None) and its run variant."""

    name: str
    label: str
    paper: Any
    keys: dict[str, dict[str, Any]]  # stage -> dotted config key -> value (set by ablate and matched)
    match: dict[str, dict[str, Any]]  # stage -> keys matched but not set (e.g. the model size)
    reference: bool = False  # a published baseline: a paper value only
    size: str = "base"
    init: str = "pretrained"  # 'random': the table's later stages from random initialisation, no pretraining
    task: Optional[str] = None  # 'pixels': filled by the raw-pixel reference run, not by the table's stages
    scale: Optional[str] = None  # 'tiny' / 'paper': takes only runs of that scale (None: any)
    expect: Optional[str] = None  # 'below' / 'above' the baseline, for rows without a paper value (random init)
    versus: Optional[str] = None  # compare with this row instead of the table's baseline

    def wants(self, stage: str) -> dict[str, Any]:
        """Every key a run of this stage must hold to belong to the row."""
        return {**self.keys.get(stage, {}), **self.match.get(stage, {})}


@dataclass
class TableSpec:
    """A paper table: stages (task -> metric), defaults for absent keys, rows, the baseline row."""

    name: str
    title: str
    paper_metric: str
    stages: dict[str, dict[str, Any]]
    defaults: dict[str, dict[str, Any]]
    rows: list[Row]
    baseline: Optional[str] = None
    scales: dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)  # extra columns: name -> label, metrics

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages)

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise ValueError(f"table {self.name} has no row {name!r}; rows: {[r.name for r in self.rows]}")


def list_tables(spec_dir: Path = SPEC_DIR) -> list[str]:
    """Names of the table specs in reports/ (files starting with '_' are shared settings, not tables)."""
    return sorted(p.stem for p in spec_dir.glob("*.yaml") if not p.name.startswith("_"))


def load_spec(name: str | os.PathLike, spec_dir: Path = SPEC_DIR) -> TableSpec:
    """A table spec by name (reports/<name>.yaml) or path, checked for the fields the report needs."""
    p = Path(name)
    if not p.suffix:
        p = spec_dir / f"{name}.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"no table spec {name!r}; tables: {', '.join(list_tables(spec_dir))}")
    d = yaml.safe_load(p.read_text()) or {}
    for key in ("name", "stages", "rows"):
        if key not in d:
            raise ValueError(f"{p}: table spec needs '{key}'")
    stages = {s: dict(v or {}) for s, v in d["stages"].items()}
    for s, v in stages.items():
        if "metric" not in v:
            raise ValueError(f"{p}: stage {s!r} needs a 'metric'")
    rows = []
    for r in d["rows"]:
        unknown = set(r) - {"name", "label", "paper", "reference", "size", "match", "init", "task", "scale", "expect", "versus",
                            *stages}
        if unknown:
            raise ValueError(f"{p}: row {r.get('name')!r} has unknown fields {sorted(unknown)} "
                             f"(stages are {list(stages)})")
        rows.append(Row(name=str(r["name"]), label=str(r.get("label", r["name"])), paper=r.get("paper"),
                        keys={s: dict(r.get(s) or {}) for s in stages if r.get(s) is not None},
                        match={s: dict(v or {}) for s, v in (r.get("match") or {}).items()},
                        reference=bool(r.get("reference", False)), size=str(r.get("size", "base")),
                        init=str(r.get("init", "pretrained")), task=r.get("task"), scale=r.get("scale"),
                        expect=r.get("expect"), versus=r.get("versus")))
        bad = [(f, v, ok) for f, v, ok in (("init", rows[-1].init, ("pretrained", "random")),
                                            ("task", rows[-1].task, (None, PIXELS_TASK)),
                                            ("scale", rows[-1].scale, (None, *SCALES)),
                                            ("expect", rows[-1].expect, (None, "below", "above"))) if v not in ok]
        if bad:
            raise ValueError(f"{p}: row {rows[-1].name!r}: " + "; ".join(f"{f} {v!r} is not one of {ok}"
                                                                           for f, v, ok in bad))
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"{p}: duplicate row names")
    baseline = d.get("baseline")
    for b in [baseline] + [r.versus for r in rows]:
        if b is not None and b not in names:
            raise ValueError(f"{p}: baseline {b!r} is not a row")
    scales = {}
    shared = spec_dir / "_scales.yaml"
    if shared.is_file():
        scales = yaml.safe_load(shared.read_text()) or {}
    for scale, over in (d.get("scales") or {}).items():
        scales[scale] = _merge(scales.get(scale, {}), over or {})
    return TableSpec(name=str(d["name"]), title=str(d.get("title", d["name"])),
                     paper_metric=str(d.get("paper_metric", "")), stages=stages,
                     defaults={s: dict(v or {}) for s, v in (d.get("defaults") or {}).items()}, rows=rows,
                     baseline=baseline, scales=scales, path=p,
                     columns={str(k): dict(v or {}) for k, v in (d.get("columns") or {}).items()})


def _merge(a: dict, b: dict) -> dict:
    """Recursive dict merge, b wins."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------------------------
# run directories
# ----------------------------------------------------------------------------------------------
class _ConfigReader(ast.NodeVisitor):
    """Reads mmengine's config.py dump as data without executing it: literals and dict(...) calls."""

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return [self.value(e) for e in node.elts]
        if isinstance(node, ast.Dict):
            return {self.value(k): self.value(v) for k, v in zip(node.keys, node.values) if k is not None}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
            return {kw.arg: self.value(kw.value) for kw in node.keywords if kw.arg}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.value(node.operand)
            return -v if isinstance(node.op, ast.USub) and isinstance(v, (int, float)) else v
        return ast.unparse(node)  # anything else (a function, an expression) as its source text


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level assignments of a dumped config.py as plain data (never executes the file)."""
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    reader, cfg = _ConfigReader(), {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            cfg[stmt.targets[0].id] = reader.value(stmt.value)
    return cfg


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}, 'h': [{'c': 2}]} -> {'a.b': 1, 'h.0.c': 2} (list items by index, as --cfg-options
    names them); the dicts and lists themselves are kept too ('a' -> {...})."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out[key] = v
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out.update(flatten({str(i): x for i, x in enumerate(v)}, key + "."))
    return out


@dataclass(eq=False)  # runs compare by identity
class Run:
    """One run directory: its task, status, metrics, flattened config and (lazily) its scalars."""

    path: Path
    task: str
    status: str
    reason: str
    final: dict[str, Any]
    config: dict[str, Any]
    parent: Optional["Run"] = None
    _scalars: Optional[list[dict[str, Any]]] = None

    @property
    def failed(self) -> bool:
        return self.status in FAIL_STATUSES

    @property
    def scale(self) -> str:
        """'tiny' or 'paper': the config's `run_scale` (the tiny configs set it; absent means paper)."""
        return str(self.config.get("run_scale") or "paper")

    @property
    def seed(self) -> Any:
        return self.config.get("randomness.seed")

    @property
    def from_scratch(self) -> bool:
        """A fine-tuning (cls / seg) that started from random initialisation, not from a checkpoint."""
        if self.task not in ("cls", "seg"):
            return False
        if "ckpt" in self.final:
            return self.final["ckpt"] in (None, "", "none", "random-init")
        return "model.ckpt" in self.config and self.config["model.ckpt"] in (None, "", "none")

    @property
    def mtime(self) -> float:
        p = self.path / FINAL
        return p.stat().st_mtime if p.exists() else 0.0

    def scalars(self) -> list[dict[str, Any]]:
        if self._scalars is None:
            self._scalars = scalars_of(self.path)
        return self._scalars

    def metric(self, name: str) -> Optional[float]:
        """A final metric by name, also found under 'metrics' or with a 'val/' prefix."""
        for d, key in ((self.final, name), (self.final.get("metrics") or {}, name), (self.final, f"val/{name}")):
            if isinstance(d, dict) and key in d:
                return _as_float(d[key])
        return None

    def lineage(self) -> list["Run"]:
        """This run and the runs it started from, the earliest first."""
        chain, r = [], self
        while r is not None and r not in chain:
            chain.insert(0, r)
            r = r.parent
        return chain


def scalars_of(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """scalars.jsonl of a run, skipping a line a live run is still writing (engine.read_scalars would raise)."""
    p = Path(run_dir) / SCALARS
    rows = []
    for line in (p.read_text().splitlines() if p.exists() else []):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _as_float(v: Any) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def load_run(path: str | os.PathLike) -> Run:
    """A run directory as written by nepa_eval.engine (config.py, scalars.jsonl, final_metrics.json)."""
    path = Path(path)
    final = read_final(path)
    cfg_file = path / "config.py"
    config = flatten(read_config(cfg_file)) if cfg_file.exists() else {}
    task = str(final.get("task") or config.get("task") or "")
    return Run(path=path, task=task, status=str(final.get("status") or "running"), reason=str(final.get("reason") or ""),
               final=final, config=config)


def is_run_dir(p: Path) -> bool:
    return (p / FINAL).is_file() or ((p / "config.py").is_file() and (p / SCALARS).is_file())


def discover_runs(dirs: Iterable[str | os.PathLike]) -> list[Run]:
    """Every run directory at or below the given folders, with each run linked to the run it started from."""
    found: dict[Path, Run] = {}
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise FileNotFoundError(f"--runs: no such directory: {d}")
        cands = [d] if is_run_dir(d) else []
        cands += sorted({p.parent for p in d.rglob(FINAL)} | {p.parent for p in d.rglob("config.py")
                                                                if (p.parent / SCALARS).is_file()})
        for c in cands:
            key = c.resolve()
            if key not in found:
                found[key] = load_run(c)
    runs = list(found.values())
    for r in runs:
        r.parent = _find_parent(r, runs)
    return runs


def _find_parent(run: Run, runs: list[Run]) -> Optional[Run]:
    """The run whose directory holds a checkpoint path named in this run's config: a path that resolves inside
    it (relative paths from the current folder), else one that ends in its last two folder names (moved trees)."""
    paths = [v for k, v in run.config.items() if isinstance(v, str) and ("/" in v or os.sep in v)
             and k != "work_dir" and not k.endswith(".work_dir")]
    best, best_key = None, (0, 0)
    for other in runs:
        if other is run:
            continue
        root = other.path.resolve()
        tail = "/".join(root.parts[-2:]) + "/"
        for v in paths:
            p = Path(v).resolve()
            score = 2 if (p == root or root in p.parents) else 1 if tail in v.replace(os.sep, "/") + "/" else 0
            key = (score, len(root.parts))
            if score and key > best_key:
                best, best_key = other, key
    return best


# ----------------------------------------------------------------------------------------------
# matching runs to rows
# ----------------------------------------------------------------------------------------------
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
    """Row name -> its runs; each run goes to the most specific matching row (ties: all of them)."""
    out: dict[str, list[Run]] = {r.name: [] for r in spec.rows}
    for run in runs:
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


# ----------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------
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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(spec: TableSpec, cells: list[Cell], out: Path) -> Path:
    """Ours beside the paper's, one panel each (the scales differ: tiny Fashion-MNIST vs ImageNet)."""
    plt = _plt()
    labels = [c.row.label for c in cells]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(cells) + 1.6), sharey=True)
    y = list(range(len(cells)))
    panels = [("paper: " + spec.paper_metric, [c.row.paper for c in cells], [c.row.reference for c in cells]),
              ("ours: " + ", ".join(sorted({c.metric for c in cells if c.metric}) or ["no runs"]),
               [("fail" if c.status == "fail" else c.ours) for c in cells], [False] * len(cells))]
    for ax, (title, vals, ref) in zip(axes, panels):
        at_left = ax.get_yaxis_transform()  # x in axes fraction, y in data: text that shows at any x range
        nums = [float(v) for v in vals if v is not None and not _is_fail(v)]
        for i, (v, is_ref) in enumerate(zip(vals, ref)):
            if _is_fail(v):
                ax.text(0.02, i, "fail", transform=at_left, va="center", color="#d62728", fontweight="bold")
            elif v is None:
                ax.text(0.02, i, "-" if ax is axes[0] else cells[i].status, transform=at_left, va="center",
                        color="grey")
            else:
                ax.barh(i, float(v), color="#bbbbbb" if is_ref else "#1f77b4")
                ax.text(float(v), i, f" {float(v):.1f}", va="center", fontsize=8)
        if nums:  # zoom on the values (top-1 differences of a point matter), keeping room for the labels
            lo, top = min(nums), max(nums)
            span = max(top - lo, 1.0)
            ax.set_xlim(max(0.0, lo - 1.5 * span) if lo > 2 * span else 0.0, top + 0.3 * span)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels)
    axes[0].set_ylim(len(cells) - 0.5, -0.5)  # first row on top, room for the last
    agree = [c.agrees for c in cells]
    n_yes, n_all = agree.count("yes"), sum(1 for a in agree if a)
    fig.suptitle(f"{spec.title}" + (f"  (direction vs '{spec.baseline}': {n_yes}/{n_all} rows agree)" if n_all else ""),
                 fontsize=10)
    path = out / f"{spec.name}_table.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _series(run: Run, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for rec in run.scalars():
        if key in rec and "step" in rec:
            v = _as_float(rec[key])
            xs.append(float(rec["step"]))
            ys.append(v if v is not None and math.isfinite(v) else float("nan"))
    return xs, ys


def _runs_of(cells: list[Cell]) -> list[tuple[str, Run]]:
    """(row label, run) for every run of the table, lineages included, each run once."""
    seen, out = set(), []
    for c in cells:
        for r in sorted(c.runs, key=lambda r: r.mtime):
            for x in r.lineage():
                if id(x) not in seen:
                    seen.add(id(x))
                    out.append((c.row.label, x))
    return out


def plot_curves(spec: TableSpec, cells: list[Cell], out: Path, keys: Optional[list[str]] = None,
                suffix: str = "curves", title: str = "training curves") -> Optional[Path]:
    """The runs' scalars overlaid, one panel per (stage, scalar); None when the runs logged none of them."""
    plt = _plt()
    runs = _runs_of(cells)
    panels: list[tuple[str, str]] = []
    for stage in spec.stage_names:
        stage_runs = [r for _, r in runs if r.task == stage]
        names = set()
        for r in stage_runs:
            for rec in r.scalars():
                names.update(k for k, v in rec.items() if _as_float(v) is not None)
        wanted = keys if keys is not None else ["loss"] + sorted(k for k in names if k.startswith("val/"))
        panels += [(stage, k) for k in wanted if k in names]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    colors = {c.row.label: plt.cm.tab10(i % 10) for i, c in enumerate(cells)}
    for ax, (stage, key) in zip(axes.flat, panels):
        for label, r in runs:
            if r.task != stage:
                continue
            xs, ys = _series(r, key)
            if xs:
                style = "--" if r.failed else "-"
                ax.plot(xs, ys, style, color=colors.get(label), label=f"{label}{' (' + r.status + ')' if r.failed else ''}",
                        marker="o" if len(xs) < 4 else None)
        ax.set_title(f"{stage}: {key}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{spec.title}: {title}", fontsize=10)
    fig.tight_layout()
    path = out / f"{spec.name}_{suffix}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
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
                  extra: Optional[dict[str, list[Path]]] = None) -> Path:
    """summary.md: per table the cells and the images (then any extra sections of images), for a Markdown viewer."""
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
    for title, images in (extra or {}).items():
        lines += [f"## {title}", ""] + [f"![{p.stem}]({os.path.relpath(p, out)})" for p in images] + [""]
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


def run_report(run_dirs: list[str], tables: Optional[list[str]] = None, out: str | os.PathLike = "reports/out",
               extra: Optional[dict[str, list[Path]]] = None) -> tuple[Path, list[TableResult]]:
    """Read the run directories, write every requested table and the summary page; return the page's path."""
    out = Path(out)
    runs = discover_runs(run_dirs)
    results = [report_table(load_spec(t), runs, out) for t in (tables or list_tables())]
    return write_summary(results, out, run_dirs, extra), results

