"""The demo (`nepa-eval demo`): the whole flow at tiny scale on built-in data, offline, on a CPU (about ten minutes on 2 cores).

1. the core ablation (`ablate core --scale tiny`): four pretrainings on Fashion-MNIST; its 'full' row is the
   demo's pretrained backbone;
2. fine-tuning that backbone on Fashion-MNIST classification (`nepa-eval cls`, the ImageNet table's NEPA-B row);
3. segmentation on the Fashion-MNIST mosaic set (`make-data mosaic`, then `nepa-eval seg`, the ADE20K row);
4. the report (core, ImageNet and ADE20K tables) and the attention / similarity maps of the backbone on real photos.
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
    from nepa_eval.report import run_report

    t_start = time.time()
    times: dict[str, float] = {}
    common = dict(work_dir=args.work_dir, force=args.force, dry_run=False, quiet=args.quiet, out=None, cfg_options={})

    def step(n: int, title: str) -> float:
        print(f"\n=== [{n}/4] {title}", flush=True)
        return time.time()

    t = step(1, "pretraining: the core ablation (shift / causal / stop-gradient) on Fashion-MNIST")
    core = ablate.load_spec("core")
    root = ablate.run_tiny(core, argparse.Namespace(table="core", rows=None, ckpt=None, **common))
    backbone = ablate.backbone_file(root / "full" / "pretrain")
    if not Path(backbone).is_file():
        raise RuntimeError(f"the demo's pretraining (core row 'full') left no backbone: see {root / 'full'}")
    times["pretrain (4 core rows)"] = time.time() - t

    t = step(2, "classification: fine-tune the pretrained backbone on Fashion-MNIST")
    ablate.run_tiny(ablate.load_spec("imagenet"), argparse.Namespace(table="imagenet", rows="nepa_b", ckpt=backbone,
                                                                     **common))
    times["fine-tune"] = time.time() - t

    t = step(3, "segmentation: UPerNet on the Fashion-MNIST mosaic set")
    ablate.run_tiny(ablate.load_spec("ade20k"), argparse.Namespace(table="ade20k", rows="nepa_b", ckpt=backbone,
                                                                   **common))
    times["segmentation"] = time.time() - t

    t = step(4, "report and analysis maps")
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
            print(f"  {c.row.label:34s} paper {str(c.row.paper if c.row.paper is not None else '-'):>5s}   ours "
                  f"{c.ours_text or c.status:>7s} {c.metric}")
    print("\n" + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + f"; total {time.time() - t_start:.0f}s")
    print(f"\nsummary page: {summary.resolve()}")
    return 0
