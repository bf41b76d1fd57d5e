"""`nepa-eval convert SRC DST [--format nepa-eval|hf|timm]`: any supported checkpoint -> nepa-eval's own file, the
public release's Hugging Face model directory, or timm weights with their pretrained_cfg."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

FORMATS = ("nepa-eval", "hf", "timm")
EPILOG = """output formats (--format):
  nepa-eval (default)  one file: .safetensors (the architecture in its metadata) or .pth
      nepa-eval convert SixAILab/nepa-base-patch14-224 nepa_b.safetensors
  hf    a model directory as the release's save_pretrained writes it (config.json with every ViTNepaConfig
        field, model.safetensors with the vit_nepa.* keys): ViTNepaForImageClassification for a classifier
        (fc_norm, classifier, id2label/label2id from the run's data where known), ViTNepaForPreTraining otherwise
      nepa-eval convert work_dirs/pretrain/nepa_b/backbone.safetensors nepa_b_hf/ --format hf
  timm  a directory as timm's save_for_hf writes it: model.safetensors (the timm model's keys) and config.json
        {architecture, model_args, pretrained_cfg}; load it with
        timm.create_model(cfg['architecture'], pretrained=True, **cfg['model_args'],
                          pretrained_cfg_overlay=dict(cfg['pretrained_cfg'], file='nepa_b_timm/model.safetensors'))
        or timm.create_model('local-dir:nepa_b_timm', pretrained=True) (after import backbones)
      nepa-eval convert work_dirs/cls/nepa_b/best_ema_top1_50.pth nepa_b_timm/ --format timm --ema
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("src", help="checkpoint: HF model directory, .safetensors, .pth/.bin, mmengine or our own, or a "
                               "Hugging Face model id (OWNER/NAME, hf-hub:OWNER/NAME, OWNER/NAME@REVISION)")
    p.add_argument("dst", help="output: a file for --format nepa-eval (.safetensors with the config in the "
                               "metadata, or .pth); a directory for --format hf and --format timm")
    p.add_argument("--format", default="nepa-eval", choices=FORMATS,
                   help="what to write (default nepa-eval; see the formats below)")
    p.add_argument("--ema", action="store_true", help="take the EMA weights where the checkpoint has both")
    p.add_argument("--fold-layerscale", action="store_true",
                   help="fold LayerScale into the preceding Linear layers (exact; the model loses ls1/ls2)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def run_class_names(src: str, num_classes: int) -> tuple[Optional[list[str]], str]:
    """The class names of the data a classification run trained on, and where they came from ('' if unknown):
    from the run's config (an mmengine checkpoint's meta, else config.py beside the file), its val data built
    as the run built it."""
    path = Path(src)
    if num_classes <= 0 or not path.is_file():
        return None, ""
    from mmengine.config import Config

    text, origin = None, ""
    if path.suffix in (".pth", ".pt", ".bin"):
        from backbones.nepa.checkpoint import read_torch_file

        try:
            obj = read_torch_file(path)
        except Exception:
            obj = None
        meta = obj.get("meta") if isinstance(obj, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("cfg"), str):
            text, origin = meta["cfg"], f"{path.name}'s run config"
    try:
        if text is not None:
            cfg = Config.fromstring(text, file_format=".py")
        elif (path.parent / "config.py").is_file():
            cfg, origin = Config.fromfile(str(path.parent / "config.py")), str(path.parent / "config.py")
        else:
            return None, ""
        ds_cfg = cfg.get("val_dataloader", {}).get("dataset") or cfg.get("train_dataloader", {}).get("dataset")
        if not ds_cfg:
            return None, ""
        from mmengine.registry import DATASETS

        from nepa_eval.data import sources as _sources  # noqa: F401  (registers the datasets)

        ds = DATASETS.build({k: v for k, v in ds_cfg.items() if k != "transform"})
        names = [str(c) for c in ds.classes]
    except Exception as e:  # the data may have moved since the run: the names are a nicety, not a need
        print(f"[nepa] class names: could not read the run's data ({type(e).__name__}: {str(e)[:200]}); "
              "writing LABEL_<i>")
        return None, ""
    if len(names) != num_classes:
        print(f"[nepa] class names: the run's data has {len(names)} classes, the head {num_classes}; "
              "writing LABEL_<i>")
        return None, ""
    return names, origin


def main(args: argparse.Namespace) -> int:
    import torch

    from backbones.nepa import fold_layerscale, from_pretrained, save_checkpoint
    from backbones.nepa.checkpoint import CheckpointReads

    if args.format != "nepa-eval" and Path(args.dst).suffix in (".safetensors", ".pth", ".pt", ".bin"):
        raise ValueError(f"--format {args.format} writes a directory (config.json + model.safetensors), and "
                         f"{args.dst} names a file: give a directory, e.g. {Path(args.dst).with_suffix('')}/")
    reads = CheckpointReads()  # read once: the model below takes the read, the export keeps its config.json
    raw = reads.read(args.src, ema=args.ema)
    model = from_pretrained(args.src, ema=args.ema, checkpoint_reads=reads)
    if args.fold_layerscale:
        x = torch.randn(1, model.cfg.in_chans, 2 * model.patch_size, 2 * model.patch_size)
        with torch.no_grad():
            before = model.forward_features(x)
            fold_layerscale(model)
            err = (model.forward_features(x) - before).abs().max().item()
        print(f"[nepa] folded LayerScale into the linear layers (max abs change of the features: {err:.2e})")
    what = (f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
            f"{'causal' if model.causal else 'bidirectional'} attention, {model.num_classes} classes")
    if args.format == "nepa-eval":
        out = save_checkpoint(model, args.dst)
        print(f"[nepa] wrote {out} ({what})")
        return 0
    from backbones.nepa.export import save_hf, save_timm

    names, origin = run_class_names(str(raw.hub.directory if raw.hub else args.src), model.num_classes)
    old = (raw.hf_config or {}).get("id2label") or {}
    if names is None and model.num_classes > 0 and len(old) == model.num_classes:
        names, origin = [str(old.get(str(i), f"LABEL_{i}")) for i in range(model.num_classes)], "the source's config.json"
    if args.format == "hf":
        out = save_hf(model, args.dst, base=raw.hf_config, class_names=names, source=str(args.src))
        kind = "ViTNepaForImageClassification" if model.num_classes else "ViTNepaForPreTraining"
        print(f"[nepa] wrote {out}/config.json + model.safetensors: the release's {kind} ({what})")
    else:
        out = save_timm(model, args.dst, class_names=names)
        print(f"[nepa] wrote {out}/config.json + model.safetensors for timm ({what}); load with "
              f"timm.create_model(cfg['architecture'], pretrained=True, **cfg['model_args'], "
              f"pretrained_cfg_overlay=dict(cfg['pretrained_cfg'], file='{out}/model.safetensors'))")
    if model.num_classes:
        print(f"[nepa] class names: {'from ' + origin if origin else 'unknown, written as LABEL_<i>'}")
    return 0
