"""The transfer study (`nepa-eval transfer`): from how many pretraining steps does NEPA beat random initialisation?

Fine-tuned top-1 (the paper's protocol) against pretraining length, at several label budgets, with seeds:

    steps 0 (random init), s1 < s2 < ...   x   budgets (labels, epochs)   x   seeds 0..N-1

Each pretraining length is its own run with its own schedule (warm-up + cosine over its budget), not a
checkpoint in the middle of a longer run. Seed k pretrains with seed k and fine-tunes with seed k. Beside the
fine-tunes: the raw-pixel references of each budget (`nepa-eval pixels`) and a depth profile, the k-NN of
every block's output of the longest pretraining against the same architecture at random initialisation.

Every run is a real `nepa-eval pretrain|cls|pixels|knn` process (nepa_eval/ablate.py runs it: progress bar,
console.log, a finished run of the same command is reused). The study writes `manifest.json` (one entry per
run: stage, steps, labels, seed, run directory, the checkpoint it started from); the report reads the manifest
and each run's final_metrics.json, never guesses which run is which.

Layout under <work-dir>/<scale>/:  pretrain/steps<S>/seed<k>   cls/steps<S>_labels<L>/seed<k>
                                   pixels/labels<L>             depth/{pretrained,random}
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nepa_eval.records import _atomic_write
from nepa_eval.transfer_report import MANIFEST, write_report


@dataclass(frozen=True)
class Budget:
    """A label budget: how many labelled training images the fine-tune sees, for how many epochs."""
    labels: int
    epochs: int

    @property
    def name(self) -> str:
        return f"{self.labels:,} labels, {self.epochs} ep"


# What each scale runs unless the command line says otherwise. tiny: the tiny configs of the demo (Fashion-MNIST,
# D 128, 4 blocks, patch 7); the pretraining budgets span 10x and more.
SCALES: dict[str, dict[str, Any]] = {
    "tiny": dict(pretrain="cls_configs/pretrain/nepa_tiny_fmnist.py", cls="cls_configs/finetune/nepa-t_fmnist.py",
                 steps=[0, 300, 1000, 3000], budgets=[Budget(1000, 30), Budget(10000, 6)], seeds=3,
                 knn=dict(train_limit=10000)),
}


def parse_steps(text: str) -> list[int]:
    """'0,300,1000' -> [0, 300, 1000] (0 = random init; sorted, no repeats)."""
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps {text!r}: give whole numbers, e.g. 0,300,1000,3000") from None
    if not steps or steps[0] < 0:
        raise argparse.ArgumentTypeError(f"--steps {text!r}: give pretraining lengths >= 0, e.g. 0,300,1000,3000")
    return steps


def parse_budgets(text: str) -> list[Budget]:
    """'1000:30,10000:6' -> [Budget(1000, 30), Budget(10000, 6)] (labels:epochs)."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        labels, sep, epochs = part.partition(":")
        try:
            b = Budget(int(labels), int(epochs))
        except ValueError:
            b = None
        if not sep or b is None or b.labels < 1 or b.epochs < 1:
            raise argparse.ArgumentTypeError(f"--budgets {part!r}: give LABELS:EPOCHS, e.g. 1000:30,10000:6")
        out.append(b)
    if not out:
        raise argparse.ArgumentTypeError("--budgets: give at least one LABELS:EPOCHS")
    return out


# ----------------------------------------------------------------------------------------------
# the runs
# ----------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """One run of the study, as the manifest records it."""
    stage: str                      # pretrain | cls | pixels | knn
    run_dir: str
    argv: list[str]
    seed: Optional[int] = None
    steps: Optional[int] = None
    labels: Optional[int] = None
    epochs: Optional[int] = None
    started_from: Optional[str] = None  # the checkpoint given to the run ('none': random init)
    role: str = ""                  # knn: 'pretrained' | 'random'

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v != ""}


def _opts(options: dict[str, Any]) -> list[str]:
    from nepa_eval.ablate import _fmt

    return ["--cfg-options"] + [f"{k}={_fmt(v)}" for k, v in options.items()] if options else []


