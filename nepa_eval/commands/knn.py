"""`nepa-eval knn --ckpt PATH --data DATA`: DINO-style k-NN accuracy of frozen features.

The train split's features vote (cosine, k=20, temperature 0.07) for each test image (nepa_eval/tasks/knn.py).
`--random-init` builds the checkpoint's architecture with fresh weights: the baseline a pretraining run must beat.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="any checkpoint the weight door accepts (run checkpoint, "
                   "backbone.safetensors, the release's HF directory, a Hugging Face id OWNER/NAME[@REVISION], ...)")
    p.add_argument("--data", default="fashion_mnist",
                   help="fashion_mnist, an ImageFolder root (ROOT/<split>/<class>/*), a save_to_disk dataset, a local "
                        "copy of a hub dataset repo (parquet shards), or a hub dataset name OWNER/NAME; the forms "
                        "folder:ROOT and hf:ROOT name the kind explicitly")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="val",
                   help="the split classified: val finds val, validation, valid or dev, else test [default: val]")
    p.add_argument("--train-limit", type=int, default=None, help="use a fixed random subset of the train split")
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the checkpoint's img_size)")
    p.add_argument("-k", "--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--pool", default="avg", choices=["avg", "token"], help="mean of patch tokens or the cls token")
    p.add_argument("--block", type=int, action="append", default=[],
                   help="also score the output of this block (0-based; repeatable), e.g. mid-depth features")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--ema", action="store_true", help="use the EMA weights where the checkpoint has them")
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (baseline)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the result to this JSON file")
    p.add_argument("--work-dir", help="also write a run directory here: config.py and final_metrics.json (status, "
                                      "knn_top1, knn_top1_block<k>, the checkpoint)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(args: argparse.Namespace) -> int:
    from nepa_eval.tasks import knn

    return knn.run(knn.build_cfg(args))
