"""`nepa-eval knn --ckpt PATH --data fashion_mnist|folder:ROOT|hf:ROOT`: DINO-style k-NN accuracy of frozen features.

The train split's features vote (cosine, k=20, temperature 0.07) for each test image. `--random-init` builds
the checkpoint's architecture with fresh weights: the baseline a pretraining run must beat.
"""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="any checkpoint the weight door accepts (run checkpoint, "
                   "backbone.safetensors, the release's HF directory, ...)")
    p.add_argument("--data", default="fashion_mnist",
                   help="fashion_mnist, folder:ROOT (ROOT/<split>/<class>/*) or hf:ROOT (save_to_disk)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test", help="for folder/hf data usually 'val'")
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
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def data_spec(data: str, split: str, limit: int | None) -> dict:
    """ImageDataset arguments for a --data value."""
    source, _, root = data.partition(":")
    if source not in ("fashion_mnist", "folder", "hf"):
        raise ValueError(f"--data must be fashion_mnist, folder:ROOT or hf:ROOT, not {data!r}")
    if source != "fashion_mnist" and not root:
        raise ValueError(f"--data {source}: give the root, e.g. {source}:/path/to/data")
    return dict(source=source, root=root or None, split=split, limit=limit)


def main(args: argparse.Namespace) -> int:
    import torch

    from backbones.nepa import NepaViT, from_pretrained
    from nepa_eval.bench import device_of
    from nepa_eval.tasks.pretrain import knn_eval

    model = from_pretrained(args.ckpt, ema=args.ema, num_classes=0, verbose=not args.random_init)
    if args.random_init:
        torch.manual_seed(args.seed)
        model = NepaViT(model.cfg).eval()
    dev = device_of(args.device)
    model.to(dev)
    size = args.img_size or model.cfg.img_size
    tf = dict(kind="resize", img_size=size)
    train = dict(data_spec(args.data, args.train_split, args.train_limit), transform=tf)
    test = dict(data_spec(args.data, args.test_split, args.test_limit), transform=tf)
    res = knn_eval(model, train, test, k=args.k, temperature=args.temperature, batch_size=args.batch_size,
                   pool=args.pool, device=dev, layers=[None, *args.block])
    res.update(ckpt=str(args.ckpt), weights="random init" if args.random_init else ("ema" if args.ema else "raw"),
               k=args.k, temperature=args.temperature, data=args.data)
    print(f"k-NN top-1 {res['knn_top1']:.2f}%" + (f", top-5 {res['knn_top5']:.2f}%" if "knn_top5" in res else "")
          + "".join(f", block {b} top-1 {res[f'knn_top1_block{b}']:.2f}%" for b in args.block)
          + f" ({res['weights']}, {args.ckpt}, k={args.k}, T={args.temperature})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0
