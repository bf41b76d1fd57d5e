"""`nepa-eval cls`: classification transfer of a NEPA checkpoint: fine-tune, linear probe or k-NN.

    nepa-eval cls --ckpt PATH [--config CFG] [--data DIR] [--protocol finetune|linear|knn]
                  [--work-dir DIR] [--resume] [--eval-only] [--launcher pytorch] [--cfg-options k=v ...]

Fine-tuning and the linear probe run on mmengine's Runner (configs in cls_configs/); k-NN extracts frozen
features and votes (nepa_eval/knn.py). `--eval-only` evaluates a fine-tuned classifier (a release model
directory with its head, or one of our run checkpoints) with its own head. `--ckpt none` trains from random
initialisation (the baseline of a transfer comparison).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Optional

from nepa_eval.engine import add_runner_args

DEFAULT_CONFIGS = {
    "finetune": "cls_configs/finetune/nepa-b_in1k.py",
    "linear": "cls_configs/linear/nepa-b_in1k.py",
    "knn": "cls_configs/linear/knn_in1k.py",
}
SCRATCH = ("none", "scratch", "random")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="NEPA checkpoint (any format the weight door accepts: our runs, mmengine, the "
                                  "release's HF directories, .safetensors); 'none' = random initialisation")
    p.add_argument("--protocol", choices=["finetune", "linear", "knn"], default=None,
                   help="finetune (default), linear probe or k-NN; picks the default config when --config is absent")
    p.add_argument("--data", help="dataset: an ImageFolder root (train/ and val/), a Hugging Face dataset saved "
                                  "with save_to_disk, or 'fashion_mnist' (built in)")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the checkpoint's own classifier on the validation split, no training")
    p.add_argument("--ema", action="store_true",
                   help="take the checkpoint's EMA weights (mmengine EMAHook runs, the release's pytorch_model_ema.bin)")
    add_runner_args(p)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def data_source(data: str) -> dict[str, Any]:
    """{'source', 'root'} for a --data argument."""
    if data.lower().replace("-", "_") in ("fashion_mnist", "fmnist"):
        return dict(source="fashion_mnist", root=None)
    d = Path(data)
    if not d.exists():
        raise FileNotFoundError(f"--data {data}: no such directory")
    if any((d / f).exists() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
        return dict(source="hf", root=str(d))
    if d.is_dir():
        return dict(source="folder", root=str(d))
    raise ValueError(f"--data {data}: not a directory (expected an ImageFolder root or a saved HF dataset)")


def _loaders(cfg) -> list[tuple[str, Any]]:
    return [(k, cfg[k]) for k in ("train_dataloader", "val_dataloader", "test_dataloader") if cfg.get(k)]


def apply_data(cfg, data: str) -> None:
    """Point every dataloader of the config at --data."""
    src = data_source(data)
    for _, loader in _loaders(cfg):
        loader.dataset.update(src)


def check_data(cfg, need_train: bool = True) -> int:
    """Open the train and val datasets (first image of each) and return their common class count."""
    from nepa_eval.data import DataError
    from nepa_eval.data.sources import ImageDataset

    counts = {}
    for name in (["train_dataloader"] if need_train else []) + ["val_dataloader"]:
        ds_cfg = {k: v for k, v in cfg[name].dataset.items() if k not in ("type", "transform")}
        try:
            ds = ImageDataset(**ds_cfg)
            ds.load_image(0)
        except DataError as e:
            raise DataError(f"{name.split('_')[0]} data: {e}") from None
        counts[name.split("_")[0]] = (ds.num_classes, len(ds))
    classes = {c for c, _ in counts.values()}
    if len(classes) > 1:
        raise ValueError(f"class count mismatch between splits: {counts} (classes, images); the train and val "
                         "splits must hold the same classes")
    return classes.pop()


# ----------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------
def _resolve_ckpt(args: argparse.Namespace, cfg) -> Optional[str]:
    ckpt = args.ckpt if args.ckpt is not None else cfg.model.get("ckpt")
    if ckpt is None:
        raise ValueError("give --ckpt PATH (a NEPA checkpoint), or --ckpt none to train from random initialisation")
    if str(ckpt).lower() in SCRATCH and not Path(ckpt).exists():
        return None
    return str(ckpt)


def _mixup_active(model_cfg) -> bool:
    m = model_cfg.get("mixup") or {}
    return bool(m) and (m.get("mixup_alpha", 0) > 0 or m.get("cutmix_alpha", 0) > 0
                        or m.get("cutmix_minmax") is not None)


def _setup_cpu_distributed(cfg) -> None:
    """torchrun without GPUs: gloo process group and a CPU DistributedDataParallel."""
    import torch
    import torch.distributed as dist

    if cfg.launcher == "none" or torch.cuda.is_available():
        return
    cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"
    if not dist.is_initialized():  # mmengine's init_dist would call torch.cuda.set_device
        dist.init_process_group(backend="gloo")
    cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)


def main(args: argparse.Namespace) -> int:
    from nepa_eval.engine import load_config, update_final
    from nepa_eval.layer_decay import sync_layer_decay
    from nepa_eval.tasks.cls import align_save_best, build_backbone

    if not args.config:
        args.config = DEFAULT_CONFIGS[args.protocol or "finetune"]
    cfg = load_config(args, "cls")
    cfg_protocol = cfg.get("protocol", "finetune")
    protocol = args.protocol or cfg_protocol
    if protocol != "knn" and cfg_protocol != protocol:
        raise ValueError(f"--protocol {protocol} with {args.config}, a {cfg_protocol} config; give a "
                         f"cls_configs/{'linear' if protocol == 'linear' else 'finetune'}/ config")
    if not args.work_dir and cfg_protocol != protocol:
        cfg.work_dir = str(Path(cfg.work_dir).with_name(Path(cfg.work_dir).name + f"_{protocol}"))
    ckpt = _resolve_ckpt(args, cfg)
    if ckpt is None and (protocol != "finetune" or args.eval_only):
        raise ValueError(f"{'--eval-only' if args.eval_only else '--protocol ' + protocol} needs a checkpoint "
                         "(--ckpt PATH), not random initialisation")
    if args.data:
        apply_data(cfg, args.data)
    num_classes = check_data(cfg, need_train=not args.eval_only)
    want = cfg.model.get("num_classes")
    if want is not None and want != num_classes:
        raise ValueError(f"class count mismatch: the config says model.num_classes={want}, the data has "
                         f"{num_classes} classes")

    if ckpt is not None:  # fail early and clearly on a file that is not a NEPA checkpoint
        probe = build_backbone({}, ckpt, num_classes=None if args.eval_only else 0, verbose=False, ema=args.ema)
        if args.eval_only:
            if probe.num_classes == 0:
                raise ValueError(f"--eval-only: {ckpt} is a backbone without a classifier head; fine-tune it "
                                 "first, or use --protocol linear / knn")
            if probe.num_classes != num_classes:
                raise ValueError(f"class count mismatch: {ckpt} has a {probe.num_classes}-class head, the data "
                                 f"has {num_classes} classes")
            if probe.load_report.missing:
                raise ValueError(f"--eval-only: {ckpt} lacks parts of its classifier "
                                 f"({', '.join(probe.load_report.missing[:6])}); cannot evaluate it as is")
        del probe
    cfg.model.ckpt = ckpt
    cfg.model.ckpt_ema = bool(args.ema)
    cfg.model.num_classes = num_classes
    os.makedirs(cfg.work_dir, exist_ok=True)

    if protocol == "knn":
        return run_knn(cfg, ckpt)

    hooks = list(cfg.get("custom_hooks", []))
    if not any(h.get("type") == "ClsRecordHook" for h in hooks):
        hooks.append(dict(type="ClsRecordHook", protocol=protocol))
    cfg.custom_hooks = hooks
    sync_layer_decay(cfg)
    align_save_best(cfg)
    _setup_cpu_distributed(cfg)
    if args.eval_only:
        return run_eval_only(cfg)

    if _mixup_active(cfg.model):
        bs, drop = cfg.train_dataloader.batch_size, cfg.train_dataloader.get("drop_last", False)
        if bs % 2 or not drop:
            raise ValueError(f"Mixup/CutMix needs even batches: train_dataloader.batch_size={bs}, drop_last={drop}; "
                             "use an even batch size with drop_last=True, or set model.mixup=None")
    from nepa_eval.engine import run_training

    update_final(cfg.work_dir, task="cls", protocol=protocol, ckpt=ckpt or "random-init", num_classes=num_classes)
    run_training(cfg, "cls")
    return 0


def run_eval_only(cfg) -> int:
    """Evaluate the checkpoint's classifier with its own head and attention mode (Runner.test)."""
    from mmengine.runner import Runner

    from backbones.nepa import register_safe_globals
    from nepa_eval.data import sources  # noqa: F401  (registers the image datasets and nepa_collate)
    from nepa_eval.engine import update_final

    register_safe_globals()
    cfg.model.backbone = {}  # architecture, attention mode and head all from the checkpoint
    cfg.model.mixup = None
    cfg.model.freeze_patch_embed = False
    cfg.model.linear_probe = False
    cfg.custom_hooks = [h for h in cfg.custom_hooks if h.get("type") not in ("EMAHook", "LayerDecayLRHook")]
    for h in cfg.custom_hooks:
        if h.get("type") == "ClsRecordHook":
            h["protocol"] = "eval-only"
    cfg.custom_hooks.append(dict(type="RunRecordHook", task="cls"))
    for key in ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler"):
        cfg.pop(key, None)
    cfg.test_dataloader = cfg.val_dataloader
    update_final(cfg.work_dir, task="cls", protocol="eval-only", ckpt=cfg.model.ckpt, ema=cfg.model.ckpt_ema, steps=0)
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    update_final(cfg.work_dir, status="ok", top1=metrics.get("top1"), top5=metrics.get("top5"), steps=0)
    print(f"[nepa] eval-only {cfg.model.ckpt}: top-1 {metrics.get('top1'):.2f}  top-5 {metrics.get('top5'):.2f}")
    return 0


