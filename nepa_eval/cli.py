"""`nepa-eval`: one command, a sub-command per job. Each sub-command lives in nepa_eval/commands/<name>.py
and defines `add_arguments(parser)` and `main(args) -> int`; heavy imports happen only when it runs."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# name -> one-line help; the module nepa_eval.commands.<name> implements it
COMMANDS: dict[str, str] = {
    "demo": "run the whole flow at tiny scale on built-in data (pretrain, fine-tune, seg, ablation, report)",
    "pretrain": "pretrain a NEPA backbone (next-embedding prediction) on mmengine's Runner",
    "cls": "ImageNet-style classification: fine-tune, linear probe or k-NN",
    "seg": "semantic segmentation: NEPA + UPerNet in mmsegmentation (ADE20K layout)",
    "knn": "k-NN accuracy of frozen features (DINO style)",
    "pixels": "raw-pixel references (k-NN, linear classifier) on a classification config's data",
    "convert": "convert any supported checkpoint to nepa-eval's format, the release's HF directory or timm weights",
    "inspect": "print what a checkpoint holds and how it would load",
    "report": "regenerate the paper's tables as CSV and plots from run directories",
    "ablate": "run (tiny) or write (paper scale) the runs of one ablation table",
    "transfer": "the transfer study: fine-tuned top-1 against pretraining length, label budgets, seeds",
    "analyze": "attention maps and next-embedding similarity maps over images",
    "make-data": "write the built-in datasets (Fashion-MNIST folders, segmentation mosaic) to disk",
    "bench": "benchmarks: backbone / pretraining / segmentation step speed and memory",
    "doctor": "check this machine for nepa-eval runs (packages, mmcv ops, devices, numerics, compile, dist, disk); "
              "exit 1 if a check fails",
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="nepa-eval",
        description="Evaluation and transfer toolkit for NEPA (Next-Embedding Predictive Autoregression) backbones.",
        epilog="Run 'nepa-eval <command> --help' for the options of one command. Exit codes: 0 done, 1 a seg "
               "run that did not end ok, 2 an error in the arguments, data or checkpoint, 3 diverged (pretrain), "
               "75 preempted: SIGTERM or SIGUSR1 stopped a pretrain / cls / seg run after its current "
               "step and a checkpoint (rerun with --resume), 130 interrupted (Ctrl-C).")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    subs = {name: sub.add_parser(name, help=help_, description=help_) for name, help_ in COMMANDS.items()}
    return parser, subs


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subs = build_parser()
    name = next((a for a in argv if not a.startswith("-")), None)
    if name in subs:
        try:
            mod = importlib.import_module(f"nepa_eval.commands.{name.replace('-', '_')}")
        except ModuleNotFoundError as e:
            if e.name == f"nepa_eval.commands.{name.replace('-', '_')}":
                parser.error(f"'{name}' is not available in this version")
            raise
        mod.add_arguments(subs[name])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    from backbones.nepa import CheckpointError

    try:
        return int(mod.main(args) or 0)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"nepa-eval {name}: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        from nepa_eval.preemption import Preempted

        if isinstance(e, Preempted):  # the run wrote its checkpoint and final_metrics.json (status preempted)
            return int(e.code)
        raise
    except KeyboardInterrupt:
        print(f"\nnepa-eval {name}: interrupted; rerun with --resume to continue from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
