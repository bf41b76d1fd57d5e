"""Segmentation data on disk in the ADE20K layout: where it is and whether it holds what a config expects.

Layout (ADE20K's, so the same mmseg code path reads both ADE20K and the mosaic set):
    <root>/ADEChallengeData2016/images/{training,validation}/*.jpg
    <root>/ADEChallengeData2016/annotations/{training,validation}/*.png   (single-channel class indices)

255 is the ignore value. Nothing here imports mmseg: the pre-flight check runs before any model is built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .errors import DataError

ADE_DIR = "ADEChallengeData2016"
SPLITS = ("training", "validation")
IGNORE_INDEX = 255


def resolve_ade_root(data_root: str | Path) -> Path:
    """The directory holding images/ and annotations/: data_root/ADEChallengeData2016 or data_root itself."""
    d = Path(data_root)
    if not d.is_dir():
        raise DataError(f"data root not found: {d}")
    for cand in (d / ADE_DIR, d):
        if (cand / "images").is_dir() or (cand / "annotations").is_dir():
            return cand
    found = sorted(p.name for p in d.iterdir())[:10]
    raise DataError(f"{d} is not in the ADE20K layout: expected {d}/{ADE_DIR}/images/{{training,validation}} and "
                    f"{d}/{ADE_DIR}/annotations/{{training,validation}} (or images/ and annotations/ directly in "
                    f"{d}); found {found}. Make a small set with 'nepa-eval make-data mosaic --out DIR'.")


def allowed_labels(num_classes: int, reduce_zero_label: bool, ignore_index: int = IGNORE_INDEX) -> set[int]:
    """The raw annotation values a dataset may contain (before reduce_zero_label)."""
    valid = range(0, num_classes + 1) if reduce_zero_label else range(num_classes)
    return set(valid) | {ignore_index}


def pair_problem(img: Path, ann: Path) -> Optional[tuple[str, str]]:
    """(file, reason) when an image or its annotation cannot be opened or their sizes differ, from the headers
    alone (PIL reads the size without decoding the pixels); None when the pair looks right."""
    sizes = []
    for path, what in ((img, "image"), (ann, "annotation")):
        try:
            with Image.open(path) as im:
                sizes.append(im.size)
        except Exception as e:
            return str(path), f"unreadable {what}: {type(e).__name__}: {e}"
    if sizes[0] != sizes[1]:
        (iw, ih), (aw, ah) = sizes
        return str(ann), f"annotation is {aw}x{ah}, its image {img} is {iw}x{ih} (width x height)"
    return None


def check_seg_root(data_root: str | Path, num_classes: int, reduce_zero_label: bool,
                   ignore_index: int = IGNORE_INDEX, splits: Sequence[str] = SPLITS, img_suffix: str = ".jpg",
                   seg_map_suffix: str = ".png", max_check: int = 1000,
                   bad: Optional[list[tuple[str, str]]] = None) -> dict[str, int]:
    """Check folders, image/annotation pairing, sizes and annotation values; raise DataError naming what is wrong.

    Every image must have an annotation of the same size (read from the headers of every pair, cheaply);
    annotation values must be class indices (0..num_classes, 0 being 'unlabelled' when reduce_zero_label) or the
    ignore value. Values are read from every annotation when a split has at most `max_check` of them, else from
    `max_check` evenly spaced ones. `bad`: where unreadable files and size mismatches go, as (file, reason), for
    the run to skip them; None raises on the first. Returns {split: count}.
    """
    root = resolve_ade_root(data_root)
    allowed = allowed_labels(num_classes, reduce_zero_label, ignore_index)
    counts = {}
    for split in splits:
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        for d, what in ((img_dir, "images"), (ann_dir, "annotations")):
            if not d.is_dir():
                raise DataError(f"missing folder {d}: the ADE20K layout needs {root}/{what}/{split} "
                                f"(splits {list(splits)})")
        images = {p.relative_to(img_dir).with_suffix("").as_posix()
                  for p in img_dir.rglob(f"*{img_suffix}")}
        if not images:
            present = sorted(p.name for p in img_dir.iterdir())[:5]
            raise DataError(f"{img_dir} holds no '*{img_suffix}' images (found {present or 'nothing'})")
        anns = {p.relative_to(ann_dir).with_suffix("").as_posix() for p in ann_dir.rglob(f"*{seg_map_suffix}")}
        unpaired = sorted(images - anns)
        if unpaired:
            raise DataError(f"{len(unpaired)} of {len(images)} images in {img_dir} have no annotation in {ann_dir} "
                            f"(expected <name>{seg_map_suffix} beside each <name>{img_suffix}), e.g. "
                            f"{', '.join(unpaired[:5])}")
        names, broken = sorted(images), set()
        for name in names:
            problem = pair_problem(img_dir / f"{name}{img_suffix}", ann_dir / f"{name}{seg_map_suffix}")
            if problem is not None:
                if bad is None:
                    raise DataError(f"{problem[0]}: {problem[1]}")
                bad.append(problem)
                broken.add(name)
        names = [n for n in names if n not in broken]
        if len(names) > max_check:
            names = [names[i] for i in np.linspace(0, len(names) - 1, max_check).round().astype(int)]
        for name in names:
            path = ann_dir / f"{name}{seg_map_suffix}"
            try:
                with Image.open(path) as im:
                    mode = im.mode
                    arr = np.asarray(im)
            except Exception as e:
                if bad is None:
                    raise DataError(f"unreadable annotation {path}: {e}") from e
                bad.append((str(path), f"unreadable annotation: {type(e).__name__}: {e}"))
                continue
            if mode not in ("L", "P", "I", "I;16") or arr.ndim != 2:
                raise DataError(f"{path}: annotations must be single-channel class-index PNGs (mode L or P), got "
                                f"mode {mode} with shape {arr.shape}; colour masks must be converted to indices")
            outside = sorted(set(np.unique(arr).tolist()) - allowed)
            if outside:
                rng = f"0..{num_classes}" if reduce_zero_label else f"0..{num_classes - 1}"
                raise DataError(f"{path}: annotation values {outside[:10]} are outside the {num_classes} classes "
                                f"(allowed {rng} and the ignore value {ignore_index}"
                                f"{', 0 = unlabelled with reduce_zero_label' if reduce_zero_label else ''}); "
                                "is the dataset's num_classes / reduce_zero_label right for these annotations?")
        counts[split] = len(images)
    return counts
