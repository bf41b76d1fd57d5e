"""The demo (`nepa-eval demo`): the whole flow at tiny scale on built-in data, offline, on a CPU (8.5 min on 2 cores).

1. the core ablation (`ablate core --scale tiny`), scored as the paper scores it: four pretrainings on
   Fashion-MNIST, each fine-tuned (`nepa-eval cls`, 10,000 labels) unless it failed, the same fine-tune from random
   initialisation, and the raw-pixel references (`nepa-eval pixels`); its 'full' row is the demo's backbone, and its
   fine-tune is also the ImageNet table's tiny row (NEPA-T);
2. segmentation on the Fashion-MNIST mosaic set (`make-data mosaic`, then `nepa-eval seg`, the ADE20K tiny rows):
   the pretrained backbone and the same architecture from random initialisation, same budget, a linear head (at
   this size UPerNet's head learns the mosaic by itself and would measure the head, seg_configs/README.md);
3. the depth profile: k-NN of every block's output (`nepa-eval knn --block`), pretrained against random init;
4. the report (core, ImageNet and ADE20K tables, depth profile, what the numbers show and what they do not) and
   the attention / similarity maps of the backbone on real photos.
Every step is the real command; finished runs are reused, so an interrupted demo continues where it stopped.
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path
from typing import Any

TABLES = ("core", "imagenet", "ade20k")
CORE_PRETRAIN = "cls_configs/pretrain/nepa_tiny_fmnist.py"  # the core table's tiny pretraining (its depth)
TRANSFER_HINT = ("`nepa-eval transfer` measures fine-tuned top-1 against pretraining length and label budget with "
                 "seeds (README, 'Does NEPA pretraining pay?')")


def _cells(results: list, table: str) -> dict[str, Any]:
    return {c.row.name: c for res in results if res.spec.name == table for c in res.cells}


def _val(c: Any) -> str:
    return "fail" if c.status == "fail" else f"{c.ours:.2f}" if c.ours is not None else c.status


def findings(results: list, depth: dict[str, dict[int, float]]) -> str:
    """What the demo's own numbers show, one line each, and nothing they do not: a direction is stated as measured
    (one seed), a missing one is said to be missing, and 'pretraining beats random init' only where it does."""
    core, seg = _cells(results, "core"), _cells(results, "ade20k")
    lines = []
    full, rnd = core.get("full"), core.get("random_init")
    for name, what in (("no_shift", "no shift"), ("no_stop_grad", "no stop-gradient")):
        c = core.get(name)
        if c is not None and c.status == "fail":
            why = (c.reason or "collapse").split(":")[0]  # 'pretrain trivial', 'pretrain collapsed'
            lines.append(f"- {what} fails ({why}), as in the paper.")
        elif c is not None:
            lines.append(f"- {what} does not fail here ({_val(c)}); the paper's run failed.")
    nc = core.get("no_causal")
    if nc is not None and full is not None and nc.ours is not None and full.ours is not None:
        lines.append(f"- no causal mask: {_val(nc)} against full {_val(full)} "
                     f"({'below full, as in the paper' if nc.ours < full.ours else 'not below full, unlike the paper'}; "
                     "one seed, a difference under about 0.8 points is within the 3-seed spread measured for it).")
    if full is not None and rnd is not None and full.ours is not None and rnd.ours is not None:
        if full.ours > rnd.ours:
            lines.append(f"- pretraining is above random initialisation: full {_val(full)} against {_val(rnd)} "
                         f"(one seed; {TRANSFER_HINT}).")
        else:
            lines.append(f"- At this demo's budget NEPA pretraining does not beat random initialisation in "
                         f"fine-tuned top-1 (full {_val(full)}, random init {_val(rnd)}); {TRANSFER_HINT}.")
    sp, sr = seg.get("nepa_t"), seg.get("nepa_t_random")
    if sp is not None and sr is not None and sp.ours is not None and sr.ours is not None:
        word = "above" if sp.ours > sr.ours else "not above"
        lines.append(f"- segmentation (mosaic, linear head, same budget): pretrained {_val(sp)} mIoU, {word} random "
                     f"init {_val(sr)} (one seed; `make seg-transfer` runs three).")
    if "pretrained" in depth and "random" in depth:
        best = max(depth["pretrained"], key=depth["pretrained"].get)
        last = max(depth["pretrained"])
        lines.append(f"- depth profile: the pretrained backbone's best k-NN is block {best} "
                     f"({depth['pretrained'][best]:.2f}, random init {depth['random'].get(best, float('nan')):.2f})"
                     + (f", above its last block ({depth['pretrained'][last]:.2f}): NEPA's representation lives "
                        "mid-depth, the last blocks serve the next-embedding prediction" if best != last else "") + ".")
    return "\n".join(lines)


def _photos() -> Path | None:
    """The real ImageNet photos shipped in PyPI's foolbox data folder (located, never imported)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(spec.submodule_search_locations[0]) / "data"
    return d if d.is_dir() else None


