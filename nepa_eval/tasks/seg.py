"""Segmentation: NEPA + UPerNet in mmsegmentation on data in the ADE20K layout (`nepa-eval seg`).

The task turns `nepa-eval seg` arguments into a resolved config, runs training then evaluation on
mmengine's Runner, and writes the metrics into the run directory. ``bench_seg`` (`nepa-eval bench seg`) times one
training iteration of NEPA-B + UPerNet beside mmseg's own MAE-B + UPerNet.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from mmengine.config import Config
from mmseg.registry import DATASETS

from backbones.nepa import CheckpointError
from backbones.nepa.checkpoint import (hold_checkpoint, locate_checkpoint, read_checkpoint, resolve_config,
                                       to_nepa_state_dict)
from backbones.nepa.mmseg_backbone import SEG_FIELDS, check_arch, checkpoint_prefix, describe, size_name
from nepa_eval.timing import sync, time_fn
from nepa_eval.data import DataError
from nepa_eval.data import bad_files
from nepa_eval.data.check import wrap_datasets
from nepa_eval.data.seg import IGNORE_INDEX, check_seg_root, resolve_ade_root  # registers FashionMosaicDataset
from nepa_eval.engine import ROOT, build_runner, checkpoint_or_scratch, load_config, read_final, train, update_final
from nepa_eval.layer_decay import layer_decay_of


CONFIGS = {
    "base": "seg_configs/nepa/nepa-b_upernet_8xb2-160k_ade20k-512x512.py",
    "large": "seg_configs/nepa/nepa-l_upernet_8xb2-160k_ade20k-512x512.py",
}
MAE_CONFIG = "mmseg::mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py"


# ----------------------------------------------------------------------------------------------
# checkpoints and configs
# ----------------------------------------------------------------------------------------------
def checkpoint_info(path: str) -> dict[str, Any]:
    """What a checkpoint is: {'arch': NepaConfig fields, 'size': name or None, 'segmentor': bool, 'fmt': str}.

    The file is read once: a backbone checkpoint stays held for NepaBackbone.init_weights (the read of this run);
    a whole segmentor's is left to mmengine's load_checkpoint."""
    raw = read_checkpoint(path)
    prefix = checkpoint_prefix(list(raw.state_dict))
    if prefix is None:
        hold_checkpoint(path, raw=raw)
    else:
        raw.state_dict = {k[len(prefix):]: v for k, v in raw.state_dict.items() if k.startswith(prefix)}
    sd, notes = to_nepa_state_dict(raw)
    arch = resolve_config(raw, sd, notes)
    return dict(arch=arch, size=size_name(arch), segmentor=prefix is not None, fmt=raw.fmt)


def pick_config(info: dict[str, Any], path: str) -> str:
    """The ADE20K config for a checkpoint's size (B or L); other sizes need --config."""
    if info["size"] in CONFIGS:
        return CONFIGS[info["size"]]
    raise ValueError(f"{path} is a {describe(info['arch'])}: there is no ADE20K config for that size; pass --config "
                     f"(the CPU mosaic config seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py fits the "
                     f"tiny NEPA of cls_configs/pretrain/nepa_tiny_fmnist.py)")


def _datasets(cfg: Config) -> list[dict]:
    """The dataset dicts of the train/val/test loaders (inside dataset wrappers too)."""
    found = []

    def walk(d: Any) -> None:
        if isinstance(d, dict):
            if "data_root" in d or "data_prefix" in d:
                found.append(d)
            for key in ("dataset", "datasets"):
                if key in d:
                    walk(d[key])
        elif isinstance(d, (list, tuple)):
            for x in d:
                walk(x)

    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(name):
            walk(cfg[name].get("dataset"))
    return found


def label_spec(cfg: Config) -> tuple[int, bool, int]:
    """(num_classes, reduce_zero_label, ignore_index) of the training dataset, checked against the heads."""
    ds = _datasets(cfg)[0]
    cls = DATASETS.get(ds["type"])
    if cls is None:
        raise ValueError(f"unknown dataset type {ds['type']!r} (is its module in custom_imports?)")
    classes = (ds.get("metainfo") or {}).get("classes") or cls.METAINFO.get("classes")
    default_rzl = inspect.signature(cls.__init__).parameters.get("reduce_zero_label")
    rzl = ds.get("reduce_zero_label", default_rzl.default if default_rzl else False)
    ignore = ds.get("ignore_index", IGNORE_INDEX)
    heads = [cfg.model.get(h) for h in ("decode_head", "auxiliary_head") if cfg.model.get(h)]
    for h in heads:
        if h.get("num_classes") != len(classes):
            raise ValueError(f"the {h['type']} predicts {h.get('num_classes')} classes but the dataset {ds['type']} "
                             f"has {len(classes)}; set model.decode_head.num_classes / auxiliary_head.num_classes")
    return len(classes), bool(rzl), ignore


