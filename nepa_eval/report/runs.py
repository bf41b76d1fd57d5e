"""Run discovery: the run directories under the folders given, each read from its own records (final_metrics.json,
config.py read with mmengine's Config, scalars.jsonl), the ablate manifests that name them, and their lineage.

A run's parent (the run it started from) is what it recorded (`nepa_eval.records.started_from`: the `run_id` of the run that
wrote its checkpoint, else that run's directory), else what the ablate manifest that made it says; never guessed
from paths in its config.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from nepa_eval.records import FINAL, SCALARS, read_final

from .manifest import MANIFEST, read_manifest

FAIL_STATUSES = ("failed", "collapsed", "diverged", "trivial")
UNFINISHED = ("running", "preempted")  # a preempted run stopped on a signal with a checkpoint: --resume finishes it


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A run's dumped config.py as plain data, read by mmengine's Config (without importing its custom_imports)."""
    from mmengine.config import Config

    return Config.fromfile(str(path), import_custom_modules=False).to_dict()


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
    """One run directory: its task, status, metrics, flattened config, the manifest entries that name it, and
    (lazily) its scalars."""

    path: Path
    task: str
    status: str
    reason: str
    final: dict[str, Any]
    config: dict[str, Any]
    parent: Optional["Run"] = None
    entries: list[dict[str, Any]] = field(default_factory=list)  # ablate manifest entries naming this run
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
    def run_id(self) -> Optional[str]:
        return self.final.get("run_id")

    @property
    def started_from(self) -> Optional[dict[str, Any]]:
        """The run's own record of its checkpoint (`nepa_eval.records.started_from`); None: random init or none."""
        s = self.final.get("started_from")
        return s if isinstance(s, dict) else None

    @property
    def from_scratch(self) -> bool:
        """A fine-tuning (cls / seg) that started from random initialisation, not from a checkpoint."""
        if self.task not in ("cls", "seg"):
            return False
        if "started_from" in self.final:
            return self.final["started_from"] is None
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

    def rows(self, table: str) -> Optional[list[str]]:
        """The rows of `table` the manifests put this run in; None when no manifest names it for that table."""
        mine = [e for e in self.entries if e.get("table") == table]
        return [str(e["row"]) for e in mine if e.get("row") is not None] if mine else None


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
    config: dict[str, Any] = {}
    if cfg_file.exists():
        try:
            config = flatten(read_config(cfg_file))
        except Exception:  # a dump a live run is still writing, or from another code version: no config keys
            config = {}
    task = str(final.get("task") or config.get("task") or "")
    return Run(path=path, task=task, status=str(final.get("status") or "running"), reason=str(final.get("reason") or ""),
               final=final, config=config)


def is_run_dir(p: Path) -> bool:
    return (p / FINAL).is_file() or ((p / "config.py").is_file() and (p / SCALARS).is_file())


def _manifests(dirs: list[Path]) -> list[Path]:
    """The ablate manifests at or below the given folders, and in the folders above them (a run folder given
    alone still finds the manifest of its table)."""
    found: set[Path] = set()
    for d in dirs:
        found.update(p.resolve() for p in d.rglob(MANIFEST))
        found.update((a / MANIFEST).resolve() for a in d.resolve().parents if (a / MANIFEST).is_file())
    return sorted(found)


def discover_runs(dirs: Iterable[str | os.PathLike]) -> list[Run]:
    """Every run directory at or below the given folders, with the manifest entries that name it and each run
    linked to the run it started from."""
    found: dict[Path, Run] = {}
    roots = [Path(d) for d in dirs]
    for d in roots:
        if not d.exists():
            raise FileNotFoundError(f"--runs: no such directory: {d}")
        cands = [d] if is_run_dir(d) else []
        cands += sorted({p.parent for p in d.rglob(FINAL)} | {p.parent for p in d.rglob("config.py")
                                                                if (p.parent / SCALARS).is_file()})
        for c in cands:
            key = c.resolve()
            if key not in found:
                found[key] = load_run(c)
    entry_parent: dict[Path, Path] = {}
    for m in _manifests(roots):
        for e in read_manifest(m):
            run = found.get((m.parent / e["run_dir"]).resolve())
            if run is not None:
                run.entries.append(e)
                if e.get("started_from"):
                    entry_parent[run.path.resolve()] = (m.parent / e["started_from"]).resolve()
    runs = list(found.values())
    by_id = {r.run_id: r for r in runs if r.run_id}
    for r in runs:
        r.parent = _parent(r, by_id, found, entry_parent)
    return runs


def _parent(run: Run, by_id: dict[str, Run], by_path: dict[Path, Run], entry_parent: dict[Path, Path]
            ) -> Optional[Run]:
    """The run this one started from: by the run_id it recorded, else by the run directory it recorded, else by its
    manifest entry; None for a run that started from random initialisation or from a file no run here wrote."""
    s = run.started_from
    parent = None
    if s is not None:
        parent = by_id.get(s.get("run_id")) if s.get("run_id") else None
        if parent is None and s.get("run_dir"):
            parent = by_path.get(Path(s["run_dir"]).resolve())
    elif "started_from" in run.final:
        return None  # recorded: random initialisation
    if parent is None and run.path.resolve() in entry_parent:
        parent = by_path.get(entry_parent[run.path.resolve()])
    return parent if parent is not run else None
