"""`nepa-eval bench seg`: one training iteration (forward, backward, AdamW step) of NEPA-B + UPerNet beside mmseg's
own MAE-B + UPerNet, each in a fresh process (so peak memory is the step's alone)."""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config

from nepa_eval.engine import ROOT
from nepa_eval.tasks.seg import CONFIGS, MAE_CONFIG
from nepa_eval.timing import sync, time_fn


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
