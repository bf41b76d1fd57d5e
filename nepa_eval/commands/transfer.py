"""`nepa-eval transfer [--scale tiny] [--steps 0,300,1000,3000] [--budgets 1000:30,10000:6] [--seeds 3] [--jobs 2]`.

Does NEPA pretraining pay, and from how many steps? Fine-tunes from random init and from pretrainings of several
lengths, at several label budgets, with seeds; the raw-pixel references; a depth profile (k-NN of every block).
Writes <out>/transfer.{csv,png,md} (nepa_eval/transfer.py, nepa_eval/transfer_report.py). Finished runs are
reused, so an interrupted study continues where it stopped.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mmengine.config import DictAction

    from nepa_eval.commands.ablate import positive_int
    from nepa_eval.transfer import SCALES, parse_budgets, parse_steps

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("examples:\n"
                "  nepa-eval transfer                                   # the tiny study (3 seeds)\n"
                "  nepa-eval transfer --steps 0,600,6000 --budgets 1000:30 --seeds 2 --jobs 2\n"
                "  nepa-eval transfer --report-only                     # table + plot from the runs there")
    p.add_argument("--scale", choices=sorted(SCALES), default="tiny", help="configs and defaults [%(default)s]")
    p.add_argument("--steps", type=parse_steps, help="pretraining lengths, 0 = random init (tiny default: "
                   + ",".join(map(str, SCALES["tiny"]["steps"])) + ")")
    p.add_argument("--budgets", type=parse_budgets, metavar="LABELS:EPOCHS,...",
                   help="label budgets of the fine-tune (tiny default: "
                   + ",".join(f"{b.labels}:{b.epochs}" for b in SCALES["tiny"]["budgets"]) + ")")
    p.add_argument("--seeds", type=positive_int, help="seeds 0..N-1 for pretraining and fine-tune (tiny default: "
                   f"{SCALES['tiny']['seeds']})")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="run N chains at once, each process on cores/N threads [1]")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={}, metavar="KEY=VALUE",
                   help="extra config overrides for the pretrainings and fine-tunes; pretrain:KEY=VALUE or "
                        "cls:KEY=VALUE for one of them, e.g. model.backbone.patch_size=4 (both) "
                        "pretrain:train_dataloader.batch_size=256")
    p.add_argument("--no-depth", action="store_true", help="skip the depth profile (k-NN of every block)")
    p.add_argument("--work-dir", default="work_dirs/transfer", help="root of the run directories [%(default)s]")
    p.add_argument("--out", default="reports/out/transfer", help="where the table and plot go [%(default)s]")
    p.add_argument("--report-only", action="store_true", help="run nothing: the table and plot of the runs there")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(args: argparse.Namespace) -> int:
    from nepa_eval import transfer

    return transfer.run(args)
