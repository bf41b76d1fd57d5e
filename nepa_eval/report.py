"""Rebuild the paper's tables from run directories alone: match runs to table rows, write CSV, plots and a summary.

A table spec (reports/<name>.yaml) names its rows, each by the config values of its runs (dotted keys of the
run's resolved config.py, per stage: pretrain / cls / seg) and the paper's value. A run belongs to the row whose
keys it matches, the most specific row when several do; a fine-tuning run also inherits the row keys of the
pretraining run it started from (found through the checkpoint path in its config). A collapsed, diverged or
failed run gives "fail", as the paper prints it; a row without runs is "missing".
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
CSV_COLUMNS = ("row", "label", "paper", "ours", "metric", "status", "agrees", "run", "reason")
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
        unknown = set(r) - {"name", "label", "paper", "reference", "size", "match", *stages}
        if unknown:
            raise ValueError(f"{p}: row {r.get('name')!r} has unknown fields {sorted(unknown)} "
                             f"(stages are {list(stages)})")
        rows.append(Row(name=str(r["name"]), label=str(r.get("label", r["name"])), paper=r.get("paper"),
                        keys={s: dict(r.get(s) or {}) for s in stages if r.get(s) is not None},
                        match={s: dict(v or {}) for s, v in (r.get("match") or {}).items()},
                        reference=bool(r.get("reference", False)), size=str(r.get("size", "base"))))
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"{p}: duplicate row names")
    baseline = d.get("baseline")
    if baseline is not None and baseline not in names:
        raise ValueError(f"{p}: baseline {baseline!r} is not a row")
    scales = {}
    shared = spec_dir / "_scales.yaml"
    if shared.is_file():
        scales = yaml.safe_load(shared.read_text()) or {}
    for scale, over in (d.get("scales") or {}).items():
        scales[scale] = _merge(scales.get(scale, {}), over or {})
    return TableSpec(name=str(d["name"]), title=str(d.get("title", d["name"])),
                     paper_metric=str(d.get("paper_metric", "")), stages=stages,
                     defaults={s: dict(v or {}) for s, v in (d.get("defaults") or {}).items()}, rows=rows,
                     baseline=baseline, scales=scales, path=p)


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
    stages = spec.stage_names
    if run.task not in stages or row.reference:
        return None
    chain = {r.task: r for r in run.lineage() if r.task in stages}
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
    """The table cell of one row: our value, its metric, status and the run it came from."""

    row: Row
    ours: Optional[float] = None
    metric: str = ""
    status: str = "missing"
    run: Optional[Run] = None
    reason: str = ""
    agrees: str = ""  # direction vs the baseline row: yes / no / "" (not decidable)
    runs: list[Run] = field(default_factory=list)

    @property
    def ours_text(self) -> str:
        if self.status == "fail":
            return "fail"
        return "" if self.ours is None else f"{self.ours:.2f}"


def _pick(runs: list[Run]) -> Run:
    """Of several runs of one row and stage: a finished one over a running one, then the newest."""
    return max(runs, key=lambda r: (r.status != "running", r.mtime))


def _common_stage(spec: TableSpec, assigned: dict[str, list[Run]]) -> Optional[str]:
    """The deepest stage that every row with healthy runs reached, so that one table compares one metric."""
    reached = [{r.task for r in runs} for runs in assigned.values()
               if runs and not any(x.failed for r in runs for x in r.lineage())]
    return next((s for s in reversed(spec.stage_names) if reached and all(s in t for t in reached)), None)


def build_cells(spec: TableSpec, runs: list[Run]) -> list[Cell]:
    """One cell per row: the deepest stage all healthy rows reached decides (else the row's deepest); a failed run
    anywhere in the chosen run's lineage is 'fail'."""
    assigned = assign_runs(spec, runs)
    common = _common_stage(spec, assigned)
    cells = []
    for row in spec.rows:
        cell = Cell(row=row, runs=assigned[row.name])
        if row.reference:
            cell.status = "reference"
        elif cell.runs:
            at = [r for r in cell.runs if r.task == common]
            if not at:
                deepest = max(cell.runs, key=lambda r: spec.stage_names.index(r.task)).task
                at = [r for r in cell.runs if r.task == deepest]
            run = cell.run = _pick(at)
            bad = next((r for r in run.lineage() if r.failed), None)
            if bad is not None:
                cell.status, cell.reason = "fail", f"{bad.task} {bad.status}" + (f": {bad.reason}" if bad.reason else "")
            elif run.status == "running":
                cell.status = "running"
            else:
                cell.metric = spec.stages[run.task]["metric"]
                cell.ours = run.metric(cell.metric)
                cell.status = "ok" if cell.ours is not None else "no metric"
                if cell.ours is None:
                    cell.reason = f"{cell.metric} not in {run.path / FINAL}"
        cells.append(cell)
    _mark_agreement(spec, cells)
    return cells


def _mark_agreement(spec: TableSpec, cells: list[Cell]) -> None:
    """Direction check against the baseline row: both fail, or both higher / both lower than the baseline."""
    base = next((c for c in cells if c.row.name == spec.baseline), None)
    for c in cells:
        if base is None or c is base or c.row.reference or c.row.paper is None or c.status not in ("ok", "fail"):
            continue
        paper_fail, ours_fail = _is_fail(c.row.paper), c.status == "fail"
        if paper_fail or ours_fail:
            c.agrees = "yes" if paper_fail == ours_fail else "no"
            continue
        if base.status != "ok" or _is_fail(base.row.paper) or base.ours is None or base.metric != c.metric:
            continue
        dp, do = float(c.row.paper) - float(base.row.paper), c.ours - base.ours
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
        w.writerow(CSV_COLUMNS)
        for c in cells:
            paper = "" if c.row.paper is None else c.row.paper
            w.writerow([c.row.name, c.row.label, paper, c.ours_text, c.metric, c.status, c.agrees,
                        str(c.run.path) if c.run else "", c.reason])
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


def markdown_table(cells: list[Cell]) -> str:
    head = "| row | paper | ours | metric | status | agrees | run |\n|---|---|---|---|---|---|---|\n"
    body = ""
    for c in cells:
        paper = "" if c.row.paper is None else c.row.paper
        run = "/".join(c.run.path.parts[-3:]) if c.run else ""
        status = c.status + (f" ({c.reason})" if c.reason and c.status != "ok" else "")
        body += (f"| {c.row.label} | {paper} | {c.ours_text} | {c.metric} | {status.replace('|', '/')} | "
                 f"{c.agrees} | {run} |\n")
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
             "found the trivial copy solution or crashed (as the paper prints it); empty with status `missing` = no run matched the row. Our "
             "numbers at tiny scale (Fashion-MNIST, CPU) are not comparable in value to the paper's ImageNet "
             "numbers; `agrees` checks the direction against the table's baseline row.", ""]
    for res in results:
        lines += [f"## {res.spec.title}", "", f"Paper: {res.spec.paper_metric}. CSV: [{res.csv.name}]({res.csv.name})",
                  "", markdown_table(res.cells), ""]
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

