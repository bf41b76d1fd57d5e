"""What the tasks (pretrain, cls, seg) share on mmengine's Runner: CLI options, config loading, the set-up
every run needs (distributed launch, gloo on CPUs, AMP), the self-describing run directory, safe resume.

A run directory holds:
    config.py            the resolved config (every `_base_` and --cfg-options applied)
    scalars.jsonl        one JSON object per logged step / evaluation: {"step": ..., "loss": ..., ...}
    final_metrics.json   {"task", "status": running|ok|failed|collapsed|trivial|diverged|preempted, "reason", "steps",
                          <metrics>}
    iter_N.pth / epoch_N.pth + last_checkpoint   mmengine checkpoints (resume with --resume)
The report module rebuilds every table from these files alone.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

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
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in --work-dir (an incomplete or corrupt last checkpoint is "
                        "skipped for the one before it, with a warning). SIGTERM or SIGUSR1 (SLURM, Kubernetes) stop a "
                        "run after its current step with a checkpoint, status 'preempted' and exit code 75: rerun "
                        "with --resume")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                   help="distributed launcher (use 'pytorch' under torchrun)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override config keys, e.g. train_cfg.max_iters=100 optim_wrapper.optimizer.lr=1e-3")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's)")
    p.add_argument("--check-data", action="store_true",
                   help="decode every file of the run's data first (DataLoader workers, progress bar), list the bad "
                        "ones and stop before training if there are any (without it a bad file is skipped, warned "
                        "about and counted in final_metrics.json; the run fails only past max(100, 0.1 %%) of them)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (mmengine's `compile` key; options through --cfg-options "
                        "compile.backend=...): forward and loss compiled, backward and optimizer step eager")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


SCRATCH = ("none", "scratch", "random")  # --ckpt values that mean random initialisation


def checkpoint_or_scratch(ckpt: Optional[str]) -> Optional[str]:
    """--ckpt as given, or None for random initialisation ('none', 'scratch', 'random', unless such a file exists)."""
    if ckpt is None or (str(ckpt).lower() in SCRATCH and not Path(ckpt).exists()):
        return None
    return str(ckpt)


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
    if getattr(args, "check_data", False):
        cfg.check_data = True
    if getattr(args, "compile", False) and not cfg.get("compile"):
        cfg.compile = True
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


@HOOKS.register_module()
class BadFilesHook(Hook):
    """The run's bad files (`nepa_eval.data.bad_files`) in the run directory: the datasets of every DataLoader
    worker report the files they skip to ``bad_files.jsonl`` (started by `prepare_env`, before mmengine's loops
    fork their workers: empty for a fresh run, continued on resume); each new file is logged when it comes in,
    final_metrics.json holds ``bad_files`` = {count, limit, files}, and more than
    ``max(min_files, ceil(max_fraction * items))`` of them (items: the run's datasets together) stop the run with
    a BadFileError naming them. `known`: {'file', 'reason'} found before the run (seg's pre-run check)."""

    priority = "NORMAL"

    def __init__(self, max_fraction: float = 0.001, min_files: int = 100, known: Sequence[dict] = ()) -> None:
        self.max_fraction, self.min_files = max_fraction, min_files
        self.known = [dict(file=str(r["file"]), reason=str(r["reason"])) for r in known]
        self.records: dict[str, dict] = {}
        self.limit, self.items, self._log, self._offset = min_files, 0, None, 0

    def before_run(self, runner) -> None:
        from mmengine.runner import BaseLoop

        from nepa_eval.data import bad_files

        self._log = Path(runner.work_dir) / bad_files.LOG_NAME
        col = bad_files.collector()
        if col is None or col["log"] != str(self._log):  # a run not set up by prepare_env (mmengine's train.py):
            bad_files.start_collecting(self._log, self.max_fraction, self.min_files)  # workers forked from now on
        loops = [getattr(runner, name, None) for name in ("_train_loop", "_val_loop", "_test_loop")]
        self.items = sum(len(loop.dataloader.dataset) for loop in loops if isinstance(loop, BaseLoop))
        self.records, self._offset = {}, 0
        self.limit = bad_files.bad_file_limit(self.items, self.max_fraction, self.min_files)
        self._add(runner, self.known, "found before the run")
        self.poll(runner)
        self._write(runner)

    def _add(self, runner, records: Sequence[dict], how: str = "skipped") -> None:
        from mmengine.logging import print_log

        from nepa_eval.data.bad_files import BadFileError, describe

        new = [r for r in records if r["file"] not in self.records]
        for r in new:
            self.records[r["file"]] = r
            print_log(f"[nepa] bad file {how}: {r['file']}: {r['reason']} ({len(self.records)} so far; the run "
                      f"stops past {self.limit})", logger="current", level=logging.WARNING)
        if new:
            self._write(runner)
        if len(self.records) > self.limit:
            raise BadFileError(f"{len(self.records)} bad files, more than the {self.limit} this run tolerates "
                               f"(max({self.min_files}, {self.max_fraction:.1%} of its {self.items} items)): "
                               f"{describe(self.records.values())}. Fix or remove them ('--check-data' lists them "
                               "all before training), or raise default_hooks.bad_files.max_fraction / min_files")

    def poll(self, runner) -> None:
        """Take in the files reported since the last poll (a stat call when there are none)."""
        from nepa_eval.data.bad_files import read_records

        if self._log is not None and self._log.exists() and self._log.stat().st_size > self._offset:
            records, self._offset = read_records(self._log, self._offset)
            self._add(runner, records)

    def _write(self, runner) -> None:
        from nepa_eval.data.bad_files import summary

        update_final(runner.work_dir, bad_files=summary(self.records.values(), self.limit))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.poll(runner)

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.poll(runner)

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.poll(runner)

    def after_run(self, runner) -> None:
        from nepa_eval.data.bad_files import stop_collecting

        try:
            self.poll(runner)  # the k-NN monitor's files too (it runs after training)
            self._write(runner)
        finally:
            stop_collecting()


# ----------------------------------------------------------------------------------------------
# torch.compile through mmengine's own `compile` key
# ----------------------------------------------------------------------------------------------
# what a model's train_step may call on its optimizer wrapper: the update (never worth tracing) and should_sync,
# which reads the wrapper's step counter (traced, it would be a guard that recompiles the step every iteration)
EAGER_OPTIM_METHODS = ("update_params", "backward", "step", "zero_grad", "should_sync")


def keep_optimizer_eager(optim_wrapper: Any) -> int:
    """Make the optimizer wrapper's update methods (backward, clip, optimizer step, zero_grad; those of every
    wrapper in an OptimWrapperDict) and its should_sync run outside dynamo, on this instance only. Returns how
    many wrappers changed; idempotent.

    mmengine's Runner with ``compile`` set wraps the model's whole ``train_step`` in torch.compile, the
    ``optim_wrapper.update_params(loss)`` call inside it included; dynamo then traces into AdamW.step and fails
    there on recent torch ("UserDefinedDictVariable has no attribute items"). With these methods disabled,
    dynamo runs the ``train_step`` frame itself eagerly (should_sync is called inside mmengine's ``optim_context``)
    and compiles the frames it calls: the data preprocessor, the forward and loss (their backward too, by
    AOTAutograd), parse_losses. The backward call, gradient clipping and optimizer step run as without compile,
    and the step counter never enters a guard, so no recompilation from one iteration to the next."""
    import torch
    from mmengine.optim import OptimWrapper, OptimWrapperDict

    wrappers = list(optim_wrapper.values()) if isinstance(optim_wrapper, OptimWrapperDict) else [optim_wrapper]
    changed = 0
    for w in wrappers:
        if not isinstance(w, OptimWrapper) or getattr(w, "_nepa_eager_update", False):
            continue
        for name in EAGER_OPTIM_METHODS:
            setattr(w, name, torch._dynamo.disable(getattr(w, name)))
        w._nepa_eager_update = True
        changed += 1
    return changed


@HOOKS.register_module()
class CompileHook(Hook):
    """Makes mmengine's ``compile`` key (``cfg.compile = True`` or a dict of torch.compile options, ``--compile``
    on the command line) work for any model, ours or mmseg's: before the first training step it keeps the
    optimizer wrapper's update out of dynamo (`keep_optimizer_eager`). Nothing else changes: mmengine compiles
    the bound ``train_step`` (not the module), so state_dict keys, checkpoints, resume, the EMA copy and the
    hooks that call the model are those of an uncompiled run. `prepare_env` adds it when the config compiles."""

    priority = "VERY_HIGH"

    def before_train(self, runner) -> None:
        if runner.cfg.get("compile"):
            keep_optimizer_eager(runner.optim_wrapper)


def add_compile_hook(cfg: Config) -> None:
    """Declare the CompileHook in a config that sets `compile` (once)."""
    if not cfg.get("compile"):
        return
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(h.get("type") in ("CompileHook", CompileHook) for h in hooks):
        hooks.append(dict(type="CompileHook"))
    cfg.custom_hooks = hooks


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
    run, TensorBoard switched off (with a note) where it is not installed, and the run's bad-file list started."""
    import torch
    import torch.distributed as dist

    from backbones.nepa import register_safe_globals

    from nepa_eval.data import check, sources  # noqa: F401  (the datasets, SkipBadFiles and nepa_collate)

    register_safe_globals()
    start_bad_files(cfg)
    add_compile_hook(cfg)
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


def start_bad_files(cfg: Config) -> None:
    """Start the run's bad-file list (work_dir/bad_files.jsonl; empty unless resuming) where the config has a
    BadFilesHook, before the Runner builds its loops (mmengine forks the DataLoader workers as it builds them)."""
    from nepa_eval.data import bad_files

    hook = (cfg.get("default_hooks") or {}).get("bad_files")
    if not hook or hook.get("type") != "BadFilesHook":
        return
    log = Path(cfg.work_dir) / bad_files.LOG_NAME
    if is_main_process() and not cfg.get("resume", False):
        log.unlink(missing_ok=True)
    bad_files.start_collecting(log, hook.get("max_fraction", bad_files.MAX_FRACTION),
                               hook.get("min_files", bad_files.MIN_FILES))


def build_runner(cfg: Config) -> "Any":
    """mmengine's Runner for a prepared config, exactly as mmengine's and mmseg's tools/train.py build it."""
    from mmengine.runner import Runner

    prepare_env(cfg)
    if cfg.get("check_data"):
        stop_on_bad_data(cfg)
    return Runner.from_cfg(cfg)


def stop_on_bad_data(cfg: Config) -> None:
    """--check-data: every file of the config's data decoded first; BadFileError listing the bad ones (and the
    run marked failed) when there are any, before the Runner is built. Under torchrun only rank 0 checks (the
    others wait for it in the Runner's process-group set-up, and torchrun ends them if it fails)."""
    from nepa_eval.data.bad_files import BadFileError, bad_file_limit, describe, stop_collecting, summary
    from nepa_eval.data.check import check_data

    if int(os.environ.get("RANK", "0")) != 0:
        return
    bad, items = check_data(cfg)
    if not bad:
        print(f"[nepa] --check-data: all {items} items decode", file=sys.stderr)
        return
    msg = (f"--check-data: {len(bad)} bad file(s), training not started: {describe(bad, limit=50)}"
           + ". Fix or remove them, or run without --check-data to have them skipped (warned, counted, fatal only "
             "past the bound)")
    update_final(cfg.work_dir, status="failed", reason=msg, bad_files=summary(bad, bad_file_limit(items)), steps=0)
    stop_collecting()
    raise BadFileError(msg)


def train(cfg: Config) -> "Any":
    """Build the Runner and train; a crash marks the run failed with the reason (and re-raises)."""
    from nepa_eval.data.bad_files import stop_collecting

    runner = build_runner(cfg)
    try:
        runner.train()
    except Exception as e:
        stop_collecting()
        final = read_final(cfg.work_dir)
        if final.get("status") in (None, "running"):
            # runner.iter would rebuild a train loop that failed to build (bad data) and raise again
            loop = getattr(runner, "_train_loop", None)
            steps = loop.iter if hasattr(loop, "iter") else 0
            update_final(cfg.work_dir, status="failed", reason=f"{type(e).__name__}: {e}", steps=steps)
        raise
    return runner
