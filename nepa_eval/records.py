"""The self-describing run directory: final_metrics.json and scalars.jsonl, written atomically by the main process,
and the RunRecordHook every task's runtime config declares (so mmengine's and mmseg's own tools/train.py write the
same directory), with what the run started from: the report reads that record, never guesses it.

What a run started from, recorded in its own run directory, so that nothing downstream has to guess it.

Every run's final_metrics.json holds:
    run_id        a fresh id per run (kept on --resume): what a later run names as its origin
    code_commit   the git commit of this code (``+dirty`` with local changes), or null outside a git checkout
    started_from  null (random initialisation), or {given: the checkpoint as given (a path, a hub id),
                  file: the file or directory read, sha256: of its bytes (a directory: of its files),
                  run_dir and run_id: the run that wrote it when it lies in one of our run directories,
                  hub: {repo, commit} when it is a Hugging Face snapshot, ema: true when its EMA weights were taken}
The report links a fine-tune to its pretraining by these records (`run_id`, else the recorded `run_dir`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

FINAL = "final_metrics.json"
SCALARS = "scalars.jsonl"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_final(work_dir: str | os.PathLike) -> dict[str, Any]:
    p = Path(work_dir) / FINAL
    return json.loads(p.read_text()) if p.exists() else {}


def update_final(work_dir: str | os.PathLike, **values: Any) -> dict[str, Any]:
    """Merge values into final_metrics.json (main process only; atomic)."""
    if not is_main_process():
        return {}
    d = read_final(work_dir)
    d.update({k: _jsonable(v) for k, v in values.items()})
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    _atomic_write(Path(work_dir) / FINAL, json.dumps(d, indent=2, sort_keys=True))
    return d


def append_scalars(work_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    if not is_main_process():
        return
    with open(Path(work_dir) / SCALARS, "a") as f:
        f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")


def read_scalars(work_dir: str | os.PathLike) -> list[dict[str, Any]]:
    p = Path(work_dir) / SCALARS
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


@HOOKS.register_module()
class RunRecordHook(Hook):
    """Writes config.py, scalars.jsonl and final_metrics.json so the run directory describes itself, with what the
    run started from (`run_record`: run_id, code_commit, started_from).

    On resume, scalars past the resumed step are dropped first, so the file never holds a step twice.
    Declared by every task's runtime config (``default_hooks.run_record``), so mmengine's and mmseg's own
    tools/train.py write the same run directory. `interval` None: the LoggerHook's interval.
    """

    priority = "VERY_LOW"

    def __init__(self, task: str = "", interval: Optional[int] = None) -> None:
        self.task, self.interval = task, interval

    def before_run(self, runner) -> None:
        from mmengine.hooks import LoggerHook

        if self.interval is None:
            self.interval = next((h.interval for h in runner.hooks if isinstance(h, LoggerHook)), 10)
        wd = Path(runner.work_dir)
        if not is_main_process():
            return
        runner.cfg.dump(str(wd / "config.py"))
        update_final(wd, task=self.task, status="running", reason="", started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                     **run_record(runner.cfg, bool(runner.cfg.get("resume")), read_final(wd)))

    def before_train(self, runner) -> None:
        if not is_main_process():
            return
        rows = read_scalars(runner.work_dir)  # after resume: keep only steps already covered by the checkpoint
        keep = [r for r in rows if r.get("step", 0) <= runner.iter]
        if len(keep) != len(rows):
            _atomic_write(Path(runner.work_dir) / SCALARS, "".join(json.dumps(r) + "\n" for r in keep))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner):
            rec = {"step": runner.iter + 1, "epoch": runner.epoch}
            for key, buf in runner.message_hub.log_scalars.items():
                if key.startswith("train/"):
                    rec[key[len("train/"):]] = buf.current()
            append_scalars(runner.work_dir, rec)

    def after_val_epoch(self, runner, metrics: Optional[dict[str, float]] = None) -> None:
        if metrics:
            append_scalars(runner.work_dir, {"step": runner.iter, "epoch": runner.epoch,
                                             **{f"val/{k}": v for k, v in metrics.items()}})
            update_final(runner.work_dir, **{f"val/{k}": v for k, v in metrics.items()})

    def after_run(self, runner) -> None:
        final = read_final(runner.work_dir)
        values = {"steps": runner.iter, "epochs": runner.epoch}
        if final.get("status") == "running":
            values["status"] = "ok"
        last = read_scalars(runner.work_dir)
        train_rows = [r for r in last if "loss" in r]
        if train_rows:
            values["final_loss"] = train_rows[-1]["loss"]
        update_final(runner.work_dir, **values)


# ----------------------------------------------------------------------------------------------
# what a run started from
# ----------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def new_run_id() -> str:
    return uuid.uuid4().hex


def code_commit(root: Path = ROOT) -> Optional[str]:
    """The checkout's commit (``<sha>+dirty`` when tracked files differ from it), None without git."""
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file; of a directory, over the (name, sha256) of the files in it, sorted by name."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.iterdir() if x.is_file()):
            h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
        return h.hexdigest()
    with open(p, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def run_dir_of(path: str | os.PathLike) -> Optional[Path]:
    """The run directory (one holding final_metrics.json) that `path` lies in, nearest first, else None."""
    p = Path(path).resolve()
    for d in ([p] if p.is_dir() else []) + list(p.parents):
        if (d / FINAL).is_file():
            return d
    return None


def hub_snapshot(path: Path) -> Optional[dict[str, str]]:
    """{repo, commit} when `path` lies in a Hugging Face cache snapshot (models--OWNER--NAME/snapshots/<commit>)."""
    parts = path.parts
    for i in range(len(parts) - 2):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots":
            return {"repo": parts[i][len("models--"):].replace("--", "/"), "commit": parts[i + 2]}
    return None


def started_from(given: Optional[str], ema: bool = False, local: Optional[str | os.PathLike] = None
                 ) -> Optional[dict[str, Any]]:
    """The `started_from` record of a run given the checkpoint `given` (None: random initialisation); `local`: the
    file or directory it resolved to, when it is not `given` itself (a hub id's snapshot)."""
    if given is None:
        return None
    rec: dict[str, Any] = {"given": str(given)}
    if ema:
        rec["ema"] = True
    p = Path(local if local is not None else given)
    if not p.exists():  # a Hugging Face id: its snapshot in the cache (the run has resolved it already)
        from backbones.nepa.checkpoint import CheckpointError, locate_checkpoint

        try:
            p = locate_checkpoint(given, ema)[0]
        except CheckpointError:
            return rec
        if not p.exists():
            return rec
    p = p.resolve()
    rec.update(file=str(p), sha256=file_sha256(p))
    run = run_dir_of(p)
    if run is not None:
        rec.update(run_dir=str(run), run_id=read_final(run).get("run_id"))
    hub = hub_snapshot(p if p.is_dir() else p.parent)
    if hub is not None:
        rec["hub"] = hub
    return rec


def checkpoint_of(cfg: Any) -> tuple[Optional[str], bool]:
    """(the checkpoint a run's config starts from, EMA weights taken): a classifier's ``model.ckpt``, a segmentation
    backbone's ``init_cfg`` checkpoint or ``pretrained``, else ``load_from`` (mmengine's whole-model load)."""
    model = cfg.get("model") or {}
    if model.get("ckpt"):
        return str(model["ckpt"]), bool(model.get("ckpt_ema"))
    bb = model.get("backbone") or {}
    inits = bb.get("init_cfg") or []
    for init in inits if isinstance(inits, (list, tuple)) else [inits]:
        if init.get("type") == "Pretrained" and init.get("checkpoint"):
            return str(init["checkpoint"]), False
    if bb.get("pretrained"):
        return str(bb["pretrained"]), False
    if cfg.get("load_from") and not cfg.get("resume"):
        return str(cfg["load_from"]), False
    return None, False


def run_record(cfg: Any, resume: bool = False, previous: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """run_id (kept on resume), code_commit and started_from of a run about to start from `cfg`."""
    previous = previous or {}
    given, ema = checkpoint_of(cfg)
    keep = resume and previous.get("run_id")
    return dict(run_id=previous["run_id"] if keep else new_run_id(), code_commit=code_commit(),
                started_from=started_from(given, ema))
