"""Benchmarks: printed tables, measured side by side in one run (ratios, not absolute seconds).

`nepa-eval bench backbone`: a NEPA-B train step (forward + backward) beside timm's EVA built with the
same width, depth, 2D RoPE, SwiGLU and LayerScale, in float32 and bf16 autocast, with the machine's
measured matmul peak so the achieved fraction of peak is printed. Other benchmarks register into
BENCHES (pretraining step, segmentation step).
"""
from __future__ import annotations

import argparse
from typing import Callable, Optional

import torch
import torch.nn as nn

from nepa_eval.timing import device_of, matmul_peak, peak_memory, time_fn

BENCHES: dict[str, Callable[[argparse.Namespace], None]] = {}


def bench(name: str):
    def deco(fn):
        BENCHES[name] = fn
        return fn
    return deco


def vit_train_flops(embed_dim: int, depth: int, tokens: int, mlp_hidden: int, gated: bool, batch: int) -> float:
    """Matmul FLOPs of one train step (forward x 3) of a ViT: projections, MLP and attention scores."""
    d, t = embed_dim, tokens
    proj = 4 * d * d  # qkv + out
    mlp = (3 if gated else 2) * d * mlp_hidden
    attn = 2 * t * d  # QK^T and AV per token
    return 3 * 2 * batch * depth * t * (proj + mlp + attn)


def train_step_fn(model: nn.Module, x: torch.Tensor, autocast: Optional[torch.dtype]) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            out = model.forward_features(x)
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


@bench("backbone")
def bench_backbone(args: argparse.Namespace) -> None:
    from timm.models.eva import Eva

    from backbones.nepa import NepaViT

    dev = device_of(args.device)
    D, depth, heads, hidden = 768, args.depth, 12, 2048  # SwiGLU hidden of EVA's 4 * 2/3 ratio
    res, bs = args.img_size, args.batch_size
    tokens = 1 + (res // 14) ** 2
    common = dict(img_size=res, patch_size=14, embed_dim=D, depth=depth, num_heads=heads)
    models = {
        "nepa (causal)": lambda: NepaViT(**common, mlp_type="swiglu", mlp_hidden=hidden, causal=True),
        "nepa (bidirectional)": lambda: NepaViT(**common, mlp_type="swiglu", mlp_hidden=hidden, causal=False),
        "timm eva": lambda: Eva(**common, num_classes=0, mlp_ratio=hidden / D, swiglu_mlp=True, qk_norm=True,
                                use_rot_pos_emb=True, use_abs_pos_emb=False, init_values=1e-5, ref_feat_shape=res // 14),
    }
    if args.compile:
        models = {**models, **{f"{k} +compile": v for k, v in models.items()}}
    dtypes = {"float32": None} if dev.type == "cpu" and args.fp32_only else {"float32": None, "bf16 autocast": torch.bfloat16}
    flops = vit_train_flops(D, depth, tokens, hidden, True, bs)
    peaks = {"float32": matmul_peak(dev, torch.float32), "bf16 autocast": matmul_peak(dev, torch.bfloat16)}
    print(f"# backbone train step: ViT-B width, depth {depth}, {res}x{res} patch 14 ({tokens} tokens), batch {bs}, "
          f"{dev.type}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"# matmul peak measured: fp32 {peaks['float32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16 autocast'] / 1e9:.1f} GFLOP/s")
    rows = []
    for dname, dt in dtypes.items():
        ref = None
        for mname, build in models.items():
            torch.manual_seed(0)
            model = build().to(dev).train()
            if mname.endswith("+compile"):
                model = torch.compile(model)
            x = torch.randn(bs, 3, res, res, device=dev)
            step = train_step_fn(model, x, dt)
            sec = time_fn(step, dev, args.warmup, args.iters)
            mem = peak_memory(step, dev)
            ref = ref or sec
            rows.append((dname, mname, bs / sec, sec / ref, flops / sec / peaks[dname], mem))
            del model
    print(f"| dtype | model | img/s | time vs first row | achieved / matmul peak | peak mem (MiB) |")
    print("|---|---|---|---|---|---|")
    for d, m, ips, ratio, frac, mem in rows:
        print(f"| {d} | {m} | {ips:.2f} | {ratio:.2f} | {100 * frac:.1f}% | {'n/a' if mem is None else f'{mem:.0f}'} |")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", nargs="*", default=["backbone"], help=f"benchmarks to run (default: backbone)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--depth", type=int, default=12, help="blocks (12 = ViT-B); fewer for a quicker look")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    p.add_argument("--fp32-only", action="store_true", help="skip bf16 autocast (slow on CPUs without bf16 units)")
    p.add_argument("--seg-size", type=int, default=512, help="seg: crop size (default 512, ADE20K's)")
    p.add_argument("--seg-batch", type=int, default=2, help="seg: images per iteration (default 2; UPerNet's BN needs 2)")


@bench("pretrain")
def bench_pretrain(args: argparse.Namespace) -> None:
    """One NEPA pretraining step (the function lives beside its task)."""
    from nepa_eval.tasks.pretrain import bench_pretrain as run

    run(args)


@bench("seg")
def bench_seg(args: argparse.Namespace) -> None:
    """One NEPA-B + UPerNet training iteration beside mmseg's MAE-B (the function lives beside its task)."""
    from nepa_eval.tasks.seg import bench_seg as run

    run(args)


def main(args: argparse.Namespace) -> int:
    for name in args.which:
        if name not in BENCHES:
            raise ValueError(f"unknown benchmark {name!r}; available: {sorted(BENCHES)}")
        BENCHES[name](args)
    return 0
