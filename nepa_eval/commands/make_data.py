"""`nepa-eval make-data mosaic --out DIR [...]`: write built-in datasets to disk.

mosaic: the Fashion-MNIST segmentation mosaic in the ADE20K layout (nepa_eval/data/fashion.py), for
`nepa-eval seg --data-root DIR` with seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", metavar="<kind>", required=True)
    m = sub.add_parser("mosaic", help="Fashion-MNIST items tiled on canvases, per-pixel labels (ADE20K layout)")
    m.add_argument("--out", required=True, help="output folder (ADEChallengeData2016/ is created inside)")
    m.add_argument("--train", type=int, default=1000, help="training canvases (default 1000)")
    m.add_argument("--val", type=int, default=200, help="validation canvases (default 200)")
    m.add_argument("--size", type=int, default=56, help="canvas side in pixels (default 56)")
    m.add_argument("--items", type=int, nargs=2, default=(2, 3), metavar=("MIN", "MAX"),
                   help="items per canvas (default 2 3)")
    m.add_argument("--scale", type=float, nargs=2, default=(0.75, 1.25), metavar=("MIN", "MAX"),
                   help="item size as a multiple of 28 px (default 0.75 1.25)")
    m.add_argument("--threshold", type=int, default=40, help="intensity above which a pixel belongs to its item")
    m.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    from nepa_eval.data.fashion import make_mosaic

    root = make_mosaic(args.out, n_train=args.train, n_val=args.val, size=args.size, items=tuple(args.items),
                       scale=tuple(args.scale), threshold=args.threshold, seed=args.seed)
    print(f"[nepa] mosaic: {args.train} training + {args.val} validation canvases of {args.size}x{args.size}, "
          f"11 classes (0 background), written to {root}", file=sys.stderr)
    print(root)
    return 0
