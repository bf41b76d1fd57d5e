"""A run's config from the command line: the options pretrain / cls / seg share (`add_runner_args`) and the config
they load (`load_config`: the file, then --cfg-options, --work-dir, --seed, --launcher, --resume applied)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

from mmengine.config import Config, DictAction

ROOT = Path(__file__).resolve().parents[1]


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
