"""`nepa-eval demo [--work-dir DIR] [--out DIR] [--force]`: the whole flow at tiny scale on built-in data, offline,
on a CPU (nepa_eval/demo.py): the core ablation, fine-tuning, segmentation, the report and maps on real photos.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `nepa-eval demo`."""
    p.add_argument("--work-dir", default="work_dirs/ablate",
                   help="run directories, shared with `nepa-eval ablate` (its core runs are the demo's) [%(default)s]")
    p.add_argument("--out", default="reports/out/demo", help="report, plots and maps [%(default)s]")
    p.add_argument("--force", action="store_true", help="rerun everything instead of reusing finished runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(args: argparse.Namespace) -> int:
    from nepa_eval import demo

    return demo.run(args)
