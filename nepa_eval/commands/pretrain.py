"""`nepa-eval pretrain [--config CFG] [--data DATA] [--work-dir DIR] [--resume] [--check-data] [--compile]
[--launcher pytorch] [--cfg-options k=v ...]`.

Pretrains a NEPA backbone on mmengine's Runner (nepa_eval/tasks/pretrain.py, cls_configs/pretrain/). The run
directory ends with config.py, scalars.jsonl, final_metrics.json (status ok / failed / collapsed / diverged,
reason, steps, final_loss, knn_top1), mmengine checkpoints (resume) and backbone.safetensors.
"""
from __future__ import annotations

import argparse


DEFAULT_CONFIG = "cls_configs/pretrain/nepa_tiny_fmnist.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nepa_eval.engine import add_runner_args

    p.add_argument("--data", help="training data instead of the config's: a folder of images (flat or nested, no labels "
                                  "needed; an ImageFolder root too), a save_to_disk dataset, a local copy of a hub "
                                  "dataset repo (parquet shards), a hub dataset name OWNER/NAME, or fashion_mnist")
    add_runner_args(p, default_config=DEFAULT_CONFIG)


def main(args: argparse.Namespace) -> int:
    from nepa_eval.tasks import pretrain

    return pretrain.run(pretrain.build_cfg(args))
