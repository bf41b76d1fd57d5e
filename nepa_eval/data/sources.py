"""Image classification (and unlabelled pretraining) data: one registered Dataset per source.

- `FashionMNISTDataset`: the full Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (offline, built in);
- `ImageFolderDataset`: torchvision's ImageFolder on ``ROOT/<split>/<class>/*.jpg`` (ImageNet layout: train/, val/);
- `HFDiskDataset`: a Hugging Face dataset saved with ``save_to_disk`` (image and label columns);
- `FashionMosaicImages`: unlabelled Fashion-MNIST mosaic canvases (the segmentation set's images, made on the fly
  from the split's items: `limit` canvases, as many as the split has items by default), for pretraining on
  the segmentation domain.

Each takes ``split``, ``transform`` (a callable or `build_transform` arguments), ``limit`` (a fixed random
subset, the same every run) and ``seed``, and gives (image, label) pairs plus ``classes``, ``targets`` and
``load_image(i)``. `ImageDataset` picks one by name, as configs say:
``dataset=dict(type='ImageDataset', source='folder', root='data/imagenet', split='train', transform=...)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from mmengine.registry import DATASETS
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import DatasetFolder, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import DataError
from .fashion import FASHION_CLASSES, FASHION_ROOT, fashion_mnist_arrays, mosaic_canvas
from .transforms import build_transform

Transform = Optional[Callable | dict]


def _subset(n: int, limit: Optional[int], seed: int = 0) -> np.ndarray:
    """A fixed, class-agnostic random subset of indices (the same every run)."""
    idx = np.arange(n)
    if limit is not None and limit < n:
        idx = np.random.default_rng(seed).permutation(n)[:limit]
        idx.sort()
    return idx


def _as_transform(transform: Transform) -> Optional[Callable]:
    """A transform callable from a callable or `build_transform` keyword arguments."""
    return build_transform(**transform) if isinstance(transform, dict) else transform


def _open_rgb(path: str) -> Image.Image:
    """An image file as PIL RGB; DataError naming the file if it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:
        raise DataError(f"unreadable image {path}: {e}") from e


class ImageSource(Dataset):
    """(transform(image), label) pairs; a source sets `classes`, `targets`, `transform` and `load_image`."""

    source: str  # the name ImageDataset knows it by
    classes: list
    targets: list[int]
    transform: Optional[Callable]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load_image(self, i: int) -> Image.Image:
        """Image i as PIL RGB, before the transform."""
        raise NotImplementedError

    def _check_not_empty(self, root: Optional[str], split: str) -> None:
        if len(self.targets) == 0:
            raise DataError(f"dataset {self.source}:{root or ''}:{split} is empty")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.load_image(i)
        return (self.transform(img) if self.transform else img), int(self.targets[i])


@DATASETS.register_module()
class FashionMNISTDataset(ImageSource):
    """Fashion-MNIST's 28 px grey items as RGB; split train (60,000) or test/val (10,000)."""

    source = "fashion_mnist"

    def __init__(self, root: Optional[str] = None, split: str = "train", transform: Transform = None,
                 limit: Optional[int] = None, seed: int = 0) -> None:
        self.split, self.transform = split, _as_transform(transform)
        images, labels = fashion_mnist_arrays(split, Path(root) if root else FASHION_ROOT)
        keep = _subset(len(images), limit, seed)
        self._images, self.targets = images[keep], labels[keep].tolist()
        self.classes = list(FASHION_CLASSES)
        self._check_not_empty(root, split)

    def load_image(self, i: int) -> Image.Image:
        return Image.fromarray(self._images[i]).convert("RGB")


