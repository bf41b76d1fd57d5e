"""`nepa-eval ablate TABLE --scale tiny|paper [--rows A,B] [--ckpt PATH] [--work-dir DIR] [--force] [--dry-run]`.

tiny: runs every row on Fashion-MNIST here, then writes the table; paper: writes each row's config and the
torchrun commands to submit (nepa_eval/ablate.py). A finished run is reused unless --force.
"""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (--seeds 0 or --jobs 0 would otherwise mean something unasked)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mmengine.config import DictAction

    from nepa_eval.report import list_tables

    p.add_argument("table", choices=list_tables(), help="the table whose rows to run")
    p.add_argument("--scale", choices=["tiny", "paper"], default="tiny",
                   help="tiny: run on Fashion-MNIST on this machine; paper: write configs + torchrun commands")
    p.add_argument("--rows", help="comma-separated row names (default: every row with a run at this scale)")
    p.add_argument("--ckpt", help="pretrained checkpoint for tables whose rows fine-tune one (layer_decay, imagenet, "
                                  "ade20k); tiny default: a tiny pretraining run first, paper: required")
    p.add_argument("--work-dir", default="work_dirs/ablate", help="root of the run directories [%(default)s]")
    p.add_argument("--out", help="report folder (default: reports/out/<table>)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={}, metavar="KEY=VALUE",
                   help="extra config overrides for every run (before the rows' own keys), e.g. a data root; "
                        "STAGE:KEY=VALUE for one stage only, e.g. pretrain:train_cfg.max_iters=100")
    p.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                   help="tiny scale: run every row N times (seeds 0..N-1); the table shows mean ± std and marks a "
                        "direction only where it holds beyond the spread [1]")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="tiny scale: run N rows at once, each process on cores/N threads (a tiny model uses a "
                        "second thread poorly: on 2 cores, --jobs 2 finishes a table sooner) [1]")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(args: argparse.Namespace) -> int:
    from nepa_eval import ablate

    return ablate.run(args)