def plan(scale: str, steps: list[int], budgets: list[Budget], seeds: int, root: Path,
         options: Optional[dict[str, Any]] = None, depth: bool = True) -> list[list[Entry]]:
    """The study's runs as chains (each chain's runs in order: a pretraining, then its fine-tunes). `options`:
    --cfg-options for the pretrainings and fine-tunes (`pretrain:KEY` / `cls:KEY` for one of them)."""
    from nepa_eval.ablate import backbone_file, for_stage
    from nepa_eval.report import SPEC_DIR

    import yaml

    s = SCALES[scale]
    # the scale's shared pretraining options (e.g. no k-NN monitor: the depth profile measures it once)
    base = dict((yaml.safe_load((SPEC_DIR / "_scales.yaml").read_text()).get(scale) or {}).get("pretrain", {})
                .get("options") or {})
    base.update(for_stage(options or {}, "pretrain"))
    cls_base = for_stage(options or {}, "cls")
    chains: list[list[Entry]] = []
    for seed in range(seeds):
        seed_opt = {"randomness.seed": seed} if seed else {}  # seed 0: the configs' own
        for n in steps:
            chain: list[Entry] = []
            ckpt = "none"
            if n > 0:
                d = root / "pretrain" / f"steps{n}" / f"seed{seed}"
                argv = ["pretrain", "--config", s["pretrain"], "--work-dir", str(d)]
                argv += _opts({**base, "train_cfg.max_iters": n, **seed_opt})
                chain.append(Entry("pretrain", str(d), argv, seed=seed, steps=n))
                ckpt = backbone_file(d)
            for b in budgets:
                d = root / "cls" / f"steps{n}_labels{b.labels}" / f"seed{seed}"
                argv = ["cls", "--config", s["cls"], "--work-dir", str(d), "--ckpt", ckpt]
                argv += _opts({**cls_base, "train_dataloader.dataset.limit": b.labels,
                               "train_cfg.max_epochs": b.epochs, "train_cfg.val_interval": b.epochs,  # tested once, at the end
                               **seed_opt})
                chain.append(Entry("cls", str(d), argv, seed=seed, steps=n, labels=b.labels, epochs=b.epochs,
                                   started_from=ckpt))
            chains.append(chain)
    for b in budgets:  # the raw-pixel floor of each budget's data (no seed: a deterministic solver)
        d = root / "pixels" / f"labels{b.labels}"
        argv = ["pixels", "--config", s["cls"], "--work-dir", str(d)]
        argv += _opts({"train_dataloader.dataset.limit": b.labels})
        chains.append([Entry("pixels", str(d), argv, labels=b.labels)])
    longest = max(steps)
    if depth and longest > 0:  # the representation block by block: longest pretraining (seed 0) vs random init
        ckpt = backbone_file(root / "pretrain" / f"steps{longest}" / "seed0")
        # seed 0's chain: after the pretraining it reads
        chains[steps.index(longest)] += depth_entries(ckpt, root / "depth", s["pretrain"], s["knn"]["train_limit"],
                                                      longest)
    return chains


def depth_entries(ckpt: str, root: Path, pretrain_config: str, train_limit: int,
                  steps: Optional[int] = None) -> list[Entry]:
    """Two `nepa-eval knn` runs scoring every block's output: the checkpoint, and its architecture at random init."""
    from mmengine.config import Config

    depth_n = int(Config.fromfile(pretrain_config).model.backbone.depth)
    knn_args = ["--train-limit", str(train_limit), *[a for i in range(depth_n) for a in ("--block", str(i))]]
    out = []
    for role in ("pretrained", "random"):
        d = root / role
        argv = ["knn", "--ckpt", ckpt, "--work-dir", str(d), *knn_args] + (["--random-init"] if role == "random" else [])
        out.append(Entry("knn", str(d), argv, steps=(steps if role == "pretrained" else 0), seed=0,
                         started_from=ckpt if role == "pretrained" else "none", role=role))
    return out


def write_manifest(root: Path, chains: list[list[Entry]], meta: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST
    body = dict(study="transfer", **meta, runs=[e.record() for chain in chains for e in chain])
    _atomic_write(path, json.dumps(body, indent=1))
    return path


def run(args: argparse.Namespace) -> int:
    """Run (or with --dry-run print) the study's runs, then write its table and plot."""
    from nepa_eval.ablate import Stage, run_chains

    s = SCALES[args.scale]
    steps = args.steps or s["steps"]
    budgets = args.budgets or s["budgets"]
    seeds = args.seeds or s["seeds"]
    root = Path(args.work_dir) / args.scale
    if getattr(args, "report_only", False):
        res = write_report(root, Path(args.out))
        print(res.markdown + f"\nCSV: {res.csv}\nplot: {res.plot}\nsummary: {res.summary}")
        return 0
    chains = plan(args.scale, steps, budgets, seeds, root, args.cfg_options, depth=not args.no_depth)
    if args.dry_run:
        for chain in chains:
            for e in chain:
                print("nepa-eval " + shlex.join(e.argv))
        return 0
    write_manifest(root, chains, dict(scale=args.scale, steps=steps, seeds=seeds,
                                      budgets=[[b.labels, b.epochs] for b in budgets]))
    t0 = time.time()
    n_runs, i = sum(len(c) for c in chains), 0
    stage_chains = []
    for chain in chains:
        stage_chains.append([Stage(e.argv, Path(e.run_dir), f"[{i + k + 1}/{n_runs}] {_desc(e)}")
                             for k, e in enumerate(chain)])
        i += len(chain)
    run_chains(stage_chains, args.jobs, args.force, args.quiet)
    res = write_report(root, Path(args.out))
    print(f"[nepa] transfer study ({args.scale}): {time.time() - t0:.0f}s")
    print(res.markdown)
    print(f"CSV: {res.csv}\nplot: {res.plot}\nsummary: {res.summary}")
    return 0


def _desc(e: Entry) -> str:
    if e.stage == "pretrain":
        return f"pretrain {e.steps} steps, seed {e.seed}"
    if e.stage == "cls":
        return f"fine-tune from {'random init' if e.steps == 0 else f'{e.steps} steps'}, {e.labels} labels, seed {e.seed}"
    if e.stage == "pixels":
        return f"raw pixels, {e.labels} labels"
    return f"k-NN per block, {e.role}"
