"""`nepa-eval pretrain [--config CFG] [--work-dir DIR] [--resume] [--launcher pytorch] [--cfg-options k=v ...]`.

Pretrains a NEPA backbone on mmengine's Runner (nepa_eval/tasks/pretrain.py, cls_configs/pretrain/). The run
directory ends with config.py, scalars.jsonl, final_metrics.json (status ok / failed / collapsed / diverged,
reason, steps, final_loss, knn_top1), mmengine checkpoints (resume) and backbone.safetensors.
"""
from __future__ import annotations

import argparse


DEFAULT_CONFIG = "cls_configs/pretrain/nepa_tiny_fmnist.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nepa_eval.engine import add_runner_args

    add_runner_args(p, default_config=DEFAULT_CONFIG)


def main(args: argparse.Namespace) -> int:
    from nepa_eval.tasks import pretrain

    return pretrain.run(pretrain.build_cfg(args))
