"""`--data`: one resolver for pretrain, cls and knn, from what a user typed to ImageDataset arguments.

Accepted values; the first form that fits wins:

- ``fashion_mnist``: the built-in Fashion-MNIST (splits train and test);
- a local path (it wins over a hub name spelled the same):
  - a dataset written by ``save_to_disk`` (dataset_dict.json, or dataset_info.json / state.json) -> source 'hf';
  - a local copy of a hub dataset repo: parquet shards (``data/train-00000-of-00294.parquet``, ...), the split
    names taken from the file names as `datasets` reads them -> source 'parquet';
  - an ImageFolder root, ROOT/<split>/<class>/<image> or ROOT/<class>/<image> (the train split) -> 'folder';
  - a flat or nested folder of unlabelled images -> 'images' (every label -1). Pretraining reads every folder this
    way, so an ImageFolder root is fine there too (its split folders, train/ ..., still count);
- ``OWNER/NAME``: a hub dataset through `datasets` (its cache; HF_DATASETS_OFFLINE and HF_HUB_OFFLINE honoured),
  else the repo's snapshot in the hub cache (huggingface_hub, local files only), read as a parquet repo;
- ``folder:ROOT``, ``images:ROOT``, ``parquet:ROOT``, ``hub:NAME``, ``hf:PATH_OR_NAME``: a form named explicitly
  (``hf:`` is any Hugging Face form: save_to_disk, parquet repo or hub name).

The image and label columns of Hugging Face data are found by their features: an ``Image`` feature (or the
``{bytes, path}`` struct it is stored as); a ``ClassLabel`` feature, else an integer column named label or labels.
Splits are named as the data names them; asking for 'val' finds val, validation, valid or dev, and else test
(the held-out split of data that has no validation split). Nothing here imports torch; `datasets` only for
Hugging Face data.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .errors import DataError

SPLIT_KINDS = {"train": ("train", "training"), "val": ("val", "validation", "valid", "dev"),
               "test": ("test", "testing")}
SPLIT_NAMES = frozenset(n for names in SPLIT_KINDS.values() for n in names)
PREFIXES = ("folder", "images", "parquet", "hub", "hf")
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DISK_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
FORMS = ("give fashion_mnist, an ImageFolder root, a folder of images, a save_to_disk dataset, a local copy of a "
         "hub dataset repo (parquet shards), or a hub dataset name OWNER/NAME")


def _kind(split: str) -> Optional[str]:
    return next((k for k, names in SPLIT_KINDS.items() if split.lower() in names), None)


def pick_split(found: Sequence[str], want: str, where: str) -> str:
    """The split of `found` that a request for `want` means; DataError listing the splits found if none."""
    found = [str(s) for s in found]
    if want in found:
        return want
    kind = _kind(want)
    for cand in found:
        if kind is not None and _kind(cand) == kind:
            return cand
    if kind == "val":
        for cand in found:
            if _kind(cand) == "test":
                return cand
    looked = list(SPLIT_KINDS[kind]) + (["test"] if kind == "val" else []) if kind else [want]
    raise DataError(f"{where} has no split {want!r} (looked for {', '.join(looked)}); the splits found: {found}")


@dataclass
class DataSpec:
    """What a --data value resolved to: the ImageDataset source and root, the splits found there (as the data
    names them), whether it has labels, and the column names for Hugging Face data."""

    value: str
    source: str
    root: Optional[str]
    splits: tuple[str, ...]
    labelled: bool
    keys: dict[str, Any] = field(default_factory=dict)

    def split(self, want: str) -> str:
        """The data's own name of the split `want` (train, val, test, or a name of the data's)."""
        return pick_split(self.splits, want, f"--data {self.value}")

    def dataset(self, split: str, **kw: Any) -> dict[str, Any]:
        """ImageDataset arguments for one split (`kw` on top: transform, limit, ...)."""
        return dict(source=self.source, root=self.root, split=self.split(split), **self.keys, **kw)

    def has_split(self, want: str) -> bool:
        try:
            self.split(want)
            return True
        except DataError:
            return False


def resolve_data(value: str, labelled: bool = True) -> DataSpec:
    """Resolve a --data value (see the module's docstring). `labelled`: the task needs labels (cls, knn); False
    for pretraining, which reads any folder as unlabelled images and no label column."""
    value = str(value)
    if value.lower().replace("-", "_") in ("fashion_mnist", "fmnist"):
        return DataSpec(value, "fashion_mnist", None, ("train", "test"), True)
    prefix, sep, rest = value.partition(":")
    if sep and prefix in PREFIXES:
        if not rest:
            raise DataError(f"--data {value}: give the location after '{prefix}:', e.g. {prefix}:/path/to/data")
        return _resolve_named(value, prefix, rest, labelled)
    path = Path(value).expanduser()
    if path.exists():
        return _resolve_path(value, path, labelled)
    if HUB_NAME.fullmatch(value):
        return _resolve_hub(value, value, labelled)
    raise DataError(f"--data {value}: no such file or directory, and not a hub dataset name (OWNER/NAME); {FORMS}")


def _resolve_named(value: str, prefix: str, rest: str, labelled: bool) -> DataSpec:
    path = Path(rest).expanduser()
    if prefix == "hub":
        return _resolve_hub(value, rest, labelled)
    if prefix == "hf":
        if path.exists():
            if any((path / m).exists() for m in DISK_MARKERS):
                return _resolve_disk(value, path, labelled)
            return _resolve_parquet(value, path, labelled)
        return _resolve_hub(value, rest, labelled)
    if not path.is_dir():
        raise DataError(f"--data {value}: no such directory: {path}")
    if prefix == "parquet":
        return _resolve_parquet(value, path, labelled)
    splits = _split_dirs(path) or ("train",)
    if prefix == "folder":
        return DataSpec(value, "folder", str(path), splits, True)
    return DataSpec(value, "images", str(path), splits, False)


def _resolve_path(value: str, path: Path, labelled: bool) -> DataSpec:
    if not path.is_dir():
        raise DataError(f"--data {value}: {path} is a file, not a folder; {FORMS}")
    if any((path / m).exists() for m in DISK_MARKERS):
        return _resolve_disk(value, path, labelled)
    if _has_parquet(path):
        return _resolve_parquet(value, path, labelled)
    splits = _split_dirs(path)
    if not labelled:
        return DataSpec(value, "images", str(path), splits or ("train",), False)
    base = path / splits[0] if splits else path
    if not any(d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
        raise DataError(f"--data {value}: {base} has no class sub-folders, so its images have no labels; "
                        f"classification and k-NN need {path}/<split>/<class>/<image> (or {path}/<class>/<image>). "
                        "A folder of unlabelled images is for 'nepa-eval pretrain --data'.")
    return DataSpec(value, "folder", str(path), splits or ("train",), True)


def _split_dirs(path: Path) -> tuple[str, ...]:
    """Sub-folders of `path` named like splits (train, val, validation, test, ...)."""
    return tuple(sorted(d.name for d in path.iterdir() if d.is_dir() and d.name.lower() in SPLIT_NAMES))


def _has_parquet(path: Path) -> bool:
    """Parquet shards at ROOT/*.parquet, ROOT/*/*.parquet (data/train-...) or ROOT/<config>/<split>/*.parquet."""
    if next(path.glob("*.parquet"), None) is not None or next(path.glob("*/*.parquet"), None) is not None:
        return True
    for top in path.iterdir():
        if top.is_dir() and top.name.lower() not in SPLIT_NAMES and not top.name.startswith("."):
            for sub in top.iterdir():
                if sub.is_dir() and sub.name.lower() in SPLIT_NAMES and next(sub.glob("*.parquet"), None):
                    return True
    return False


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise DataError("Hugging Face data needs the 'datasets' package: pip install datasets") from e
    return datasets


def find_columns(features: Mapping[str, Any], where: str) -> tuple[str, Optional[str]]:
    """(image column, label column or None) found by their features: an Image feature, or a {bytes, path} struct;
    a ClassLabel feature, else an integer column named label or labels."""
    hfds = _datasets()

    def is_image(f: Any) -> bool:
        return isinstance(f, hfds.Image) or (isinstance(f, dict) and {"bytes", "path"} <= set(f))

    image = next((k for k, f in features.items() if is_image(f)), None)
    if image is None:
        raise DataError(f"{where}: no image column (an Image feature) among the columns {list(features)}; "
                        "name it with image_key=")
    label = next((k for k, f in features.items() if isinstance(f, hfds.ClassLabel)), None)
    if label is None:
        label = next((k for k, f in features.items() if k.lower() in ("label", "labels")
                      and isinstance(f, hfds.Value) and f.dtype.startswith(("int", "uint"))), None)
    return image, label


def _hf_spec(value: str, source: str, root: str, splits: Sequence[str], features: Optional[Mapping[str, Any]],
             labelled: bool) -> DataSpec:
    """A DataSpec for Hugging Face data, its columns found from `features` (None: found when it is loaded)."""
    if features is None:
        keys: dict[str, Any] = dict(image_key="auto", label_key="auto" if labelled else None)
        return DataSpec(value, source, root, tuple(splits), labelled, keys)
    image, label = find_columns(features, f"--data {value}")
    if labelled and label is None:
        raise DataError(f"--data {value}: no label column (a ClassLabel feature, or an integer column named label "
                        f"or labels) among the columns {list(features)}; classification and k-NN need labels")
    return DataSpec(value, source, root, tuple(splits), labelled,
                    dict(image_key=image, label_key=label if labelled else None))


def _resolve_disk(value: str, path: Path, labelled: bool) -> DataSpec:
    hfds = _datasets()
    dd = path / "dataset_dict.json"
    if dd.exists():
        splits = list(json.loads(dd.read_text())["splits"])
        info = path / splits[0] / "dataset_info.json"
    else:
        splits, info = ["train"], path / "dataset_info.json"
    features = None
    if info.exists():
        feats = json.loads(info.read_text()).get("features")
        features = hfds.Features.from_dict(feats) if feats else None
    return _hf_spec(value, "hf", str(path), splits, features, labelled)


def parquet_splits(root: str | Path) -> dict[str, list[str]]:
    """{split: parquet files} of a local dataset repo, split names from the file and folder names exactly as
    `datasets` reads a repo (``data/train-00000-of-00294.parquet`` -> train, ``default/validation/0000.parquet``
    -> validation)."""
    _datasets()
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        files = DataFilesDict.from_patterns(get_data_patterns(str(root)), base_path=str(root))
    except Exception as e:  # EmptyDatasetError, FileNotFoundError
        raise DataError(f"{root}: no data files found ({type(e).__name__}: {e})") from None
    out = {str(split): sorted(f for f in fs if f.endswith(".parquet")) for split, fs in files.items()}
    out = {k: v for k, v in out.items() if v}
    if not out:
        raise DataError(f"{root} holds no parquet shards (expected e.g. data/train-00000-of-00001.parquet)")
    return out


def _resolve_parquet(value: str, path: Path, labelled: bool) -> DataSpec:
    hfds = _datasets()
    import pyarrow.parquet as pq

    files = parquet_splits(path)
    first = files[next(iter(files))][0]
    features = hfds.Features.from_arrow_schema(pq.read_schema(first))
    return _hf_spec(value, "parquet", str(path), list(files), features, labelled)


def hub_snapshot(name: str) -> Optional[str]:
    """The local snapshot folder of hub dataset repo `name` in the hub cache (HF_HOME / HF_HUB_CACHE), or None."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=name, repo_type="dataset", local_files_only=True)
    except Exception:
        return None


def _resolve_hub(value: str, name: str, labelled: bool) -> DataSpec:
    hfds = _datasets()
    try:
        builder = hfds.load_dataset_builder(name)
    except Exception as e:
        snapshot = hub_snapshot(name)
        if snapshot is not None:
            return replace(_resolve_parquet(value, Path(snapshot), labelled), value=value)
        from huggingface_hub import constants

        raise DataError(
            f"--data {value}: no local path of that name, and the hub dataset {name} is neither in the datasets cache "
            f"({hfds.config.HF_DATASETS_CACHE}) nor in the hub cache ({constants.HF_HUB_CACHE}), and the hub could "
            f"not be reached or has no such dataset ({type(e).__name__}: {e}). Fetch it once where there is network, "
            f"with the same HF_HOME: python -c \"import datasets; datasets.load_dataset('{name}')\" (or "
            f"huggingface-cli download --repo-type dataset {name}); or give a local copy of the repo") from None
    splits = list(builder.info.splits or ())
    if not splits:
        splits = list(hfds.get_dataset_split_names(name))
    return _hf_spec(value, "hub", name, splits, builder.info.features, labelled)
