"""Benchmarks: printed tables, measured side by side in one run (ratios, not absolute seconds).

`nepa-eval bench backbone`: a NEPA-B train step (forward + backward) beside timm's EVA-B built with the
same width, depth, 2D RoPE, QK-Norm, SwiGLU and LayerScale, eager and compiled (--compile), float32 and bf16
autocast, each row as speed vs EVA-B in its mode and dtype and as a fraction of the GEMM peak measured in the
same run; --profile adds torch.profiler's op tables. Other benchmarks register into BENCHES (pretraining step,
segmentation step, `jobs`: ablate's rows at once against in turn).
"""
from __future__ import annotations

import argparse
from typing import Callable, Optional

import torch
import torch.nn as nn

from nepa_eval.timing import device_of, gemm_time, matmul_peak, peak_memory, time_fn

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


def train_step_fn(model: nn.Module, x: torch.Tensor, autocast: Optional[torch.dtype],
                  compiled: bool = False) -> Callable[[], None]:
    """One train step: forward_features (torch.compile'd when `compiled`; its backward by AOTAutograd), a scalar
    loss, backward, an SGD update (eager)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    features = torch.compile(model.forward_features) if compiled else model.forward_features

    def step() -> None:
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            out = features(x)
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def vit_train_gemms(embed_dim: int, depth: int, tokens: int, mlp_hidden: int, heads: int,
                    batch: int) -> list[tuple[int, int, int, int, int]]:
    """The GEMMs of one train step of a SwiGLU ViT as (count, batch, m, k, n): each linear's forward, input
    gradient and weight gradient, and the attention's two batched products with their four gradients. Their FLOPs
    are vit_train_flops(..., gated=True)."""
    d, t, h, m = embed_dim, tokens, mlp_hidden, batch * tokens
    out = []
    for k, n in ((d, 3 * d), (d, d), (d, 2 * h), (h, d)):  # qkv, attention out, SwiGLU in (fused pair), out
        out += [(depth, 1, m, k, n), (depth, 1, m, n, k), (depth, 1, k, m, n)]  # forward, d input, d weight
    bh, hd = batch * heads, d // heads
    # q k^T (t, hd, t) and its gradient of attn v; attn v (t, t, hd) with both gradients of q k^T and one of attn v
    return out + [(2 * depth, bh, t, hd, t), (4 * depth, bh, t, t, hd)]


REFERENCE = "timm eva-b"  # the row every other row of its mode and dtype is compared with


def backbone_models(depth: int, res: int) -> dict[str, Callable[[], nn.Module]]:
    """Ours (causal, bidirectional) and timm's EVA with the same ViT-B width, depth, heads, 2D RoPE, QK-Norm,
    SwiGLU (hidden 2048) and LayerScale 1e-5."""
    from timm.models.eva import Eva

    from backbones.nepa import NepaViT

    D, heads, hidden = 768, 12, 2048  # SwiGLU hidden of EVA's 4 * 2/3 ratio
    common = dict(img_size=res, patch_size=14, embed_dim=D, depth=depth, num_heads=heads)
    return {
        REFERENCE: lambda: Eva(**common, num_classes=0, mlp_ratio=hidden / D, swiglu_mlp=True, qk_norm=True,
                               use_rot_pos_emb=True, use_abs_pos_emb=False, init_values=1e-5,
                               ref_feat_shape=res // 14),
        "nepa (causal)": lambda: NepaViT(**common, mlp_type="swiglu", mlp_hidden=hidden, causal=True),
        "nepa (bidirectional)": lambda: NepaViT(**common, mlp_type="swiglu", mlp_hidden=hidden, causal=False),
    }


def bench_dtypes(dev: torch.device, fp32_only: bool) -> dict[str, Optional[torch.dtype]]:
    """The dtypes a backbone benchmark times: float32, and bf16 autocast unless --fp32-only on a CPU."""
    return {"float32": None} if dev.type == "cpu" and fp32_only else {"float32": None, "bf16": torch.bfloat16}


# the targets, checked on the printed rows of our causal model: (mode, dtype, what, threshold)
TARGETS = (("eager", "float32", "speed", 1.0), ("eager", "bf16", "speed", 1.2), ("compiled", "float32", "speed", 1.0),
           ("compiled", "bf16", "peak", 0.65))


@bench("backbone")
def bench_backbone(args: argparse.Namespace) -> list[dict]:
    """The table: every model in every mode (eager, and compiled with --compile) and dtype (float32, bf16
    autocast unless --fp32-only), each as img/s, ms/step, speed vs timm's EVA-B in the same mode and dtype
    (EVA's time / the row's time: above 1 is faster) and the achieved fraction of the measured GEMM peak of
    that dtype. Compiled rows get at least 2 warm-up steps (the first compiles, the second may recompile once
    the gradients exist). Returns the rows."""
    dev = device_of(args.device)
    depth, res, bs = args.depth, args.img_size, args.batch_size
    tokens = 1 + (res // 14) ** 2
    models = backbone_models(depth, res)
    modes = ("eager", "compiled") if args.compile else ("eager",)
    dtypes = bench_dtypes(dev, args.fp32_only)
    flops = vit_train_flops(768, depth, tokens, 2048, True, bs)
    peaks = {name: matmul_peak(dev, dt or torch.float32) for name, dt in dtypes.items()}
    gemms = vit_train_gemms(768, depth, tokens, 2048, 12, bs)
    floors = {name: gemm_time(dev, dt or torch.float32, gemms) for name, dt in dtypes.items()}
    print(f"# backbone train step (forward_features, backward, SGD): ViT-B width, depth {depth}, {res}x{res} patch 14 "
          f"({tokens} tokens), batch {bs}, {dev.type}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median of {args.iters} after {args.warmup} warm-up step(s), compiled rows at least 2")
    print("# GEMM peak measured (square matmuls, best of 1024/2048/4096): "
          + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items())
          + "; achieved = dense matmul FLOPs of the step (causal attention counted in full) / time / peak")
    print("# the step's own GEMMs at their shapes, each timed alone: "
          + ", ".join(f"{k} {1000 * v:.1f} ms = {100 * flops / v / peaks[k]:.0f}% of peak" for k, v in floors.items())
          + " (the most a step can reach); GEMM share = that time / the row's time")
    print("| mode | dtype | model | img/s | ms/step | speed vs EVA-B | achieved / GEMM peak | peak mem (MiB) "
          "| GEMM share |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    rows: list[dict] = []
    for mode in modes:
        for dname, dt in dtypes.items():
            ref = None
            for mname, build in models.items():  # the reference first
                torch._dynamo.reset()
                torch.manual_seed(0)
                model = build().to(dev).train()
                x = torch.randn(bs, 3, res, res, device=dev)
                step = train_step_fn(model, x, dt, compiled=mode == "compiled")
                sec = time_fn(step, dev, max(args.warmup, 2) if mode == "compiled" else args.warmup, args.iters)
                mem = peak_memory(step, dev)
                ref = sec if ref is None else ref
                r = dict(mode=mode, dtype=dname, model=mname, ips=bs / sec, ms=1000 * sec, speed=ref / sec,
                         peak=flops / sec / peaks[dname], mem=mem, gemm_share=floors[dname] / sec)
                rows.append(r)
                mem_s = "n/a" if mem is None else f"{mem:.0f}"
                print(f"| {mode} | {dname} | {mname} | {r['ips']:.2f} | {r['ms']:.1f} | {r['speed']:.2f}x | "
                      f"{100 * r['peak']:.1f}% | {mem_s} | {100 * r['gemm_share']:.0f}% |", flush=True)
                del model, step
    torch._dynamo.reset()
    ours = {(r["mode"], r["dtype"]): r for r in rows if r["model"] == "nepa (causal)"}
    checks = []
    for mode, dname, what, want in TARGETS:
        r = ours.get((mode, dname))
        if r is not None:
            fmt = (lambda v: f"{v:.2f}x") if what == "speed" else (lambda v: f"{100 * v:.0f}%")
            checks.append(f"{mode} {dname} {'speed vs EVA-B' if what == 'speed' else 'of GEMM peak'} {fmt(r[what])} "
                          f"(target >= {fmt(want)}: {'met' if r[what] >= want else 'not met'})")
    if checks:
        print("# nepa (causal) against the targets: " + "; ".join(checks))
    if getattr(args, "profile", False):
        profile_backbone(args)
    return rows


def profile_backbone(args: argparse.Namespace, row_limit: int = 25) -> dict[str, list]:
    """`--profile`: torch.profiler over one eager train step of our causal model and of EVA-B per dtype (after a
    warm-up step): the ops by self CPU time, to see where the time outside the GEMMs goes. Returns, per
    "model / dtype", the (op name, self CPU ms, calls) rows."""
    from torch.profiler import ProfilerActivity, profile

    dev = device_of(args.device)
    models = backbone_models(args.depth, args.img_size)
    dtypes = bench_dtypes(dev, args.fp32_only)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    out: dict[str, list] = {}
    for dname, dt in dtypes.items():
        for mname in ("nepa (causal)", REFERENCE):
            torch.manual_seed(0)
            model = models[mname]().to(dev).train()
            x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=dev)
            step = train_step_fn(model, x, dt)
            step()
            with profile(activities=acts) as prof:
                step()
            events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in events) / 1000
            rows = [(e.key, e.self_cpu_time_total / 1000, e.count) for e in events]
            out[f"{mname} / {dname}"] = rows
            print(f"\n# profile: {mname}, {dname}, one eager train step, self CPU time {total:.0f} ms "
                  f"(depth {args.depth}, batch {args.batch_size}, {args.img_size}px)")
            print("| op | self CPU ms | share | calls |")
            print("|---|---|---|---|")
            for key, ms, n in rows[:row_limit]:
                print(f"| {key} | {ms:.1f} | {100 * ms / total:.1f}% | {n} |")
            del model, step
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", nargs="*", default=["backbone"], help="benchmarks to run (default: backbone)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--depth", type=int, default=12, help="blocks (12 = ViT-B); fewer for a quicker look")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    p.add_argument("--profile", action="store_true",
                   help="backbone: also print torch.profiler's op table (self CPU time) of one eager step of ours and "
                        "of EVA-B per dtype")
    p.add_argument("--fp32-only", action="store_true", help="skip bf16 autocast (slow on CPUs without bf16 units)")
    p.add_argument("--seg-size", type=int, default=512, help="seg: crop size (default 512, ADE20K's)")
    p.add_argument("--jobs", type=int, default=2, help="jobs: runs at once (default 2)")
    p.add_argument("--jobs-steps", type=int, default=100, help="jobs: pretraining steps of each run (default 100)")
    p.add_argument("--seg-batch", type=int, default=2, help="seg: images per iteration (default 2; UPerNet's BN needs 2)")


@bench("pretrain")
def bench_pretrain(args: argparse.Namespace) -> None:
    """One NEPA pretraining step (nepa_eval/bench_pretrain.py)."""
    from nepa_eval.bench_pretrain import bench_pretrain as run

    run(args)


@bench("seg")
def bench_seg(args: argparse.Namespace) -> None:
    """One NEPA-B + UPerNet training iteration beside mmseg's MAE-B (nepa_eval/bench_seg.py)."""
    from nepa_eval.bench_seg import bench_seg as run

    run(args)