def set_data_root(cfg: Config, data_root: str) -> Path:
    """Point every loader at data_root (the folder holding ADEChallengeData2016/, or that folder itself)."""
    root = resolve_ade_root(data_root)
    for ds in _datasets(cfg):
        ds["data_root"] = str(root)
    return root


def build_cfg(args: argparse.Namespace) -> Config:
    """The resolved config: picked from the checkpoint's size, the checkpoint's whole architecture written into
    model.backbone.arch (the file read once), weights, data, inference mode and AMP; `seg_run` records what was
    resolved (it goes into final_metrics.json)."""
    ckpt = checkpoint_or_scratch(args.ckpt)
    info = checkpoint_info(ckpt) if ckpt else None
    if not args.config:
        if info is None:
            raise ValueError("nepa-eval seg: give --ckpt (the config is picked from its size) or --config")
        args.config = pick_config(info, ckpt)
    cfg = load_config(args, "seg")
    bb = cfg.model.backbone
    if bb.get("type") != "NepaBackbone":
        raise ValueError(f"{args.config}: model.backbone.type is {bb.get('type')!r}, expected 'NepaBackbone'")
    run: dict[str, Any] = {"config": str(args.config)}
    segmentor_ckpt = None
    if info is not None:
        check_arch(bb.get("arch", "base"), info["arch"], ckpt)
        # the whole architecture goes into the config, so the run directory's config.py rebuilds the model alone
        bb.arch = {k: v for k, v in info["arch"].items() if k not in SEG_FIELDS}
        local, hub = locate_checkpoint(ckpt)  # a hub id: its snapshot in the cache, already resolved above
        run.update(ckpt=str(local.resolve()), ckpt_format=info["fmt"], arch=info["size"] or "custom")
        if hub is not None:
            run.update(ckpt_hub=str(hub.ref), ckpt_commit=hub.commit)
        if info["segmentor"]:
            segmentor_ckpt = str(local.resolve())
            bb.init_cfg = None
        else:
            bb.init_cfg = dict(type="Pretrained", checkpoint=str(local.resolve()))
            bb.pop("pretrained", None)
    else:
        run.update(ckpt=None, arch="random init")
        if bb.get("init_cfg") and bb.init_cfg.get("checkpoint") is None:
            bb.init_cfg = None
    if args.test_only:
        bb.init_cfg = None  # the whole segmentor comes from its checkpoint, loaded strictly by the task
        run["evaluated_checkpoint"] = segmentor_ckpt or _last_checkpoint(cfg.work_dir)
        cfg.load_from = None
    elif segmentor_ckpt:
        cfg.load_from = segmentor_ckpt  # fine-tune further from a trained segmentor
    if args.data_root:
        run["data_root"] = str(set_data_root(cfg, args.data_root))
    wrap_datasets(cfg)  # bad files skipped (the next good item), reported, counted (nepa_eval.data.check)
    set_inference(cfg, args.inference)
    run["inference"] = cfg.model.get("test_cfg", {}).get("mode", "whole")
    run["test_only"] = bool(args.test_only)
    if args.amp:
        _enable_amp(cfg)
    cfg.seg_run = run
    return cfg


def set_inference(cfg: Config, mode: Optional[str]) -> None:
    """Test-time mode: 'whole' image, 'slide' windows (the config's crop, 2/3 stride), or the config's (None/'config')."""
    if mode == "whole":
        cfg.model.test_cfg = dict(mode="whole")
    elif mode == "slide":
        crop = tuple(cfg.get("crop_size", (512, 512)))
        cfg.model.test_cfg = dict(mode="slide", crop_size=crop, stride=tuple(int(round(c * 2 / 3)) for c in crop))


def _enable_amp(cfg: Config) -> None:
    """As mmseg's tools/train.py --amp (fp16, dynamic loss scale); without a GPU the engine falls back to fp32."""
    ow = cfg.optim_wrapper
    if ow.get("type") == "AmpOptimWrapper":
        return
    if ow.get("type", "OptimWrapper") != "OptimWrapper":
        raise ValueError(f"--amp needs optim_wrapper.type 'OptimWrapper', got {ow.get('type')!r}")
    ow.type = "AmpOptimWrapper"
    ow.loss_scale = "dynamic"


