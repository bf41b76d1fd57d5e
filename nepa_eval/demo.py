"""The demo (`nepa-eval demo`): the whole flow at tiny scale on built-in data, offline, on a CPU (about eight minutes on 2 cores).

1. the core ablation (`ablate core --scale tiny`), scored as the paper scores it: four pretrainings on
   Fashion-MNIST, each fine-tuned (`nepa-eval cls`, 10,000 labels) unless it failed, the same fine-tune from random
   initialisation, and the raw-pixel references (`nepa-eval pixels`); its 'full' row is the demo's backbone, and its
   fine-tune is also the ImageNet table's tiny row (NEPA-T);
2. segmentation on the Fashion-MNIST mosaic set (`make-data mosaic`, then `nepa-eval seg`, the ADE20K tiny row);
3. the report (core, ImageNet and ADE20K tables) and the attention / similarity maps of the backbone on real photos.
Every step is the real command; finished runs are reused, so an interrupted demo continues where it stopped.
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

TABLES = ("core", "imagenet", "ade20k")


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
    from nepa_eval.report import cell_line, run_report

    t_start = time.time()
    times: dict[str, float] = {}
    jobs = min(2, ablate.cpu_count())  # two one-thread runs side by side: ~1.5x a tiny run on two threads
    common = dict(work_dir=args.work_dir, force=args.force, dry_run=False, quiet=args.quiet, out=None, cfg_options={},
                  jobs=jobs)

    def step(n: int, title: str) -> float:
        print(f"\n=== [{n}/3] {title}", flush=True)
        return time.time()

    t = step(1, "the core ablation (shift / causal / stop-gradient): pretraining, then fine-tuning, on Fashion-MNIST")
    core = ablate.load_spec("core")
    root = ablate.run_tiny(core, argparse.Namespace(table="core", rows=None, ckpt=None, seeds=1, **common))
    backbone = ablate.backbone_file(root / "full" / "pretrain")
    if not Path(backbone).is_file():
        raise RuntimeError(f"the demo's pretraining (core row 'full') left no backbone: see {root / 'full'}")
    times["core table (4 pretrainings, 3 fine-tunes, pixels)"] = time.time() - t

    t = step(2, "segmentation: UPerNet on the Fashion-MNIST mosaic set")
    ablate.run_tiny(ablate.load_spec("ade20k"), argparse.Namespace(table="ade20k", rows="nepa_t", ckpt=backbone,
                                                                   seeds=1, **common))
    times["segmentation"] = time.time() - t

    t = step(3, "report and analysis maps")
    out = Path(args.out)
    extra = {}
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
    summary, results = run_report([str(Path(args.work_dir) / "tiny")], list(TABLES), out, extra)
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
