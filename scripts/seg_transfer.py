r"""Does NEPA pretraining help segmentation? A pretrained tiny backbone against random initialisation, same budget.

    python scripts/seg_transfer.py                       # or: make seg-transfer (about 8 min on 2 cores)
    python scripts/seg_transfer.py --config seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py \
        --seg-iters 1500 --cfg-options optim_wrapper.optimizer.lr=2e-3        # the same with UPerNet

Steps, each a real `nepa-eval` command whose run directory is reused when it already finished (so an
interrupted comparison continues where it stopped):
  1. the Fashion-MNIST mosaic set (`nepa-eval make-data mosaic`), unless present;
  2. one tiny NEPA pretraining (`nepa-eval pretrain`), unless --ckpt: by default on unlabelled mosaic canvases
     made from Fashion-MNIST's training items (cls_configs/pretrain/nepa_tiny_fmosaic.py), so it never sees
     the validation canvases, which are made from the test items;
  3. for every seed, segmentation on the mosaic set twice (`nepa-eval seg`): once from the pretrained
     backbone, once from random initialisation; everything else (data order, head init, iterations,
     learning rates) is identical. The default config is the linear-head one
     (seg_configs/nepa/nepa-t_linear_fashion-mosaic-56x56_cpu.py): with UPerNet's convolutional head, a
     tiny random-init ViT (LayerScale 1e-5, so its blocks start as the identity) is a patchifier for a
     CNN that learns the task by itself, and the comparison measures the head rather than the backbone;
  4. a table of mIoU per seed and the mean difference, also written as seg_transfer.csv / .json.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nepa_eval.ablate import backbone_file, ensure_mosaic, ensure_stage  # noqa: E402
from nepa_eval.engine import read_final  # noqa: E402

PRETRAIN_CFG = "cls_configs/pretrain/nepa_tiny_fmosaic.py"
SEG_CFG = "seg_configs/nepa/nepa-t_linear_fashion-mosaic-56x56_cpu.py"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--work-dir", default="work_dirs/seg_transfer", help="run directories and the table [%(default)s]")
    p.add_argument("--data-root", default="work_dirs/data/fashion_mosaic",
                   help="the mosaic set (written when absent) [%(default)s]")
    p.add_argument("--config", default=SEG_CFG, help="the seg config of both arms [%(default)s]")
    p.add_argument("--ckpt", help="a pretrained tiny backbone to use instead of pretraining one here")
    p.add_argument("--pretrain-config", default=PRETRAIN_CFG, help="the pretraining recipe [%(default)s]")
    p.add_argument("--pretrain-iters", type=int, default=600, help="pretraining iterations [%(default)s]")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seg seeds [%(default)s]")
    p.add_argument("--seg-iters", type=int, default=None, help="seg iterations [the config's]")
    p.add_argument("--cfg-options", nargs="*", default=[], metavar="K=V",
                   help="extra --cfg-options for both seg runs of every seed")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir)
    if args.ckpt is not None and not Path(args.ckpt).is_file():
        print(f"[nepa] --ckpt {args.ckpt}: no such file; give a tiny NEPA backbone, or omit --ckpt to pretrain one "
              f"here", file=sys.stderr)
        return 1
    ensure_mosaic(args.data_root, args.quiet)

    ckpt = args.ckpt
    if ckpt is None:
        pre_dir = work / "pretrain"
        cmd = ["pretrain", "--config", args.pretrain_config, "--work-dir", str(pre_dir),
               "--cfg-options", f"train_cfg.max_iters={args.pretrain_iters}"]
        if ensure_stage(cmd, pre_dir, "pretrain", args.force, args.quiet) != "ok":
            print(f"[nepa] pretraining failed: see {pre_dir / 'console.log'}", file=sys.stderr)
            return 1
        ckpt = backbone_file(pre_dir)
        if not Path(ckpt).is_file():
            print(f"[nepa] the pretraining left no backbone at {ckpt}: see {pre_dir / 'console.log'}", file=sys.stderr)
            return 1

    rows = []
    for seed in args.seeds:
        row = {"seed": seed}
        for init in ("pretrained", "random"):
            run_dir = work / f"seg_{init}_seed{seed}"
            opts = [f"randomness.seed={seed}", *args.cfg_options]
            if args.seg_iters:
                opts.append(f"train_cfg.max_iters={args.seg_iters}")
                opts.append(f"train_cfg.val_interval={args.seg_iters}")
            cmd = ["seg", "--config", args.config, "--data-root", args.data_root, "--work-dir", str(run_dir),
                   *(["--ckpt", str(ckpt)] if init == "pretrained" else []), "--cfg-options", *opts]
            status = ensure_stage(cmd, run_dir, f"seed {seed}: seg from {init}", args.force, args.quiet)
            final = read_final(run_dir)
            row[init] = float(final["mIoU"]) if status == "ok" and final.get("mIoU") is not None else None
        if row["pretrained"] is not None and row["random"] is not None:
            row["gain"] = row["pretrained"] - row["random"]
        rows.append(row)

    done = [r for r in rows if "gain" in r]
    print(f"\n{Path(args.config).stem}: tiny NEPA on the Fashion-MNIST mosaic set; mIoU (%), backbone {ckpt}")
    print(f"{'seed':>6} {'pretrained':>11} {'random':>8} {'gain':>7}")
    for r in rows:
        cells = [f"{r[k]:.2f}" if r.get(k) is not None else "failed" for k in ("pretrained", "random")]
        print(f"{r['seed']:>6} {cells[0]:>11} {cells[1]:>8} {r.get('gain', float('nan')):>+7.2f}")
    summary = {"backbone": str(ckpt), "rows": rows}
    if done:
        for k in ("pretrained", "random", "gain"):
            vals = [r[k] for r in done]
            summary[f"mean_{k}"] = statistics.fmean(vals)
            summary[f"std_{k}"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        summary["seeds_with_gain"] = sum(r["gain"] > 0 for r in done)
        print(f"{'mean':>6} {summary['mean_pretrained']:>11.2f} {summary['mean_random']:>8.2f} "
              f"{summary['mean_gain']:>+7.2f}  (std of the gain {summary['std_gain']:.2f}; pretrained ahead on "
              f"{summary['seeds_with_gain']} of {len(done)} seeds)")
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "seg_transfer.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["seed", "pretrained", "random", "gain"])
        w.writeheader()
        w.writerows(rows)
    (work / "seg_transfer.json").write_text(json.dumps(summary, indent=2))
    print(f"\ntable: {work / 'seg_transfer.csv'}")
    return 0 if len(done) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