@bench("jobs")
def bench_jobs(args: argparse.Namespace) -> None:
    """`ablate --jobs N` against one run after another: N tiny pretrainings (the real command, through ablate's
    runner), first in turn on torch's default threads, then all at once on cores/N threads each."""
    import tempfile
    import time
    from pathlib import Path

    from nepa_eval.ablate import Stage, cpu_count, run_chains

    n = max(2, args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        def chains(tag: str) -> list[list[Stage]]:
            return [[Stage(["pretrain", "--config", "cls_configs/pretrain/nepa_tiny_fmnist.py", "--work-dir",
                            f"{tmp}/{tag}{k}", "--seed", str(k), "--cfg-options",
                            f"train_cfg.max_iters={args.jobs_steps}", "default_hooks.knn.enabled=False"],
                           Path(tmp) / f"{tag}{k}", f"{tag} run {k}")] for k in range(n)]

        wall = {}
        for tag, jobs in (("in turn", 1), ("at once", n)):
            t0 = time.perf_counter()
            run_chains(chains(tag), jobs, force=True, quiet=True)
            wall[tag] = time.perf_counter() - t0
    print(f"\n{n} tiny pretrainings of {args.jobs_steps} steps each (process start-up included), "
          f"{cpu_count()} cores, torch {torch.__version__}")
    print("| mode | threads per run | wall (s) | speed vs in turn |\n|---|---|---|---|")
    print(f"| in turn | {torch.get_num_threads()} (default) | {wall['in turn']:.1f} | 1.00x |")
    print(f"| {n} at once | {max(1, cpu_count() // n)} | {wall['at once']:.1f} | "
          f"{wall['in turn'] / wall['at once']:.2f}x |")


def main(args: argparse.Namespace) -> int:
    for name in args.which:
        if name not in BENCHES:
            raise ValueError(f"unknown benchmark {name!r}; available: {sorted(BENCHES)}")
        BENCHES[name](args)
    return 0


# ----------------------------------------------------------------------------------------------
# the cluster table (`nepa-eval bench cluster`, `nepa-eval doctor --bench`)
# ----------------------------------------------------------------------------------------------
# the GPU targets: NEPA-B pretraining bf16 MFU on one H100, seg time per token vs MAE-B, fine-tune speed vs
# timm's ViT-B (its time / ours)
CLUSTER_TARGETS = {"pretrain": (">=", 0.50), "seg": ("<=", 1.10), "finetune": (">=", 1.00)}
# sizes: (depth, image, batch) of the pretraining and fine-tune steps, (crop, batch) of the seg iteration
CLUSTER_SIZES = {"cuda": dict(depth=12, img=224, batch=128, seg=512, seg_batch=8),
                 "cpu": dict(depth=2, img=112, batch=4, seg=64, seg_batch=2)}


def mfu(flops: float, sec: float, peak: float) -> float:
    """Model FLOPs utilisation: the step's matmul FLOPs per second over the measured matmul peak."""
    return flops / sec / peak


def seg_tokens(size: int, patch: int, pad: bool) -> int:
    """Backbone tokens of a size x size crop: NEPA pads to the patch (mmseg's MAE needs a multiple of it)."""
    side = -(-size // patch) if pad else size // patch
    return side * side


def cluster_rows(m: dict) -> list[dict]:
    """The table's rows from the measurements `m`: peak (FLOP/s), flops (one pretraining step), pretrain
    {mode: sec}, batch, seg {name: dict(sec, tokens, batch, peak)}, finetune {nepa, timm: sec}, device. Each row:
    what, ours, reference, value (MFU or ratio), target, verdict (met / not met; 'n/a' off a GPU, whose sizes
    are not the targets')."""
    gpu = m["device"] == "cuda"

    def verdict(key: str, value: float) -> tuple[str, str]:
        op, want = CLUSTER_TARGETS[key]
        target = f"{op} {want:.0%}" if key == "pretrain" else f"{op} {want:.2f}x"
        if not gpu:
            return target, "n/a (CPU sizes)"
        return target, "met" if (value >= want if op == ">=" else value <= want) else "not met"

    rows = []
    for mode, sec in m["pretrain"].items():
        u = mfu(m["flops"], sec, m["peak"])
        rows.append(dict(what=f"NEPA-B pretraining step, bf16, {mode}", ours=f"{m['batch'] / sec:.1f} img/s, "
                         f"{1000 * sec:.1f} ms", reference=f"matmul peak {m['peak'] / 1e12:.2f} TFLOP/s",
                         value=u, shown=f"MFU {u:.1%}", **dict(zip(("target", "verdict"), verdict("pretrain", u)))))
    if m.get("seg"):
        n, r = m["seg"]["nepa"], m["seg"]["mae"]
        per = lambda s: s["sec"] / (s["tokens"] * s["batch"])  # noqa: E731
        ratio = per(n) / per(r)
        rows.append(dict(what="NEPA-B + UPerNet iteration vs mmseg MAE-B + UPerNet, per token",
                         ours=f"{1000 * n['sec']:.0f} ms, {1e6 * per(n):.2f} us/token, {n['peak']:.0f} MiB",
                         reference=f"{1000 * r['sec']:.0f} ms, {1e6 * per(r):.2f} us/token, {r['peak']:.0f} MiB",
                         value=ratio, shown=f"{ratio:.2f}x time/token, {n['peak'] / r['peak']:.2f}x memory",
                         **dict(zip(("target", "verdict"), verdict("seg", ratio)))))
    ft = m["finetune"]
    speed = ft["timm"] / ft["nepa"]
    rows.append(dict(what="fine-tune step (bf16) vs timm ViT-B, same patch and tokens",
                     ours=f"{1000 * ft['nepa']:.1f} ms", reference=f"{1000 * ft['timm']:.1f} ms", value=speed,
                     shown=f"{speed:.2f}x speed", **dict(zip(("target", "verdict"), verdict("finetune", speed)))))
    return rows


def format_cluster(rows: list[dict]) -> str:
    lines = ["| measurement | ours | reference | result | target | verdict |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['ours']} | {r['reference']} | {r['shown']} | {r['target']} | {r['verdict']} |"
              for r in rows]
    return "\n".join(lines)


def pretrain_step_fn(model: nn.Module, x: torch.Tensor, compiled: bool) -> Callable[[], None]:
    """One NEPA pretraining step as the Runner takes it: bf16 autocast forward + loss (torch.compile'd when
    `compiled`), backward, grad clip 1.0, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    fwd = torch.compile(model) if compiled else model

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            loss = fwd(x)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def finetune_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One classification step: bf16 autocast logits, cross-entropy, backward, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


@bench("cluster")
def bench_cluster(args: argparse.Namespace) -> list[dict]:
    """The issue's GPU table, measured side by side on one device: NEPA-B pretraining step throughput and MFU (bf16,
    eager and compiled) against the bf16 matmul peak measured in the same run; a NEPA-B + UPerNet iteration against
    mmseg's MAE-B (time per token, peak memory; nepa_eval/bench_seg.py); a fine-tune step against timm's
    ViT-B with the same patch. Full sizes on a GPU; on a CPU the same code at CLUSTER_SIZES['cpu']."""
    from timm.models.vision_transformer import VisionTransformer

    from backbones.nepa import NepaViT
    from backbones.nepa.model import SIZES
    from nepa_eval.tasks.pretrain import NepaPretrainModel

    dev = device_of(args.device)
    sz = CLUSTER_SIZES["cuda" if dev.type == "cuda" else "cpu"]
    depth, img, bs = sz["depth"], sz["img"], sz["batch"]
    tokens = 1 + (img // 14) ** 2
    warm, iters = max(args.warmup, 2), args.iters
    peak = matmul_peak(dev, torch.bfloat16, (4096, 8192) if dev.type == "cuda" else (256, 512, 1024))
    m: dict = dict(device=dev.type, peak=peak, batch=bs, pretrain={}, finetune={},
                   flops=vit_train_flops(768, depth, tokens, 3072, False, bs))
    x = torch.randn(bs, 3, img, img, device=dev)
    for mode in ("eager", "compiled"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = NepaPretrainModel(backbone={**SIZES["base"], "depth": depth, "img_size": img, "patch_size": 14,
                                            "rope_rescale": 2.0}).to(dev).train()
        m["pretrain"][mode] = time_fn(pretrain_step_fn(model, x, mode == "compiled"), dev, warm, iters)
        del model
    torch._dynamo.reset()
    y = torch.randint(0, 1000, (bs,), device=dev)
    common = dict(img_size=img, patch_size=14, embed_dim=768, depth=depth, num_heads=12, num_classes=1000)
    for name, build in (("timm", lambda: VisionTransformer(**common, global_pool="avg", fc_norm=True)),
                        ("nepa", lambda: NepaViT(**common, causal=False))):
        torch.manual_seed(0)
        model = build().to(dev).train()
        m["finetune"][name] = time_fn(finetune_step_fn(model, x, y), dev, warm, iters)
        del model
    from nepa_eval.bench_seg import bench_seg

    seg = bench_seg(argparse.Namespace(device=dev.type, seg_size=sz["seg"], seg_batch=sz["seg_batch"],
                                       warmup=args.warmup, iters=iters), quiet=True)
    m["seg"] = {key: dict(r, tokens=seg_tokens(sz["seg"], patch, key == "nepa"), batch=sz["seg_batch"])
                for key, patch, r in (("mae", 16, seg[0][1]), ("nepa", 14, seg[1][1]))}
    rows = cluster_rows(m)
    print(f"\n# cluster table: {dev.type}"
          + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
          + f", torch {torch.__version__}; pretraining and fine-tune: depth {depth}, {img}px patch 14 ({tokens} "
          f"tokens), batch {bs}; seg: {sz['seg']}px crop, batch {sz['seg_batch']}; median of {iters} after {warm} "
          "warm-up steps; MFU = matmul FLOPs of the step (causal attention counted in full) / time / measured bf16 "
          "matmul peak")
    print(format_cluster(rows), flush=True)
    return rows
