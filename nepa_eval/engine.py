"""What the tasks (pretrain, cls, seg) share on mmengine's Runner: the set-up every run needs (distributed launch,
gloo on CPUs, AMP), the Runner (with the checkpoint the task read handed to the model), failure records.

The pieces each live in their own module and are re-exported here (the configs' custom_imports name this one):
`run_config` (CLI options, config loading), `records` (the run directory, RunRecordHook, what a run started from),
`compile` (torch.compile's optimizer patch), `bad_files_hook` (BadFilesHook).

A run directory holds:
    config.py            the resolved config (every `_base_` and --cfg-options applied)
    scalars.jsonl        one JSON object per logged step / evaluation: {"step": ..., "loss": ..., ...}
    final_metrics.json   {"task", "status": running|ok|failed|collapsed|trivial|diverged|preempted, "reason", "steps",
                          <metrics>,
                          "run_id", "code_commit", "started_from": the checkpoint, its hash and run (or null)}
    iter_N.pth / epoch_N.pth + last_checkpoint   mmengine checkpoints (resume with --resume)
The report rebuilds every table from these files and the ablate manifests alone.
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from mmengine.config import Config
from mmengine.dist import is_main_process

# the pieces every task uses, each in its own module; importing this one registers the hooks the configs name
from nepa_eval.compile import EAGER_OPTIM_METHODS, CompileHook, add_compile_hook, keep_optimizer_eager  # noqa: F401
from nepa_eval.bad_files_hook import BadFilesHook  # noqa: F401
from nepa_eval.records import (FINAL, SCALARS, RunRecordHook, append_scalars, read_final, read_scalars,  # noqa: F401
                               update_final)
from nepa_eval.run_config import (ROOT, SCRATCH, add_runner_args, checkpoint_or_scratch, load_config,  # noqa: F401
                                  resolve_config_path)


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


def runner_class(reads: Optional[Any] = None) -> type:
    """mmengine's Runner; with the run's checkpoint reads (`backbones.nepa.CheckpointReads`), a Runner that hands
    them to the model it builds: as the ``checkpoint_reads`` argument of a model that takes one (NepaClassifier
    reads in its constructor), and through ``use_checkpoint_reads`` to every submodule that has it (NepaBackbone
    loads in init_weights). The reads go with this one Runner class, never into the config (or its dump)."""
    import inspect

    from mmengine.registry import MODELS
    from mmengine.runner import Runner

    if reads is None:
        return Runner

    class HandOverRunner(Runner):
        def build_model(self, model: Any) -> Any:
            if isinstance(model, dict):
                kind = model.get("type")
                kind = MODELS.get(kind) if isinstance(kind, str) else kind
                if kind is not None and "checkpoint_reads" in inspect.signature(kind).parameters:
                    model = MODELS.build(model, default_args=dict(checkpoint_reads=reads))
            model = super().build_model(model)
            for m in model.modules():
                if hasattr(m, "use_checkpoint_reads"):
                    m.use_checkpoint_reads(reads)
            return model

    return HandOverRunner


def build_runner(cfg: Config, reads: Optional[Any] = None) -> "Any":
    """mmengine's Runner for a prepared config, exactly as mmengine's and mmseg's tools/train.py build it; `reads`:
    the checkpoint the task already read, handed to the model (`runner_class`)."""
    prepare_env(cfg)
    if cfg.get("check_data"):
        stop_on_bad_data(cfg)
    return runner_class(reads).from_cfg(cfg)


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


def train(cfg: Config, reads: Optional[Any] = None) -> "Any":
    """Build the Runner and train; a crash marks the run failed with the reason (and re-raises)."""
    from nepa_eval.data.bad_files import stop_collecting

    runner = build_runner(cfg, reads)
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
