"""Segmentation data on disk in the ADE20K layout: the Fashion-MNIST mosaic maker and the pre-flight check.

Layout (ADE20K's, so the same mmseg code path reads both):
    <root>/ADEChallengeData2016/images/{training,validation}/*.jpg
    <root>/ADEChallengeData2016/annotations/{training,validation}/*.png   (single-channel class indices)

The mosaic set tiles Fashion-MNIST items onto a dark canvas and labels every pixel where an item's
intensity exceeds a threshold with the item's class + 1; 0 is background. It has 11 classes
(background + the 10 Fashion-MNIST classes) and is read with ``reduce_zero_label=False``: unlike ADE20K,
where 0 means "unlabelled" and is ignored, background here is a real class and counts in the mIoU.
255 is the ignore value in both. Nothing here imports mmseg, so ``nepa-eval make-data`` stays light.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .datasets import FASHION_CLASSES, DataError, fashion_mnist_arrays

ADE_DIR = "ADEChallengeData2016"
SPLITS = ("training", "validation")
MOSAIC_CLASSES = ("background",) + FASHION_CLASSES
IGNORE_INDEX = 255


# ----------------------------------------------------------------------------------------------
# the mosaic maker
# ----------------------------------------------------------------------------------------------
def mosaic_canvas(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, size: int = 56,
                  items: tuple[int, int] = (2, 3), scale: tuple[float, float] = (0.75, 1.25), threshold: int = 40,
                  noise: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """One canvas (size, size) uint8 and its label map: later items are pasted over earlier ones. Also the
    unlabelled pretraining source ``ImageDataset(source='fashion_mosaic')``."""
    canvas = np.zeros((size, size), np.float32)
    label = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(items[0], items[1] + 1)):
        i = rng.integers(len(images))
        side = min(size, int(round(28 * rng.uniform(*scale))))
        item = np.asarray(Image.fromarray(images[i]).resize((side, side), Image.BILINEAR), np.float32)
        y, x = rng.integers(0, size - side + 1, size=2)
        mask = item > threshold
        canvas[y:y + side, x:x + side][mask] = item[mask]
        label[y:y + side, x:x + side][mask] = labels[i] + 1
    if noise:
        canvas += rng.normal(0, noise, canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8), label


def make_mosaic(out: str | Path, n_train: int = 1000, n_val: int = 200, size: int = 56,
                items: tuple[int, int] = (2, 3), scale: tuple[float, float] = (0.75, 1.25), threshold: int = 40,
                noise: float = 6.0, seed: int = 0, fashion_root: Optional[Path] = None) -> Path:
    """Write the Fashion-MNIST mosaic set under out/ADEChallengeData2016; returns that directory.

    Training canvases use Fashion-MNIST's training images, validation canvases its test images, so no
    item is shared between the splits.
    """
    if size < 28:
        raise DataError(f"mosaic size {size} is smaller than one Fashion-MNIST item (28 px)")
    if not 1 <= items[0] <= items[1]:
        raise DataError(f"items must be (min, max) with 1 <= min <= max, got {items}")
    root = Path(out) / ADE_DIR
    rng = np.random.default_rng(seed)
    kw = {} if fashion_root is None else {"root": Path(fashion_root)}
    for split, src, n in (("training", "train", n_train), ("validation", "test", n_val)):
        images, labels = fashion_mnist_arrays(src, **kw)
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            canvas, label = mosaic_canvas(rng, images, labels, size, items, scale, threshold, noise)
            name = f"mosaic_{split[0]}_{k:06d}"
            Image.fromarray(canvas).convert("RGB").save(img_dir / f"{name}.jpg", quality=95)
            Image.fromarray(label, mode="L").save(ann_dir / f"{name}.png")
    meta = dict(kind="fashion-mnist mosaic", classes=list(MOSAIC_CLASSES), reduce_zero_label=False,
                ignore_index=IGNORE_INDEX, n_train=n_train, n_val=n_val, size=size, items=list(items),
                scale=list(scale), threshold=threshold, noise=noise, seed=seed)
    (root / "mosaic.json").write_text(json.dumps(meta, indent=2))
    return root


# ----------------------------------------------------------------------------------------------
# pre-flight check with clear messages
# ----------------------------------------------------------------------------------------------
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


def check_seg_root(data_root: str | Path, num_classes: int, reduce_zero_label: bool,
                   ignore_index: int = IGNORE_INDEX, splits: Sequence[str] = SPLITS, img_suffix: str = ".jpg",
                   seg_map_suffix: str = ".png", max_check: int = 1000) -> dict[str, int]:
    """Check folders, image/annotation pairing and annotation values; raise DataError naming what is wrong.

    Every image must have an annotation; annotation values must be class indices (0..num_classes, 0 being
    'unlabelled' when reduce_zero_label) or the ignore value. Values are read from every annotation when a
    split has at most `max_check` of them, else from `max_check` evenly spaced ones. Returns {split: count}.
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
        names = sorted(images)
        if len(names) > max_check:
            names = [names[i] for i in np.linspace(0, len(names) - 1, max_check).round().astype(int)]
        for name in names:
            path = ann_dir / f"{name}{seg_map_suffix}"
            try:
                with Image.open(path) as im:
                    mode = im.mode
                    arr = np.asarray(im)
            except Exception as e:
                raise DataError(f"unreadable annotation {path}: {e}") from e
            if mode not in ("L", "P", "I", "I;16") or arr.ndim != 2:
                raise DataError(f"{path}: annotations must be single-channel class-index PNGs (mode L or P), got "
                                f"mode {mode} with shape {arr.shape}; colour masks must be converted to indices")
            bad = sorted(set(np.unique(arr).tolist()) - allowed)
            if bad:
                rng = f"0..{num_classes}" if reduce_zero_label else f"0..{num_classes - 1}"
                raise DataError(f"{path}: annotation values {bad[:10]} are outside the {num_classes} classes "
                                f"(allowed {rng} and the ignore value {ignore_index}"
                                f"{', 0 = unlabelled with reduce_zero_label' if reduce_zero_label else ''}); "
                                "is the dataset's num_classes / reduce_zero_label right for these annotations?")
        counts[split] = len(images)
    return counts
