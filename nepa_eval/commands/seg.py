"""`nepa-eval seg --ckpt PATH|none [--config CFG] [--data-root DIR] [--work-dir DIR] [--resume] [--test-only]
[--inference slide|whole] [--compile] [--launcher pytorch] [--amp] [--cfg-options k=v ...]`.

NEPA + UPerNet in mmsegmentation (nepa_eval/tasks/seg.py, seg_configs/). Without --config the ADE20K config
is picked from the checkpoint's size (ViT-B -> nepa-b, ViT-L -> nepa-l). Trains, then evaluates; the run
directory ends with config.py, scalars.jsonl, final_metrics.json (task seg, status, steps, mIoU, aAcc, mAcc)
and mmengine checkpoints (--resume continues from the last one).
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nepa_eval.engine import add_runner_args

    p.add_argument("--ckpt", help="NEPA checkpoint in any format the weight door reads (pretrained backbone; also a "
                                  "Hugging Face id OWNER/NAME, hf-hub:OWNER/NAME, OWNER/NAME@REVISION), or a "
                                  "trained segmentor checkpoint; 'none' or omitted: random initialisation")
    add_runner_args(p)
    p.add_argument("--data-root", help="dataset folder in the ADE20K layout: ADEChallengeData2016/{images,annotations}"
                                       "/{training,validation} (the folder holding ADEChallengeData2016, or it itself)")
    p.add_argument("--test-only", action="store_true",
                   help="evaluate only: the segmentor checkpoint --ckpt, or the last checkpoint in --work-dir")
    p.add_argument("--inference", choices=["config", "slide", "whole"], default="config",
                   help="test-time mode: the config's (default), sliding windows (crop, 2/3 stride) or whole image")
    p.add_argument("--amp", action="store_true", help="mixed precision on a GPU (fp16, dynamic loss scale, as mmseg's --amp); ignored on a CPU")


def main(args: argparse.Namespace) -> int:
    from backbones.nepa import CheckpointReads
    from nepa_eval.tasks import seg

    reads = CheckpointReads()  # this run's: the task reads the checkpoint, the model takes that read
    return seg.run(seg.build_cfg(args, reads), reads)
