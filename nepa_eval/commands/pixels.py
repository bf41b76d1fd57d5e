"""`nepa-eval pixels --config CLS_CONFIG --work-dir DIR`: the raw-pixel references of a classification config's data
(k-NN and a linear classifier on the pixels; nepa_eval/tasks/pixels.py), the floor every network row must clear."""
from __future__ import annotations

import argparse

from mmengine.config import DictAction


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="cls_configs/finetune/nepa-t_fmnist.py",
                   help="a classification config: its train split trains, its val split tests (val transform)")
    p.add_argument("--work-dir", default="work_dirs/pixels", help="where config.py and final_metrics.json go")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={}, help="override config keys")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(args: argparse.Namespace) -> int:
    from nepa_eval.tasks import pixels

    return pixels.run(pixels.build_cfg(args))
