"""`nepa-eval inspect CKPT`: the format, the architecture and the load report of a checkpoint."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", help="any checkpoint the weight door accepts: a file, a model directory, or "
                                "a Hugging Face model id (OWNER/NAME, hf-hub:OWNER/NAME, OWNER/NAME@REVISION)")
    p.add_argument("--ema", action="store_true", help="inspect the EMA weights where present")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(args: argparse.Namespace) -> int:
    from backbones.nepa import from_pretrained
    from backbones.nepa.checkpoint import locate_checkpoint

    model = from_pretrained(args.ckpt, ema=args.ema, verbose=False)
    local, hub = locate_checkpoint(args.ckpt, args.ema)  # a hub id: already resolved by the load, not again
    print(f"source:     {hub.describe() if hub is not None else local}")
    print(f"format:     {model.load_report.fmt}")
    print(f"load:       {model.load_report}")
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    print(f"attention:  {'causal' if model.causal else 'bidirectional'}")
    print("config:     " + json.dumps(model.cfg.to_dict(), indent=None))
    return 0
