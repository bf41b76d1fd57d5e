"""`nepa-eval convert SRC DST`: any supported checkpoint -> nepa-eval's format (.safetensors or .pth)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="checkpoint: HF model directory, .safetensors, .pth/.bin, mmengine or our own, or a "
                               "Hugging Face model id (OWNER/NAME, hf-hub:OWNER/NAME, OWNER/NAME@REVISION)")
    p.add_argument("dst", help="output file; .safetensors (config in the metadata) or .pth")
    p.add_argument("--ema", action="store_true", help="take the EMA weights where the checkpoint has both")
    p.add_argument("--fold-layerscale", action="store_true",
                   help="fold LayerScale into the preceding Linear layers (exact; the model loses ls1/ls2)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(args: argparse.Namespace) -> int:
    import torch

    from backbones.nepa import fold_layerscale, from_pretrained, save_checkpoint

    model = from_pretrained(args.src, ema=args.ema)
    if args.fold_layerscale:
        x = torch.randn(1, model.cfg.in_chans, 2 * model.patch_size, 2 * model.patch_size)
        with torch.no_grad():
            before = model.forward_features(x)
            fold_layerscale(model)
            err = (model.forward_features(x) - before).abs().max().item()
        print(f"[nepa] folded LayerScale into the linear layers (max abs change of the features: {err:.2e})")
    out = save_checkpoint(model, args.dst)
    print(f"[nepa] wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{'causal' if model.causal else 'bidirectional'} attention, {model.num_classes} classes)")
    return 0
