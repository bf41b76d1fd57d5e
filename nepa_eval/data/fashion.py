"""Fashion-MNIST: the IDX arrays from Debian's ``dataset-fashion-mnist``, and the segmentation mosaic made from them.

The mosaic set tiles Fashion-MNIST items onto a dark canvas and labels every pixel where an item's
intensity exceeds a threshold with the item's class + 1; 0 is background. It has 11 classes
(background + the 10 Fashion-MNIST classes) and is read with ``reduce_zero_label=False``: unlike ADE20K,
where 0 means "unlabelled" and is ignored, background here is a real class and counts in the mIoU.
255 is the ignore value in both. Nothing here imports torch or mmseg, so ``nepa-eval make-data`` stays light.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .ade import ADE_DIR, IGNORE_INDEX
from .errors import DataError

FASHION_ROOT = Path(os.environ.get("NEPA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
MOSAIC_CLASSES = ("background",) + FASHION_CLASSES


def fashion_mnist_arrays(split: str = "train", root: Path = FASHION_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) from the IDX .gz files."""
    prefix = {"train": "train", "val": "t10k", "test": "t10k"}.get(split)
    if prefix is None:
        raise DataError(f"Fashion-MNIST has splits train and test (val = test), not {split!r}")
    img_file, lbl_file = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_file.exists():
        raise DataError(f"Fashion-MNIST not found at {root}: install Debian's package with "
                        "'apt-get install dataset-fashion-mnist' (make setup does), or set NEPA_FASHION_MNIST")
    with gzip.open(img_file, "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(lbl_file, "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def mosaic_canvas(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, size: int = 56,
                  items: tuple[int, int] = (2, 3), scale: tuple[float, float] = (0.75, 1.25), threshold: int = 40,
                  noise: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """One canvas (size, size) uint8 and its label map: later items are pasted over earlier ones. Also the
    unlabelled pretraining source ``FashionMosaicImages`` (``ImageDataset(source='fashion_mosaic')``)."""
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
