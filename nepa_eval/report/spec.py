"""Table specs (reports/<name>.yaml): a table's stages and metrics, its rows (each with the paper's value and the
config keys of its runs), defaults, baseline row, extra columns, and the per-scale settings ablate runs them with."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC_DIR = ROOT / "reports"
SCALES = {"tiny": "tiny (Fashion-MNIST, CPU)", "paper": "paper (ImageNet-1k / ADE20K)"}
PIXELS_TASK = "pixels"  # the task of the raw-pixel reference runs (nepa_eval/tasks/pixels.py)
PIXELS_METRIC = "linear_top1"  # their main value: a linear classifier on the pixels (their k-NN is a column)


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
