"""`nepa-eval bench pretrain`: images/s and peak memory of one NEPA pretraining step (forward, NEPA loss, backward,
grad clip, AdamW) for the tiny CPU recipe and the named sizes."""
from __future__ import annotations

import os
import time
from typing import Any, Optional

import torch

from nepa_eval.tasks.pretrain import NepaPretrainModel


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_peak_memory(fn: Any) -> Optional[float]:
    """Peak growth of the process's resident memory (MiB) during one call, sampled every millisecond (Linux)."""
    import threading

    if not os.path.exists("/proc/self/statm"):
        return None
    base, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    fn()
    done.set()
    t.join()
    return max(peak[0], _rss_mib()) - base


TINY_RECIPE = dict(embed_dim=128, depth=4, num_heads=4, mlp_hidden=256, patch_size=7, img_size=28,  # the CPU config
                   layerscale_init=1e-5, rope_rescale=None)


def bench_pretrain(args: Any) -> None:
    """Images/s and peak memory of one NEPA pretraining step (forward, NEPA loss, backward, clip, AdamW): the
    tiny CPU recipe (28x28, patch 7, batch 128) and the named sizes at --img-size / --batch-size, patch 14."""
    from backbones.nepa.model import SIZES
    from nepa_eval.timing import device_of, peak_memory, time_fn

    dev = device_of(args.device)
    res, bs = args.img_size, args.batch_size
    sizes = getattr(args, "sizes", None) or ["tiny-recipe", "tiny", "small", "base"]
    dtypes = {"float32": None} if (dev.type == "cpu" and args.fp32_only) else {"float32": None, "bf16": torch.bfloat16}
    print(f"# NEPA pretraining step (forward, loss, backward, grad clip, AdamW), {dev.type}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; peak memory: CUDA allocator on GPU, resident-set "
          "growth during the first step (weights, activations, AdamW state) on CPU")
    print("| model | input | batch | dtype | params (M) | img/s | ms/step | peak mem (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        if size == "tiny-recipe":
            bcfg, batch = dict(TINY_RECIPE), 128
        else:
            bcfg, batch = {**SIZES[size], "img_size": res, "patch_size": 14}, bs
            bcfg["depth"] = min(bcfg["depth"], args.depth)
        for dname, dt in dtypes.items():
            torch.manual_seed(0)
            model = NepaPretrainModel(backbone=bcfg).to(dev).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
            x = torch.randn(batch, 3, bcfg["img_size"], bcfg["img_size"], device=dev)

            def step() -> None:
                with torch.autocast(dev.type, dtype=dt, enabled=dt is not None):
                    loss = model(x)["loss"]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

            # CPU: the first step's resident-set growth (allocator caches hide later steps' peaks); it also warms up
            mem = cpu_peak_memory(step) if dev.type != "cuda" else None
            sec = time_fn(step, dev, args.warmup, args.iters)
            if dev.type == "cuda":
                mem = peak_memory(step, dev)
            n = sum(p.numel() for p in model.parameters()) / 1e6
            name = f"{size} (D {bcfg['embed_dim']}, depth {bcfg['depth']})"
            print(f"| {name} | {bcfg['img_size']}px / p{bcfg['patch_size']} | {batch} | {dname} | {n:.2f} | "
                  f"{batch / sec:.1f} | {1000 * sec:.0f} | {'n/a' if mem is None else f'{mem:.0f}'} |")
            del model, opt
