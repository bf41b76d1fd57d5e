"""The ablate manifest: which run directory is which table row, seed and stage, and what it started from.

`nepa-eval ablate` writes ``ablate_manifest.json`` in the table's run folder (<work-dir>/<scale>/<table>/) before it
runs anything; the report reads it instead of inferring rows and lineage. One entry per run:

    {"table": "core", "row": "full", "seed": 0, "stage": "cls", "run_dir": "full/cls",
     "started_from": "full/pretrain", ...}

``run_dir`` and ``started_from`` (the run directory of the run whose checkpoint this one starts from; null for
random initialisation or a checkpoint that is not one of the manifest's runs, given in ``ckpt``) are relative to
the manifest's folder, so a copied tree keeps its meaning. Further keys are free (e.g. ``steps``, ``labels`` of a
transfer study, ``ckpt``, ``scale``); an entry is replaced by a later one of the same run_dir.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

MANIFEST = "ablate_manifest.json"
REQUIRED = ("table", "row", "seed", "stage", "run_dir", "started_from")


def entry(table: str, row: Optional[str], seed: int, stage: str, run_dir: Path, started_from: Optional[Path],
          root: Path, **extra: Any) -> dict[str, Any]:
    """One manifest entry; `run_dir` and `started_from` are made relative to `root` (the manifest's folder)."""
    rel = (lambda p: None if p is None else Path(os.path.relpath(Path(p).absolute(), Path(root).absolute())).as_posix())
    return dict(table=table, row=row, seed=seed, stage=stage, run_dir=rel(run_dir), started_from=rel(started_from),
                **extra)


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a manifest file (a file or its folder), each checked for the required keys."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    if not p.is_file():
        return []
    entries = json.loads(p.read_text()).get("entries", [])
    for e in entries:
        missing = [k for k in REQUIRED if k not in e]
        if missing:
            raise ValueError(f"{p}: manifest entry {e} lacks {missing}")
    return entries


def write_manifest(root: str | os.PathLike, entries: Iterable[dict[str, Any]]) -> Path:
    """Add `entries` to <root>/ablate_manifest.json (an entry of the same run_dir is replaced); atomic."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    by_dir = {e["run_dir"]: e for e in read_manifest(root)}
    by_dir.update({e["run_dir"]: e for e in entries})
    path = root / MANIFEST
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"entries": list(by_dir.values())}, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path
