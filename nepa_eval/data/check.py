"""Bad files in mmengine datasets: the wrapper that skips them (mmseg's datasets included), and the
``--check-data`` pass that decodes every file before training. (The run's list of them is `bad_files`; the hook
that collects it into the run directory, `BadFilesHook`, is the engine's.)

- `SkipBadFiles` (``dict(type='SkipBadFiles', dataset=dict(type='ADE20KDataset', ...))``; `nepa-eval seg` wraps its
  datasets so): item i is the next item whose image and annotation load and agree in size. It replaces
  BaseDataset's own refetch (a random other item, up to ``max_refetch`` times, then a bare Exception; none at
  all in test mode) so the replacement is the same every run and every failure names its file.
- `check_data(cfg)`: every file of the config's datasets decoded by DataLoader workers, with a progress bar.
"""
from __future__ import annotations

import copy
import os
import sys
from typing import Any, Optional

from mmengine.registry import DATASETS

from .bad_files import report_bad_file
from .errors import DataError


# ----------------------------------------------------------------------------------------------
# skipping bad files in mmengine datasets (mmseg's)
# ----------------------------------------------------------------------------------------------
class _BadItem(Exception):
    """Item loading failed because of this file (an image or an annotation), for this reason."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


@DATASETS.register_module()
class SkipBadFiles:
    """An mmengine dataset whose bad files are skipped and reported: item i is the next item whose pipeline
    runs, the image and the annotation agreeing in size. A file is bad when loading it fails (the image, or the
    annotation when LoadAnnotations fails), when its annotation's size differs from its image's, or when a later
    transform fails on it (the image named, the transform in the reason)."""

    def __init__(self, dataset: dict | Any, lazy_init: bool = False) -> None:
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        if not lazy_init:
            self.full_init()

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(self.dataset.metainfo)

    def full_init(self) -> None:
        if hasattr(self.dataset, "full_init"):
            self.dataset.full_init()

    def __len__(self) -> int:
        return len(self.dataset)

    def _where(self) -> str:
        prefix = getattr(self.dataset, "data_prefix", None) or {}
        return str(prefix.get("img_path", ""))

    def _run(self, idx: int, loading_only: bool = False) -> Optional[dict]:
        """The pipeline on item idx (its loading transforms only with `loading_only`); _BadItem names the file."""
        info = self.dataset.get_data_info(idx)
        img_path, ann_path = str(info.get("img_path", "")), str(info.get("seg_map_path") or "")
        transforms = list(getattr(self.dataset.pipeline, "transforms", [self.dataset.pipeline]))
        loads = [i for i, t in enumerate(transforms) if type(t).__name__.startswith("Load")]
        last_load = loads[-1] if loads else -1
        results: Optional[dict] = info
        for i, t in enumerate(transforms[:last_load + 1] if loading_only else transforms):
            try:
                results = t(results)
            except Exception as e:
                blame = ann_path if "Annotation" in type(t).__name__ and ann_path else img_path
                raise _BadItem(blame or f"item {idx}", f"{type(e).__name__} in {type(t).__name__}: {e}") from None
            if results is None:
                return None
            if i == last_load and "img" in results and results.get("gt_seg_map") is not None:
                ih, iw = results["img"].shape[:2]
                ah, aw = results["gt_seg_map"].shape[:2]
                if (ih, iw) != (ah, aw):
                    raise _BadItem(ann_path or img_path, f"annotation is {aw}x{ah}, its image {img_path} is "
                                                         f"{iw}x{ih} (width x height)")
        return results

    def check_item(self, idx: int) -> Optional[tuple[str, str]]:
        """None when item idx loads (image, annotation, sizes agreeing), else (file, reason)."""
        try:
            self._run(idx, loading_only=True)
        except _BadItem as b:
            return b.file, b.reason
        return None

    def __getitem__(self, idx: int) -> dict:
        n = len(self)
        for k in range(n):
            j = (idx + k) % n
            try:
                data = self._run(j)
            except _BadItem as b:
                report_bad_file(b.file, b.reason, n, self._where(), self.__dict__.setdefault("bad_seen", {}))
                continue
            if data is not None:  # None: a transform declined the item (mmengine refetches then): the next one
                return data
        raise DataError(f"no item of the {n} in {self._where() or 'the dataset'} passes the pipeline")


def wrap_datasets(cfg: Any) -> None:
    """Wrap the dataset of every loader of a config in SkipBadFiles (once)."""
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(name)
        if loader and loader.get("dataset") and loader.dataset.get("type") != "SkipBadFiles":
            loader.dataset = dict(type="SkipBadFiles", dataset=loader.dataset)


# ----------------------------------------------------------------------------------------------
# --check-data
# ----------------------------------------------------------------------------------------------
class _CheckView:
    """Item i: (file, reason) when item i of `dataset` is bad, else None."""

    def __init__(self, dataset: Any, name: str) -> None:
        self.dataset, self.name = dataset, name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Optional[tuple[str, str]]:
        check = getattr(self.dataset, "check_item", None)
        if check is not None:
            return check(i)
        try:
            self.dataset[i]
        except Exception as e:
            return f"{self.name}[{i}]", f"{type(e).__name__}: {e}"
        return None


def _collate_bad(batch: list) -> tuple[int, list]:
    return len(batch), [b for b in batch if b is not None]


def _datasets_to_check(cfg: Any) -> list[tuple[str, dict]]:
    """(name, dataset config) of the train/val/test loaders and the k-NN monitor's data, each once."""
    out: list[tuple[str, dict]] = []
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(name)
        if loader and loader.get("dataset"):
            out.append((name.split("_")[0], loader.dataset.to_dict() if hasattr(loader.dataset, "to_dict")
                        else dict(loader.dataset)))
    for key in ("knn_train", "knn_test"):
        if cfg.get(key):
            out.append((f"k-NN {key[4:]}", dict(type="ImageDataset", **cfg[key])))
    seen, unique = [], []
    for name, d in out:
        if d not in seen:
            seen.append(d)
            unique.append((name, d))
    return unique


