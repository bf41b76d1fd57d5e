"""What the tasks (pretrain, cls, seg) share on mmengine's Runner: CLI options, config loading, the set-up
every run needs (distributed launch, gloo on CPUs, AMP), the self-describing run directory, safe resume.

A run directory holds:
    config.py            the resolved config (every `_base_` and --cfg-options applied)
    scalars.jsonl        one JSON object per logged step / evaluation: {"step": ..., "loss": ..., ...}
    final_metrics.json   {"task", "status": running|ok|failed|collapsed|trivial|diverged, "reason", "steps", <metrics>}
    iter_N.pth / epoch_N.pth + last_checkpoint   mmengine checkpoints (resume with --resume)
The report module rebuilds every table from these files alone.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from mmengine.config import Config, DictAction
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

ROOT = Path(__file__).resolve().parents[1]
FINAL = "final_metrics.json"
SCALARS = "scalars.jsonl"


# ----------------------------------------------------------------------------------------------
# command-line options shared by pretrain / cls / seg
# ----------------------------------------------------------------------------------------------
def add_runner_args(p: argparse.ArgumentParser, default_config: Optional[str] = None) -> None:
    p.add_argument("--config", default=default_config,
                   help=f"config file (mmengine format, `_base_` inheritance){' [default: %(default)s]' if default_config else ''}")
    p.add_argument("--work-dir", help="run directory (default: work_dirs/<task>/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --work-dir")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                   help="distributed launcher (use 'pytorch' under torchrun)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override config keys, e.g. train_cfg.max_iters=100 optim_wrapper.optimizer.lr=1e-3")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def resolve_config_path(path: str) -> Path:
    """A config path as given, or relative to the repository (cls_configs/..., seg_configs/...)."""
    for cand in (Path(path), ROOT / path):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"config not found: {path} (looked in . and {ROOT})")


def load_config(args: argparse.Namespace, task: str) -> Config:
    """The config with --cfg-options, --work-dir, --seed, --launcher and --resume applied."""
    if not args.config:
        raise ValueError(f"nepa-eval {task}: give --config")
    path = resolve_config_path(args.config)
    cfg = Config.fromfile(str(path))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or str(Path("work_dirs") / task / path.stem)
    cfg.launcher = args.launcher
    if args.seed is not None:
        cfg.randomness = dict(cfg.get("randomness", {}), seed=args.seed)
    cfg.resume = bool(args.resume)
    if args.resume:
        if not (Path(cfg.work_dir) / "last_checkpoint").exists():
            raise FileNotFoundError(f"--resume: no checkpoint to resume from in {cfg.work_dir} "
                                    "(no 'last_checkpoint' file); run without --resume to start fresh")
        cfg.load_from = None
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(getattr(args, "local_rank", 0))
    return cfg


# ----------------------------------------------------------------------------------------------
# the run directory
# ----------------------------------------------------------------------------------------------
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
    """Writes config.py, scalars.jsonl and final_metrics.json so the run directory describes itself.

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
        if is_main_process():
            runner.cfg.dump(str(wd / "config.py"))
        update_final(wd, task=self.task, status="running", reason="", started=time.strftime("%Y-%m-%dT%H:%M:%S"))

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
# what every task shares before and around mmengine's Runner
# ----------------------------------------------------------------------------------------------
def _tensorboard_available() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def prepare_env(cfg: Config) -> Config:
    """The set-up every task needs before its Runner is built, done once here for pretrain, cls and seg:
    torch's weights_only allow-list for our own checkpoints, torchrun on CPUs (a gloo process group and a CPU
    DistributedDataParallel), bf16/fp16 AMP falling back to float32 without a GPU, a unique experiment name per
    run, and TensorBoard switched off (with a note) where it is not installed."""
    import torch
    import torch.distributed as dist

    from backbones.nepa import register_safe_globals

    from nepa_eval.data import sources  # noqa: F401  (the image datasets and nepa_collate, for any config)

    register_safe_globals()
    launcher = cfg.get("launcher", "none")
    if launcher != "none" and not torch.cuda.is_available():
        cfg.env_cfg = dict(cfg.get("env_cfg", {}), dist_cfg=dict(backend="gloo"))
        if launcher == "pytorch" and not dist.is_initialized():
            dist.init_process_group(backend="gloo")  # mmengine's init_dist would call torch.cuda.set_device
        # mmengine passes device_ids=[LOCAL_RANK] to DDP, which only GPU modules accept
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    ow = cfg.get("optim_wrapper")
    if ow is not None and ow.get("type") == "AmpOptimWrapper" and not torch.cuda.is_available():
        print(f"[nepa] no GPU: {ow.get('dtype') or 'fp16'} AmpOptimWrapper replaced by float32 OptimWrapper",
              file=sys.stderr)
        ow.type = "OptimWrapper"
        for key in ("dtype", "loss_scale"):
            ow.pop(key, None)
    if launcher == "none" and not cfg.get("experiment_name"):
        # unique per run, so several runs in one process never share mmengine's named logger/visualiser
        cfg.experiment_name = f"{Path(cfg.work_dir).name}_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"
    vis = cfg.get("visualizer")
    if vis is not None and not _tensorboard_available():
        backends = [b for b in vis.get("vis_backends", []) if b.get("type") != "TensorboardVisBackend"]
        if len(backends) != len(vis.get("vis_backends", [])):
            print("[nepa] tensorboard is not installed: TensorBoard scalars off (pip install tensorboard)",
                  file=sys.stderr)
            vis.vis_backends = backends
    return cfg


def build_runner(cfg: Config) -> "Any":
    """mmengine's Runner for a prepared config, exactly as mmengine's and mmseg's tools/train.py build it."""
    from mmengine.runner import Runner

    prepare_env(cfg)
    return Runner.from_cfg(cfg)


def train(cfg: Config) -> "Any":
    """Build the Runner and train; a crash marks the run failed with the reason (and re-raises)."""
    runner = build_runner(cfg)
    try:
        runner.train()
    except Exception as e:
        final = read_final(cfg.work_dir)
        if final.get("status") in (None, "running"):
            # runner.iter would rebuild a train loop that failed to build (bad data) and raise again
            loop = getattr(runner, "_train_loop", None)
            steps = loop.iter if hasattr(loop, "iter") else 0
            update_final(cfg.work_dir, status="failed", reason=f"{type(e).__name__}: {e}", steps=steps)
        raise
    return runner
