"""Data: image sources for classification and pretraining, the Fashion-MNIST mosaic, ADE20K-layout checks.

- `errors`: `DataError`, raised with the path and the fix;
- `fashion`: the Fashion-MNIST arrays and the mosaic maker (canvases, the ADE20K-layout set on disk);
- `ade`: the ADE20K layout: where it is (`resolve_ade_root`) and the pre-flight check (`check_seg_root`);
- `transforms`: `build_transform` (timm/torchvision) and `collate` (``nepa_collate``);
- `sources`: one registered Dataset per image source, and `ImageDataset(source=...)` over them;
- `resolve`: what a ``--data`` value points at (`resolve_data`), for pretrain, cls and knn;
- `bad_files`: the run's list of unreadable / mis-sized files, the bound past which a run fails;
- `check`: `SkipBadFiles` (bad files skipped in mmengine / mmseg datasets) and the ``--check-data`` pass;
- `seg`: `FashionMosaicDataset` for mmseg (the only module here that imports mmseg).

Importing a module registers what it defines (``custom_imports=['nepa_eval.data.sources']`` in a config).
This file imports only `DataError`, so ``make-data`` (`fashion`) needs neither torch nor mmengine (nor do
`resolve` and `bad_files`).
"""
from .errors import DataError

__all__ = ["DataError"]
