"""`nepa-eval cls`: classification transfer of a NEPA checkpoint: fine-tune, linear probe or k-NN.

    nepa-eval cls --ckpt PATH [--config CFG] [--data DATA] [--protocol finetune|linear|knn]
                  [--work-dir DIR] [--resume] [--eval-only] [--check-data] [--compile] [--launcher pytorch] [--cfg-options k=v ...]

Fine-tuning and the linear probe run on mmengine's Runner (nepa_eval/tasks/cls.py, cls_configs/); k-NN extracts
frozen features and votes (nepa_eval/tasks/knn.py). `--eval-only` evaluates a fine-tuned classifier (a release
model directory with its head, or one of our run checkpoints) with its own head. `--ckpt none` trains from random
initialisation (the baseline of a transfer comparison).
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nepa_eval.engine import add_runner_args

    p.add_argument("--ckpt", help="NEPA checkpoint (any format the weight door accepts: our runs, mmengine, the "
                                  "release's HF directories, .safetensors, or a Hugging Face id OWNER/NAME, "
                                  "hf-hub:OWNER/NAME, OWNER/NAME@REVISION); 'none' = random initialisation")
    p.add_argument("--protocol", choices=["finetune", "linear", "knn"], default=None,
                   help="finetune (default), linear probe or k-NN; picks the default config when --config is absent")
    p.add_argument("--data", help="dataset: an ImageFolder root (train/ and val/), a save_to_disk dataset, a local copy "
                                  "of a hub dataset repo (parquet shards), a hub dataset name OWNER/NAME (datasets' "
                                  "cache, offline too), or 'fashion_mnist' (built in); splits as the data names them")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the checkpoint's own classifier on the validation split, no training")
    p.add_argument("--ema", action="store_true",
                   help="take the checkpoint's EMA weights (mmengine EMAHook runs, the release's pytorch_model_ema.bin)")
    add_runner_args(p)


def main(args: argparse.Namespace) -> int:
    from backbones.nepa import CheckpointReads
    from nepa_eval.tasks import cls

    reads = CheckpointReads()  # this run's: the task reads the checkpoint, the model takes that read
    return cls.run(cls.build_cfg(args, reads), reads)
