"""Image classification (and unlabelled pretraining) data: one registered Dataset per source.

- `FashionMNISTDataset`: the full Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (offline, built in);
- `ImageFolderDataset`: torchvision's ImageFolder on ``ROOT/<split>/<class>/*.jpg`` (ImageNet layout: train/, val/);
- `ImageFilesDataset`: every image under ``ROOT/<split>`` (or ROOT itself), flat or nested, unlabelled (label -1);
- `HFDiskDataset`: a Hugging Face dataset saved with ``save_to_disk``;
- `HFParquetDataset`: a local copy of a hub dataset repo (parquet shards, split names from the file names);
- `HFHubDataset`: a hub dataset by name (``ILSVRC/imagenet-1k``) through `datasets` (its cache, the offline flags);
- `FashionMosaicImages`: unlabelled Fashion-MNIST mosaic canvases (the segmentation set's images, made on the fly
  from the split's items: `limit` canvases, as many as the split has items by default), for pretraining on
  the segmentation domain.

Each takes ``split``, ``transform`` (a callable or `build_transform` arguments), ``limit`` (a fixed random
subset, the same every run) and ``seed``, and gives (image, label) pairs plus ``classes``, ``targets`` and
``load_image(i)``. `ImageDataset` picks one by name, as configs say:
``dataset=dict(type='ImageDataset', source='folder', root='data/imagenet', split='train', transform=...)``;
`nepa_eval.data.resolve` turns a ``--data`` value into these arguments. The Hugging Face sources find their image
and label columns by their features (``image_key`` / ``label_key`` 'auto'; a name; ``label_key=None``: unlabelled).

A file that cannot be read or decoded never ends a run: item i is then the next item whose image decodes (the
same every time), and the file is reported (`bad_files`: warned, counted, recorded by the run, fatal only past
the bound).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from mmengine.registry import DATASETS
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import DatasetFolder, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .bad_files import report_bad_file
from .errors import DataError
from .resolve import SPLIT_NAMES, find_columns, parquet_splits, pick_split
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


def _reason(e: BaseException) -> str:
    """Why a file is bad: the underlying error (type and message)."""
    cause = e.__cause__ if isinstance(e, DataError) and e.__cause__ is not None else e
    return f"{type(cause).__name__}: {cause}"


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

    def item_name(self, i: int) -> str:
        """The file (or row) behind item i, as a bad-file report names it."""
        return f"{self.source}:{getattr(self, 'split', '')}[{i}]"

    def check_item(self, i: int) -> Optional[tuple[str, str]]:
        """None when image i decodes, else (its file, why not): for --check-data."""
        try:
            self.load_image(i)
        except Exception as e:
            return self.item_name(i), _reason(e)
        return None

    def _check_not_empty(self, root: Optional[str], split: str) -> None:
        if len(self.targets) == 0:
            raise DataError(f"dataset {self.source}:{root or ''}:{split} is empty")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        """(transform(image), label) of item i, or of the next item whose image decodes (bad files reported)."""
        n, last = len(self), ""
        for k in range(n):
            j = (i + k) % n
            try:
                img = self.load_image(j)
            except Exception as e:
                last = _reason(e)
                report_bad_file(self.item_name(j), last, n, getattr(self, "split", ""),
                                self.__dict__.setdefault("bad_seen", {}))
                continue
            return (self.transform(img) if self.transform else img), int(self.targets[j])
        raise DataError(f"none of the {n} images of {self.source}:{getattr(self, 'split', '')} can be read; "
                        f"the last: unreadable image {self.item_name((i + n - 1) % n)}: {last}")


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

    def item_name(self, i: int) -> str:
        return self.samples[i][0]


def _split_dir(root: str, split: str) -> Path:
    """root/split, or root itself as the train split when it has no split folders (train/, val/, ...)."""
    r = Path(root)
    if (r / split).is_dir():
        return r / split
    if not r.is_dir():
        raise DataError(f"image folder not found: {r}")
    found = sorted(d.name for d in r.iterdir() if d.is_dir() and d.name.lower() in SPLIT_NAMES)
    if split == "train" and not found:
        return r
    raise DataError(f"image folder not found: {r / split} (the split folders in {r}: "
                    f"{found or 'none, so the folder itself is the train split'})")


@DATASETS.register_module()
class ImageFilesDataset(ImageSource):
    """Unlabelled images (every label -1): each image file under root/split, or under root itself as the train
    split when it has no split folders, at any depth, in path order (hidden folders skipped)."""

    source = "images"

    def __init__(self, root: Optional[str] = None, split: str = "train", transform: Transform = None,
                 limit: Optional[int] = None, seed: int = 0) -> None:
        if root is None:
            raise DataError("source='images' needs a root directory (a folder of images, at any depth)")
        d = _split_dir(root, split)
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(d).parts) and p.is_file())
        if not files:
            raise DataError(f"{d} holds no images with extensions {IMG_EXTENSIONS} (at any depth)")
        self.split, self.transform = split, _as_transform(transform)
        self.files = [str(files[i]) for i in _subset(len(files), limit, seed)]
        self.targets, self.classes = [-1] * len(self.files), []
        self._check_not_empty(root, split)

    def load_image(self, i: int) -> Image.Image:
        return _open_rgb(self.files[i])

    def item_name(self, i: int) -> str:
        return self.files[i]


def _hf() -> Any:
    try:
        import datasets as hfds
    except ImportError as e:
        raise DataError("Hugging Face data needs the 'datasets' package: pip install datasets") from e
    return hfds


class HFSource(ImageSource):
    """Rows of a Hugging Face Dataset: the image column is decoded here (PIL), so a bad row is named and skipped;
    labels from the label column (ClassLabel names as classes). ``image_key`` / ``label_key``: 'auto' (found by
    the features), a column name, or (label_key) None for unlabelled data (every label -1)."""

    def _setup(self, ds: Any, where: str, split: str, transform: Transform, limit: Optional[int], seed: int,
               image_key: Optional[str], label_key: Optional[str]) -> None:
        hfds = _hf()
        self.split, self.transform, self._where = split, _as_transform(transform), where
        if image_key == "auto" or label_key == "auto":
            auto_image, auto_label = find_columns(ds.features, where)
            image_key = auto_image if image_key == "auto" else image_key
            label_key = auto_label if label_key == "auto" else label_key
        for key in (image_key, label_key):
            if key is not None and key not in ds.column_names:
                raise DataError(f"{where}: no column {key!r} (columns: {ds.column_names}); set image_key/label_key")
        self._rows = _subset(len(ds), limit, seed)
        sub = ds.select(self._rows.tolist()) if len(self._rows) < len(ds) else ds
        self._image_key = image_key
        self._images = sub.select_columns([image_key]).cast_column(image_key, hfds.Image(decode=False))
        if label_key is None:
            self.targets, self.classes = [-1] * len(sub), []
        else:
            self.targets = [int(y) for y in sub[label_key]]
            names = getattr(ds.features[label_key], "names", None)
            self.classes = list(names or range(int(max(self.targets)) + 1)) if self.targets else []
        self._check_not_empty(where, split)

    def _raw(self, i: int) -> dict:
        return self._images[i][self._image_key] or {}

    def load_image(self, i: int) -> Image.Image:
        rec = self._raw(i)
        data, path = rec.get("bytes"), rec.get("path")
        try:
            if data is None and not path:
                raise ValueError("the row holds no image")
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                return im.convert("RGB")
        except Exception as e:
            raise DataError(f"unreadable image {self.item_name(i)}: {e}") from e

    def item_name(self, i: int) -> str:
        try:
            path = self._raw(i).get("path")
        except Exception:
            path = None
        return f"{self._where} row {int(self._rows[i])}" + (f" ({path})" if path else "")


@DATASETS.register_module()
class HFDiskDataset(HFSource):
    """A Hugging Face dataset written by ``save_to_disk``: a Dataset, or a DatasetDict holding `split` (named as
    the data names it: 'val' finds validation)."""

    source = "hf"

    def __init__(self, root: Optional[str] = None, split: str = "train", transform: Transform = None,
                 limit: Optional[int] = None, seed: int = 0, image_key: Optional[str] = "auto",
                 label_key: Optional[str] = "auto") -> None:
        hfds = _hf()
        if root is None or not Path(root).exists():
            raise DataError(f"Hugging Face dataset directory not found: {root}")
        ds = hfds.load_from_disk(root)
        if isinstance(ds, hfds.DatasetDict):
            split = pick_split(list(ds), split, root)
            ds = ds[split]
        self._setup(ds, f"{root}:{split}", split, transform, limit, seed, image_key, label_key)


@DATASETS.register_module()
class HFParquetDataset(HFSource):
    """A local copy of a hub dataset repo: its parquet shards of `split` (split names from the file names, as
    `datasets` reads them), loaded with `datasets`' parquet builder (converted once into its Arrow cache,
    HF_DATASETS_CACHE, then memory-mapped)."""

    source = "parquet"

    def __init__(self, root: Optional[str] = None, split: str = "train", transform: Transform = None,
                 limit: Optional[int] = None, seed: int = 0, image_key: Optional[str] = "auto",
                 label_key: Optional[str] = "auto") -> None:
        hfds = _hf()
        if root is None or not Path(root).is_dir():
            raise DataError(f"dataset repo folder not found: {root}")
        files = parquet_splits(root)
        split = pick_split(list(files), split, root)
        ds = hfds.load_dataset("parquet", data_files={split: files[split]}, split=split)
        self._setup(ds, f"{root}:{split}", split, transform, limit, seed, image_key, label_key)


@DATASETS.register_module()
class HFHubDataset(HFSource):
    """A hub dataset by name (``ILSVRC/imagenet-1k``), loaded by `datasets`: from its cache, offline too
    (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE), or downloaded when online."""

    source = "hub"

    def __init__(self, root: Optional[str] = None, split: str = "train", transform: Transform = None,
                 limit: Optional[int] = None, seed: int = 0, image_key: Optional[str] = "auto",
                 label_key: Optional[str] = "auto") -> None:
        hfds = _hf()
        if not root:
            raise DataError("source='hub' needs the dataset's name as root, e.g. root='ILSVRC/imagenet-1k'")
        try:
            builder = hfds.load_dataset_builder(root)
            split = pick_split(list(builder.info.splits or [split]), split, root)
            ds = hfds.load_dataset(root, split=split)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"hub dataset {root} could not be loaded ({type(e).__name__}: {e}); with no network it "
                            "must be in the datasets cache (HF_DATASETS_CACHE)") from None
        self._setup(ds, f"{root}:{split}", split, transform, limit, seed, image_key, label_key)


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
    cls.source: cls for cls in (FashionMNISTDataset, ImageFolderDataset, ImageFilesDataset, HFDiskDataset,
                                HFParquetDataset, HFHubDataset, FashionMosaicImages)}


@DATASETS.register_module()
class ImageDataset(Dataset):
    """The source named `source` (fashion_mnist, folder, images, hf, parquet, hub or fashion_mosaic) with its
    arguments; keys that source does not take (image_key, label_key, mosaic) are ignored."""

    def __init__(self, source: str = "fashion_mnist", root: Optional[str] = None, split: str = "train",
                 transform: Transform = None, limit: Optional[int] = None, seed: int = 0,
                 image_key: Optional[str] = "auto", label_key: Optional[str] = "auto",
                 mosaic: Optional[dict] = None) -> None:
        if source not in SOURCES:
            raise DataError(f"unknown data source {source!r}; choose {', '.join(SOURCES)}")
        keys = dict(image_key=image_key, label_key=label_key)
        extra = {"hf": keys, "parquet": keys, "hub": keys, "fashion_mosaic": dict(mosaic=mosaic)}
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

    def item_name(self, i: int) -> str:
        return self.data.item_name(i)

    def check_item(self, i: int) -> Optional[tuple[str, str]]:
        return self.data.check_item(i)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.data[i]


def build_image_dataset(spec: dict) -> Dataset:
    """A dataset from its arguments: a config's dataset dict (with `type`, built by mmengine's registry), or
    ImageDataset arguments (source, root, split, ...)."""
    return DATASETS.build(spec) if "type" in spec else ImageDataset(**spec)