@DATASETS.register_module()
class ImageFolderDataset(ImageSource, ImageFolder):
    """torchvision's ImageFolder on root/split (or root itself as the train split when it has no train/),
    files in path order within each class, with a `limit` subset and errors that name the folder."""

    source = "folder"

    def __init__(self, root: Optional[str] = None, split: str = "train", transform: Transform = None,
                 limit: Optional[int] = None, seed: int = 0) -> None:
        if root is None:
            raise DataError("source='folder' needs a root directory (the folder holding train/ and val/)")
        d = Path(root) / split
        if not d.is_dir() and split == "train" and Path(root).is_dir() and not (Path(root) / "train").exists():
            d = Path(root)
        if not d.is_dir():
            raise DataError(f"image folder not found: {d} (expected {root}/{split}/<class>/<image>)")
        super().__init__(str(d), transform=_as_transform(transform), loader=_open_rgb, allow_empty=True)
        if not self.samples:
            raise DataError(f"{d} holds no images with extensions {IMG_EXTENSIONS}")
        self.split = split
        self.samples = self.imgs = [self.samples[i] for i in _subset(len(self.samples), limit, seed)]
        self.targets = [target for _, target in self.samples]
        self._check_not_empty(root, split)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        try:
            return super().find_classes(directory)
        except FileNotFoundError:
            raise DataError(f"{directory} has no class sub-folders (expected {directory}/<class>/<image>)") from None

    @staticmethod
    def make_dataset(directory: str, class_to_idx: dict[str, int], extensions: Optional[tuple[str, ...]] = None,
                     is_valid_file: Optional[Callable[[str], bool]] = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        """torchvision's samples, sorted by path within each class (sub-folders in name order with the files)."""
        samples = DatasetFolder.make_dataset(directory, class_to_idx, extensions, is_valid_file, allow_empty)
        return sorted(samples, key=lambda s: (s[1], Path(s[0])))

    def load_image(self, i: int) -> Image.Image:
        return self.loader(self.samples[i][0])


@DATASETS.register_module()
class HFDiskDataset(ImageSource):
    """A Hugging Face dataset written by ``save_to_disk`` (a Dataset, or a DatasetDict holding `split`; 'val'
    falls back to 'validation'); ``label_key=None`` for unlabelled images (every label -1)."""

    source = "hf"

    def __init__(self, root: Optional[str] = None, split: str = "train", transform: Transform = None,
                 limit: Optional[int] = None, seed: int = 0, image_key: str = "image",
                 label_key: Optional[str] = "label") -> None:
        self.split, self.transform = split, _as_transform(transform)
        try:
            import datasets as hfds
        except ImportError as e:
            raise DataError("source='hf' needs the 'datasets' package: pip install datasets") from e
        if root is None or not Path(root).exists():
            raise DataError(f"Hugging Face dataset directory not found: {root}")
        ds = hfds.load_from_disk(root)
        if isinstance(ds, hfds.DatasetDict):
            name = split if split in ds else {"val": "validation"}.get(split, split)
            if name not in ds:
                raise DataError(f"{root} has splits {list(ds)}, not {split!r}")
            ds = ds[name]
        for key in (image_key, label_key):
            if key is not None and key not in ds.column_names:
                raise DataError(f"{root}: no column {key!r} (columns: {ds.column_names}); set image_key/label_key")
        self._hf, self._image_key = ds.select(_subset(len(ds), limit, seed).tolist()), image_key
        if label_key is None:
            self.targets, self.classes = [-1] * len(self._hf), []
        else:
            self.targets = list(self._hf[label_key])
            names = getattr(ds.features[label_key], "names", None)
            self.classes = list(names or range(int(max(self.targets)) + 1)) if self.targets else []
        self._check_not_empty(root, split)

    def load_image(self, i: int) -> Image.Image:
        img = self._hf[i][self._image_key]
        return (img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))).convert("RGB")


@DATASETS.register_module()
class FashionMosaicImages(ImageSource):
    """Unlabelled mosaic canvases (`mosaic_canvas` with `mosaic` arguments) from the split's Fashion-MNIST
    items; canvas i is drawn from the generator seeded (seed, i), so it is the same every run and epoch."""

    source = "fashion_mosaic"

    def __init__(self, root: Optional[str] = None, split: str = "train", transform: Transform = None,
                 limit: Optional[int] = None, seed: int = 0, mosaic: Optional[dict] = None) -> None:
        self.split, self.transform = split, _as_transform(transform)
        self._items = fashion_mnist_arrays(split, Path(root) if root else FASHION_ROOT)
        self._mosaic, self._seed = dict(mosaic or {}), seed
        self.targets, self.classes = [-1] * (limit or len(self._items[0])), []
        self._check_not_empty(root, split)

    def load_image(self, i: int) -> Image.Image:
        canvas, _ = mosaic_canvas(np.random.default_rng((self._seed, i)), *self._items, **self._mosaic)
        return Image.fromarray(canvas).convert("RGB")


SOURCES: dict[str, type[ImageSource]] = {
    cls.source: cls for cls in (FashionMNISTDataset, ImageFolderDataset, HFDiskDataset, FashionMosaicImages)}


@DATASETS.register_module()
class ImageDataset(Dataset):
    """The source named `source` (fashion_mnist, folder, hf or fashion_mosaic) with its arguments; keys that
    source does not take (image_key, label_key, mosaic) are ignored."""

    def __init__(self, source: str = "fashion_mnist", root: Optional[str] = None, split: str = "train",
                 transform: Transform = None, limit: Optional[int] = None, seed: int = 0,
                 image_key: str = "image", label_key: Optional[str] = "label", mosaic: Optional[dict] = None) -> None:
        if source not in SOURCES:
            raise DataError(f"unknown data source {source!r}; choose fashion_mnist, folder, hf or fashion_mosaic")
        extra = {"hf": dict(image_key=image_key, label_key=label_key), "fashion_mosaic": dict(mosaic=mosaic)}
        self.source, self.split = source, split
        self.data = SOURCES[source](root=root, split=split, transform=transform, limit=limit, seed=seed,
                                    **extra.get(source, {}))

    @property
    def classes(self) -> list:
        return self.data.classes

    @property
    def targets(self) -> list[int]:
        return self.data.targets

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def transform(self) -> Optional[Callable]:
        return self.data.transform

    def load_image(self, i: int) -> Image.Image:
        return self.data.load_image(i)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.data[i]