def _last_checkpoint(work_dir: str) -> str:
    p = Path(work_dir) / "last_checkpoint"
    if not p.exists():
        raise FileNotFoundError(f"--test-only: no trained segmentor to evaluate: {work_dir} has no last_checkpoint "
                                "and --ckpt is not a segmentor checkpoint (one with decode_head.* keys)")
    return p.read_text().strip()


def load_segmentor(load: Any, path: str) -> None:
    """mmengine's load_checkpoint(strict=True) (`load(path, strict=True)`), its mismatch report as a CheckpointError."""
    try:
        load(path, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the segmentor of this config (a checkpoint of another config?): "
                              f"{e}") from None


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------
def _metrics(values: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k in ("mIoU", "aAcc", "mAcc"):
        for key in (k, f"val/{k}", f"test/{k}"):
            if key in values:
                out[k] = float(values[key])
                break
    return out


def _note_bad_files(cfg: Config, found: list[tuple[str, str]], items: int) -> None:
    """Bad files of the pre-run check: warned about, handed to the run's BadFilesHook (so the log and
    final_metrics.json list them even if training never draws them), fatal past the hook's bound."""
    if not found:
        return
    hook = (cfg.get("default_hooks") or {}).get("bad_files") or {}
    limit = bad_files.bad_file_limit(items, hook.get("max_fraction", bad_files.MAX_FRACTION),
                                     hook.get("min_files", bad_files.MIN_FILES))
    records = [dict(file=f, reason=r) for f, r in found]
    for r in records:
        print(f"[nepa] seg: bad file (skipped): {r['file']}: {r['reason']}", file=sys.stderr)
    if len(records) > limit:
        raise bad_files.BadFileError(f"{len(records)} bad files, more than the {limit} a run of {items} images "
                                     f"tolerates: {bad_files.describe(records)}")
    if hook:
        hook["known"] = list(hook.get("known") or []) + records


def run(cfg: Config) -> int:
    """Check the data, train then evaluate (or evaluate only); the final metrics go to final_metrics.json and,
    as one JSON line, to stdout. 0 when the run ends ok."""
    import json

    extra = dict(cfg.seg_run)
    test_only = extra.pop("test_only")
    num_classes, rzl, ignore = label_spec(cfg)
    root = _datasets(cfg)[0]["data_root"]
    splits = ("validation",) if test_only else ("training", "validation")
    found: list[tuple[str, str]] = []  # unreadable files and size mismatches, from the headers
    try:
        counts = check_seg_root(root, num_classes, rzl, ignore, splits=splits, bad=found)
        _note_bad_files(cfg, found, sum(counts.values()))
    except DataError as e:
        raise ValueError(f"data: {e}") from e
    extra.update(num_classes=num_classes, reduce_zero_label=rzl, images=dict(counts))
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    print(f"[nepa] seg: {extra['config']} | backbone {extra['arch']} | data {root} {counts} | work_dir {cfg.work_dir}",
          file=sys.stderr)
    if extra["ckpt"] is None:
        print("[nepa] seg: no --ckpt: the backbone starts from random initialisation", file=sys.stderr)
    t0 = time.time()
    if test_only:
        runner = build_runner(cfg)
        load_segmentor(runner.load_checkpoint, extra["evaluated_checkpoint"])
        metrics = runner.test()
        final = update_final(cfg.work_dir, task="seg", status="ok", reason="", **extra,
                             **{f"test/{k}": v for k, v in metrics.items()}, **_metrics(metrics),
                             eval_seconds=round(time.time() - t0, 1))
    else:
        update_final(cfg.work_dir, task="seg", **extra)
        runner = train(cfg)
        train_s = time.time() - t0
        if cfg.get("val_cfg") is not None and cfg.get("val_dataloader") is not None:
            # mmengine's iteration loop validates at its last iteration: that is the result (the same on every rank)
            hub = runner.message_hub
            metrics = {k[4:]: v.current() for k, v in hub.log_scalars.items() if k.startswith("val/")}
        else:
            metrics = runner.test()
        bb = runner.model.module.backbone if hasattr(runner.model, "module") else runner.model.backbone
        report = getattr(bb, "load_report", None)
        final = update_final(cfg.work_dir, task="seg", status=read_final(cfg.work_dir).get("status", "ok"),
                             steps=runner.iter, **_metrics(metrics), train_seconds=round(train_s, 1),
                             backbone_load=str(report) if report else "random init",
                             causal=bool(cfg.model.backbone.get("causal", False)),
                             layer_decay=layer_decay_of(cfg))
    keys = ("status", "steps", "mIoU", "aAcc", "mAcc")
    print(json.dumps({k: final.get(k) for k in keys if k in final}), file=sys.stdout)
    return 0 if final.get("status") in ("ok", None) else 1


def predict(config: str, checkpoint: str, images: list[str], inference: Optional[str] = None,
            device: str = "cpu") -> list[torch.Tensor]:
    """Label maps (H, W) at each image's own size from a trained segmentor checkpoint (SyncBN -> BN)."""
    from mmengine.model import revert_sync_batchnorm
    from mmseg.apis import inference_model, init_model

    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None
    set_inference(cfg, inference)
    model = init_model(cfg, None, device=device)
    from mmengine.runner import load_checkpoint

    load_segmentor(lambda p, strict: load_checkpoint(model, p, map_location=device, strict=strict), checkpoint)
    model = revert_sync_batchnorm(model).eval()
    return [r.pred_sem_seg.data[0].cpu() for r in (inference_model(model, img) for img in images)]


# ----------------------------------------------------------------------------------------------
# benchmark: one training iteration, NEPA-B + UPerNet beside mmseg's MAE-B + UPerNet
# ----------------------------------------------------------------------------------------------
def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _bench_one(config: str, batch: int, size: int, warmup: int, iters: int, device: str, q: Any) -> None:
    """Child process: build the segmentor of `config`, time train iterations, report time and peak memory."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    from mmengine.registry import init_default_scope

    torch.manual_seed(0)
    init_default_scope("mmseg")
    if config.startswith("mmseg::"):
        import mmseg

        config = str(Path(mmseg.__file__).parent / ".mim" / "configs" / config[len("mmseg::"):])
    cfg = Config.fromfile(config)
    cfg.model.pretrained = None
    cfg.model.backbone.pop("init_cfg", None)
    cfg.model.data_preprocessor.size = (size, size)
    if cfg.model.backbone.type == "MAE":
        cfg.model.backbone.img_size = (size, size)  # mmseg's MAE takes only its fixed input size
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).to(device).train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8) for _ in range(batch)]
    nc = cfg.model.decode_head.num_classes
    samples = []
    for _ in range(batch):
        s = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, nc, (1, size, size), generator=g))
        samples.append(s)
    data = dict(inputs=imgs, data_samples=samples)
    dev = torch.device(device)

    def step() -> None:
        model.train_step(copy.copy(data), optim)

    for _ in range(warmup):
        step()
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux)
        except OSError:
            pass
    sec = time_fn(step, dev, 0, iters)
    peak = ((torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda"
            else _rss_mib("VmHWM") - base)
    params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
    q.put(dict(sec=sec, peak=peak, params=params, tokens=None))


def bench_seg(args: argparse.Namespace, quiet: bool = False) -> list[tuple[str, dict]]:
    """One training iteration (forward, backward, AdamW step) of NEPA-B + UPerNet vs MAE-B + UPerNet at 512.
    Returns [(name, {sec, peak, params})], MAE-B first; `quiet`: no table."""
    import multiprocessing as mp

    from nepa_eval.timing import device_of

    dev = device_of(args.device)
    size, batch = args.seg_size, args.seg_batch
    rows = []
    ctx = mp.get_context("spawn")  # a fresh process each: peak memory is the step's alone
    configs = [("mmseg MAE-B + UPerNet (patch 16)", MAE_CONFIG),
               ("NEPA-B + UPerNet (patch 14, padded)", str(ROOT / CONFIGS["base"]))]
    for name, config in configs:
        q = ctx.Queue()
        p = ctx.Process(target=_bench_one, args=(config, batch, size, args.warmup, args.iters, dev.type, q))
        p.start()
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"benchmark of {name} failed (exit code {p.exitcode})")
        rows.append((name, q.get()))
    if quiet:
        return rows
    ref = rows[0][1]
    print(f"# seg train iteration: {size}x{size}, batch {batch}, {dev.type}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.warmup} warm-up + {args.iters} timed (median)")
    mem_kind = "CUDA max allocated" if dev.type == "cuda" else "peak RSS growth"
    print(f"| model | backbone params (M) | s / iter | time vs MAE-B | {mem_kind} (MiB) | memory vs MAE-B |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['params']:.1f} | {r['sec']:.2f} | {r['sec'] / ref['sec']:.2f} | {r['peak']:.0f} | "
              f"{r['peak'] / ref['peak']:.2f} |")
    return rows