def run_knn(cfg, ckpt: str) -> int:
    """k-NN top-1/top-5 of frozen features on the config's train (memory) and val (query) splits."""
    import torch
    from mmengine.dist import is_main_process

    from nepa_eval.data.sources import ImageDataset
    from nepa_eval.data.transforms import collate
    from nepa_eval.engine import update_final
    from nepa_eval.knn import extract_features, knn_accuracy
    from nepa_eval.tasks.cls import RUNTIME_FIELDS, build_backbone

    if not is_main_process():
        return 0
    runtime = {k: v for k, v in (cfg.model.get("backbone") or {}).items() if k in RUNTIME_FIELDS}
    model = build_backbone(runtime, ckpt, num_classes=0, ema=bool(cfg.model.get("ckpt_ema"))).eval()
    knn_cfg = {"k": 20, "temperature": 0.07, **(cfg.get("knn") or {})}
    cfg.dump(str(Path(cfg.work_dir) / "config.py"))
    update_final(cfg.work_dir, task="cls", protocol="knn", status="running", ckpt=ckpt, **knn_cfg)
    feats = []
    eval_tf = cfg.val_dataloader.dataset.get("transform")
    for name in ("train_dataloader", "val_dataloader"):
        lc = cfg[name]  # the memory bank is encoded like the queries: eval transform, no augmentation
        ds = ImageDataset(**{k: v for k, v in lc.dataset.items() if k not in ("type", "transform")}, transform=eval_tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=lc.get("batch_size", 256), shuffle=False,
                                             num_workers=lc.get("num_workers", 0), collate_fn=collate)
        feats.append(extract_features(model, loader))
    (tr_f, tr_y), (va_f, va_y) = feats
    acc = knn_accuracy(tr_f, tr_y, va_f, va_y, num_classes=int(cfg.model.num_classes),
                       k=knn_cfg["k"], temperature=knn_cfg["temperature"])
    update_final(cfg.work_dir, status="ok", reason="", steps=0, top1=acc["knn_top1"], top5=acc.get("knn_top5"),
                 **acc, train_images=len(tr_y), val_images=len(va_y))
    print(f"[nepa] k-NN (k={knn_cfg['k']}, T={knn_cfg['temperature']}): top-1 {acc['knn_top1']:.2f}"
          + (f"  top-5 {acc['knn_top5']:.2f}" if "knn_top5" in acc else ""))
    return 0
