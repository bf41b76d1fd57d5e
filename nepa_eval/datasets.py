"""Image classification data from three sources, chosen by config, with clear errors for bad input.

- ``fashion_mnist``: the full Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (offline, built in);
- ``folder``: an ImageFolder tree ``ROOT/<split>/<class>/*.jpg`` (ImageNet layout: train/ and val/);
- ``hf``: a Hugging Face dataset saved with ``save_to_disk`` (image and label columns);
- ``fashion_mosaic``: unlabelled Fashion-MNIST mosaic canvases (the segmentation set's images, made on the fly
  from the split's items: `limit` canvases, as many as the split has items by default), for pretraining on
  the segmentation domain.

`ImageDataset` is registered with mmengine's DATASETS, so configs say
``dataset=dict(type='ImageDataset', source='folder', root='data/imagenet', split='train', transform=...)``.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

FASHION_ROOT = Path(os.environ.get("NEPA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class DataError(ValueError):
    """A dataset is missing, empty or unreadable; the message names the path and the fix."""


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


def _subset(n: int, limit: Optional[int], seed: int = 0) -> np.ndarray:
    """A fixed, class-agnostic random subset of indices (the same every run)."""
    idx = np.arange(n)
    if limit is not None and limit < n:
        idx = np.random.default_rng(seed).permutation(n)[:limit]
        idx.sort()
    return idx


class ImageDataset(Dataset):
    """(image tensor, label) pairs from one of the sources; `transform` maps a PIL RGB image to a tensor."""

    def __init__(self, source: str = "fashion_mnist", root: Optional[str] = None, split: str = "train",
                 transform: Optional[Callable | dict] = None, limit: Optional[int] = None, seed: int = 0,
                 image_key: str = "image", label_key: Optional[str] = "label", mosaic: Optional[dict] = None) -> None:
        self.source, self.split = source, split
        self.transform = build_transform(**transform) if isinstance(transform, dict) else transform
        if source == "fashion_mnist":
            images, labels = fashion_mnist_arrays(split, Path(root) if root else FASHION_ROOT)
            keep = _subset(len(images), limit, seed)
            self._images, self.targets = images[keep], labels[keep].tolist()
            self.classes = list(FASHION_CLASSES)
        elif source == "folder":
            self._init_folder(root, split, limit, seed)
        elif source == "hf":
            self._init_hf(root, split, limit, seed, image_key, label_key)
        elif source == "fashion_mosaic":
            self._items = fashion_mnist_arrays(split, Path(root) if root else FASHION_ROOT)
            self._mosaic, self._seed = dict(mosaic or {}), seed
            self.targets, self.classes = [-1] * (limit or len(self._items[0])), []  # unlabelled
        else:
            raise DataError(f"unknown data source {source!r}; choose fashion_mnist, folder, hf or fashion_mosaic")
        if len(self.targets) == 0:
            raise DataError(f"dataset {source}:{root or ''}:{split} is empty")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _init_folder(self, root: Optional[str], split: str, limit: Optional[int], seed: int) -> None:
        if root is None:
            raise DataError("source='folder' needs a root directory (the folder holding train/ and val/)")
        d = Path(root) / split
        if not d.is_dir():
            d = Path(root) if (Path(root).is_dir() and not (Path(root) / "train").exists() and split == "train") else d
        if not d.is_dir():
            raise DataError(f"image folder not found: {d} (expected {root}/{split}/<class>/<image>)")
        classes = sorted(p.name for p in d.iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{d} has no class sub-folders (expected {d}/<class>/<image>)")
        samples = [(str(f), i) for i, c in enumerate(classes) for f in sorted((d / c).rglob("*"))
                   if f.suffix.lower() in IMG_EXTENSIONS]
        if not samples:
            raise DataError(f"{d} holds no images with extensions {IMG_EXTENSIONS}")
        keep = _subset(len(samples), limit, seed)
        self._paths = [samples[i][0] for i in keep]
        self.targets = [samples[i][1] for i in keep]
        self.classes = classes

    def _init_hf(self, root: Optional[str], split: str, limit: Optional[int], seed: int, image_key: str,
                 label_key: str) -> None:
        try:
            import datasets as hfds
        except ImportError as e:
            raise DataError("source='hf' needs the 'datasets' package: pip install datasets") from e
        if root is None or not Path(root).exists():
            raise DataError(f"Hugging Face dataset directory not found: {root}")
        ds = hfds.load_from_disk(root)
        if isinstance(ds, hfds.DatasetDict):
            if split not in ds:
                split = {"val": "validation"}.get(split, split)
            if split not in ds:
                raise DataError(f"{root} has splits {list(ds)}, not {self.split!r}")
            ds = ds[split]
        for key in (image_key, label_key):
            if key is not None and key not in ds.column_names:
                raise DataError(f"{root}: no column {key!r} (columns: {ds.column_names}); set image_key/label_key")
        keep = _subset(len(ds), limit, seed)
        self._hf, self._hf_keys = ds.select(keep.tolist()), (image_key, label_key)
        if label_key is None:  # unlabelled images (pretraining): every label is -1
            self.targets, self.classes = [-1] * len(self._hf), []
            return
        self.targets = list(self._hf[label_key])
        feat = ds.features[label_key]
        self.classes = list(getattr(feat, "names", None) or range(int(max(self.targets)) + 1))

    def load_image(self, i: int) -> Image.Image:
        if self.source == "fashion_mnist":
            return Image.fromarray(self._images[i]).convert("RGB")
        if self.source == "folder":
            try:
                with Image.open(self._paths[i]) as im:
                    return im.convert("RGB")
            except Exception as e:
                raise DataError(f"unreadable image {self._paths[i]}: {e}") from e
        if self.source == "fashion_mosaic":
            from nepa_eval.seg_data import mosaic_canvas

            canvas, _ = mosaic_canvas(np.random.default_rng((self._seed, i)), *self._items, **self._mosaic)
            return Image.fromarray(canvas).convert("RGB")
        img = self._hf[i][self._hf_keys[0]]
        return (img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))).convert("RGB")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.load_image(i)
        return (self.transform(img) if self.transform else img), int(self.targets[i])


def build_transform(kind: str = "eval", img_size: int = 224, mean: tuple = (0.5, 0.5, 0.5),
                    std: tuple = (0.5, 0.5, 0.5), interpolation: str = "bicubic", crop_pct: float = 0.875,
                    scale: tuple = (0.08, 1.0), **timm_kwargs: Any) -> Callable:
    """'pretrain': RandomResizedCrop + flip (the release); 'train': timm's training transform (RandAugment,
    random erasing, ... via timm_kwargs); 'eval': resize then centre crop (crop_pct); 'resize': resize only."""
    import torchvision.transforms as T
    from timm.data import create_transform

    interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[interpolation]
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    if kind == "pretrain":
        return T.Compose([T.RandomResizedCrop(img_size, scale=scale, interpolation=interp),
                          T.RandomHorizontalFlip(), *norm])
    if kind == "train":
        return create_transform(img_size, is_training=True, mean=mean, std=std, interpolation=interpolation,
                                scale=scale, **timm_kwargs)
    if kind == "eval":
        return create_transform(img_size, is_training=False, mean=mean, std=std, interpolation=interpolation,
                                crop_pct=crop_pct)
    if kind == "resize":
        return T.Compose([T.Resize((img_size, img_size), interpolation=interp), *norm])
    raise ValueError(f"unknown transform kind {kind!r}: pretrain, train, eval or resize")


def collate(batch: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """Stack (image, label) pairs into {'inputs': (B, C, H, W), 'labels': (B,)} for mmengine models."""
    images, labels = zip(*batch)
    return {"inputs": torch.stack(images), "labels": torch.as_tensor(labels, dtype=torch.long)}


def register() -> None:
    """Register ImageDataset and the collate function with mmengine (idempotent)."""
    from mmengine.registry import DATASETS, FUNCTIONS

    if "ImageDataset" not in DATASETS.module_dict:
        DATASETS.register_module(module=ImageDataset)
    if "nepa_collate" not in FUNCTIONS.module_dict:
        FUNCTIONS.register_module(name="nepa_collate", module=collate)
