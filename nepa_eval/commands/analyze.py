"""`nepa-eval analyze --ckpt PATH --images DIR|FILE`: attention and next-embedding similarity maps as PNGs."""
from __future__ import annotations

import argparse


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.replace(" ", "").split(",") if t]


def _query(text: str) -> tuple[int, int]:
    r, c = _ints(text)
    return r, c


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `nepa-eval analyze`."""
    p.add_argument("--ckpt", required=True, help="any checkpoint the weight door reads (HF dir, .safetensors, "
                                                 ".pth, run checkpoint, or a Hugging Face id OWNER/NAME[@REVISION])")
    p.add_argument("--images", required=True, help="an image file or a folder of images")
    p.add_argument("--out", default="reports/out/analyze", help="output folder [%(default)s]")
    p.add_argument("--size", type=int, default=None, help="input size (default: the model's img_size), rounded "
                                                          "to a multiple of the patch")
    p.add_argument("--query", type=_query, action="append", metavar="ROW,COL",
                   help="query patch (repeatable; default: the centre patch and one at a quarter)")
    p.add_argument("--layers", type=_ints, default=None, metavar="I,J,...",
                   help="layers to average (negative from the end; default: all)")
    p.add_argument("--heads", type=_ints, default=None, metavar="I,J,...", help="heads to average (default: all)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--causal", dest="causal", action="store_const", const=True, default=None,
                      help="causal attention (default: the mode the checkpoint was trained with)")
    mode.add_argument("--bidirectional", dest="causal", action="store_const", const=False)
    p.add_argument("--ema", action="store_true", help="use the EMA weights where the checkpoint has them")
    p.add_argument("--limit", type=int, default=None, help="at most this many images from a folder")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(args: argparse.Namespace) -> int:
    """Load the model through the checkpoint door, draw every image, print where the PNGs are."""
    from pathlib import Path

    from backbones.nepa import from_pretrained
    from nepa_eval.analyze import analyze, find_images

    model = from_pretrained(args.ckpt, ema=args.ema)
    images = find_images(args.images, args.limit)
    paths = analyze(model, images, Path(args.out), args.size, args.query, args.layers, args.heads, args.causal)
    print(f"wrote {len(paths)} map(s) to {args.out}")
    return 0