def check_dataset(dataset: Any, name: str, workers: int = 2, batch_size: int = 32,
                  progress: bool = True) -> list[dict]:
    """Decode every item of `dataset` with DataLoader workers; the bad ones as {'file', 'reason', 'split'}."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if not hasattr(dataset, "check_item") and hasattr(dataset, "pipeline") and hasattr(dataset, "get_data_info"):
        dataset = SkipBadFiles(dataset)  # an mmengine dataset: its loading transforms and the size check
    view = _CheckView(dataset, name)
    loader = DataLoader(view, batch_size=batch_size, num_workers=workers, collate_fn=_collate_bad)
    bad: list[dict] = []
    with tqdm(total=len(view), desc=f"checking {name} data", unit="file", disable=not progress,
              file=sys.stderr) as bar:
        for n, found in loader:
            bad += [dict(file=f, reason=r, split=name) for f, r in found]
            bar.update(n)
            if found:
                bar.set_postfix(bad=len(bad))
    return bad


def check_data(cfg: Any, workers: Optional[int] = None, progress: bool = True) -> tuple[list[dict], int]:
    """--check-data: every file of the config's datasets decoded (images and, for segmentation, annotations
    with their sizes); (the bad ones, each named once; the items checked)."""
    from mmengine.registry import init_default_scope

    init_default_scope(cfg.get("default_scope") or "mmengine")
    if workers is None:
        loader = cfg.get("train_dataloader") or cfg.get("test_dataloader") or {}
        workers = max(1, min(int(loader.get("num_workers", 0) or 0) or 2, os.cpu_count() or 1))
    bad: list[dict] = []
    items = 0
    for name, dcfg in _datasets_to_check(cfg):
        ds = DATASETS.build(dcfg)
        items += len(ds)
        for r in check_dataset(ds, name, workers, progress=progress):
            if all(r["file"] != b["file"] for b in bad):
                bad.append(r)
    return bad, items