def run(args: argparse.Namespace) -> int:
    """Run the steps in order, print each step's time, end with the summary page's path."""
    from nepa_eval import ablate
    from nepa_eval.report import cell_line, discover_runs, load_spec, report_table, write_summary
    from nepa_eval.transfer import depth_entries
    from nepa_eval.transfer_report import read_depth, write_depth

    t_start = time.time()
    times: dict[str, float] = {}
    jobs = min(2, ablate.cpu_count())  # two one-thread runs side by side: ~1.5x a tiny run on two threads
    common = dict(work_dir=args.work_dir, force=args.force, dry_run=False, quiet=args.quiet, out=None, cfg_options={},
                  jobs=jobs)

    def step(n: int, title: str) -> float:
        print(f"\n=== [{n}/4] {title}", flush=True)
        return time.time()

    t = step(1, "the core ablation (shift / causal / stop-gradient): pretraining, then fine-tuning, on Fashion-MNIST")
    core = ablate.load_spec("core")
    root = ablate.run_tiny(core, argparse.Namespace(table="core", rows=None, ckpt=None, seeds=1, **common))
    backbone = ablate.backbone_file(root / "full" / "pretrain")
    if not Path(backbone).is_file():
        raise RuntimeError(f"the demo's pretraining (core row 'full') left no backbone: see {root / 'full'}")
    times["core table (4 pretrainings, 3 fine-tunes, pixels)"] = time.time() - t

    t = step(2, "segmentation on the Fashion-MNIST mosaic set: the pretrained backbone and random init")
    ablate.run_tiny(ablate.load_spec("ade20k"), argparse.Namespace(table="ade20k", rows="nepa_t,nepa_t_random",
                                                                   ckpt=backbone, seeds=1, **common))
    times["segmentation (pretrained, random init)"] = time.time() - t

    t = step(3, "depth profile: k-NN of every block's output, pretrained against random init")
    depth_root = Path(args.work_dir) / "tiny" / "depth"
    entries = depth_entries(backbone, depth_root, CORE_PRETRAIN, train_limit=10000)
    ablate.run_chains([[ablate.Stage(e.argv, Path(e.run_dir), f"k-NN per block, {e.role}")] for e in entries],
                      jobs, args.force, args.quiet)
    times["depth profile"] = time.time() - t

    t = step(4, "report and analysis maps")
    out = Path(args.out)
    extra: dict[str, Any] = {}
    depth_md, depth_png = write_depth({e.role: e.run_dir for e in entries}, out)
    photos = _photos()
    if photos is not None:
        from backbones.nepa import from_pretrained
        from nepa_eval.analyze import analyze, find_images

        model = from_pretrained(backbone, verbose=False)
        images = [p for p in find_images(photos) if p.name.startswith("imagenet_")][:4]
        maps = analyze(model, images, out / "analyze", size=56, progress=not args.quiet)
        extra["Attention and next-embedding similarity maps (the core 'full' backbone, real photos at 56 px)"] = maps
    else:
        print("[nepa] foolbox's photos are not installed (make setup installs them): no analysis maps")
    run_dirs = [str(Path(args.work_dir) / "tiny")]
    runs = discover_runs(run_dirs)
    results = [report_table(load_spec(name), runs, out) for name in TABLES]
    depth = read_depth({e.role: e.run_dir for e in entries})[0]
    extra = {"What these numbers show": findings(results, depth),
             "Depth profile (the core 'full' backbone against random init)":
                 depth_md + (f"\n![depth profile]({depth_png.name})\n" if depth_png else ""), **extra}
    summary = write_summary(results, out, run_dirs, extra)
    times["report + maps"] = time.time() - t

    print()
    for res in results:
        print(f"{res.spec.title}")
        for c in res.cells:
            if c.status == "reference":
                continue
            print(cell_line(c, label_width=52))
    print("\n" + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + f"; total {time.time() - t_start:.0f}s")
    print(f"\nsummary page: {summary.resolve()}")
    return 0
