"""`nepa-eval pretrain --config CFG [--work-dir DIR] [--resume] [--launcher pytorch] [--cfg-options k=v ...]`.

Pretrains a NEPA backbone on mmengine's Runner (see nepa_eval/tasks/pretrain.py and cls_configs/pretrain/).
The run directory ends with config.py, scalars.jsonl, final_metrics.json (status ok / failed / collapsed /
diverged, reason, steps, final_loss, knn_top1), mmengine checkpoints (resume) and backbone.safetensors.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

DEFAULT_CONFIG = "cls_configs/pretrain/nepa_tiny_fmnist.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nepa_eval.engine import add_runner_args

    add_runner_args(p, default_config=DEFAULT_CONFIG)


def _tensorboard_available() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def build_cfg(args: argparse.Namespace):
    """The config with every derived value resolved: lr from the batch, the schedule, the hooks, the backend."""
    import torch

    from nepa_eval.engine import load_config
    from nepa_eval.tasks.pretrain import apply_recipe

    cfg = load_config(args, "pretrain")
    info = apply_recipe(cfg)
    hooks = [h for h in cfg.get("custom_hooks", []) if h.get("type") not in ("NepaHealthHook", "KnnMonitorHook",
                                                                              "EMAHook")]
    if cfg.get("health") is not None:
        hooks.append(dict(cfg.health))
    ema = cfg.get("ema")
    if ema is not None and ema.get("enable", True):
        hooks.append(dict(type="EMAHook", ema_type="ExponentialMovingAverage", momentum=ema.get("momentum", 1e-4),
                          update_buffers=True, priority=49))
    knn = cfg.get("knn")
    if knn is not None and knn.get("enable", True) and cfg.get("knn_train") and cfg.get("knn_test"):
        hooks.append(dict(type="KnnMonitorHook", train_data=cfg.knn_train, test_data=cfg.knn_test,
                          interval=knn.get("interval", 0), k=knn.get("k", 20),
                          temperature=knn.get("temperature", 0.07), batch_size=knn.get("batch_size", 256),
                          layers=[None, *knn.get("blocks", [])]))
    cfg.custom_hooks = hooks
    vis = cfg.get("visualizer")
    if vis is not None and not _tensorboard_available():
        backends = [b for b in vis.get("vis_backends", []) if b.get("type") != "TensorboardVisBackend"]
        if len(backends) != len(vis.get("vis_backends", [])):
            print("[nepa] tensorboard is not installed: TensorBoard scalars off (pip install tensorboard)",
                  file=sys.stderr)
            vis.vis_backends = backends
    if cfg.launcher == "none" and not cfg.get("experiment_name"):
        # unique per run, so several runs in one process never share mmengine's named logger/visualiser
        cfg.experiment_name = f"{Path(cfg.work_dir).name}_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"
    if cfg.launcher != "none" and not torch.cuda.is_available():
        cfg.env_cfg = dict(cfg.get("env_cfg", {}), dist_cfg=dict(backend="gloo"))
        # mmengine passes device_ids=[LOCAL_RANK] to DDP, which only GPU modules accept
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    if not torch.cuda.is_available() and cfg.optim_wrapper.get("type") == "AmpOptimWrapper":
        print("[nepa] no GPU: bf16 AmpOptimWrapper replaced by float32 OptimWrapper", file=sys.stderr)
        cfg.optim_wrapper.type = "OptimWrapper"
        cfg.optim_wrapper.pop("dtype", None)
    return cfg, info


def main(args: argparse.Namespace) -> int:
    import torch

    from nepa_eval.engine import run_training, update_final
    from nepa_eval.tasks.pretrain import NonFiniteLossError

    cfg, info = build_cfg(args)
    if cfg.launcher == "pytorch" and not torch.cuda.is_available():
        import torch.distributed as dist

        # mmengine's init_dist calls torch.cuda.set_device unconditionally; on CPUs join the gloo group here
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[nepa] pretrain: work_dir {cfg.work_dir}, effective batch {info['effective_batch']} "
              f"({world} process(es)), lr {info['lr']:.3g}")
    try:
        run_training(cfg, task="pretrain")
    except NonFiniteLossError as e:
        last = os.path.join(cfg.work_dir, "last_checkpoint")
        good = open(last).read().strip() if os.path.exists(last) else "none yet"
        msg = f"{e}; last good checkpoint: {good}"
        update_final(cfg.work_dir, status="diverged", reason=msg)
        print(f"nepa-eval pretrain: diverged: {msg}", file=sys.stderr)
        return 3
    update_final(cfg.work_dir, task="pretrain", **info)
    return 0
