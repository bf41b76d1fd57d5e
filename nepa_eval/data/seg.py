"""Segmentation data for mmseg: the mosaic set's dataset class, and the ADE20K-layout check it is read with.

Seg configs import this module with ``custom_imports`` (so mmseg's own tools/train.py and tools/test.py see
`FashionMosaicDataset` too); it is the only module of the data package that imports mmseg.
"""
from __future__ import annotations

from typing import Any

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .ade import IGNORE_INDEX, check_seg_root, resolve_ade_root
from .fashion import MOSAIC_CLASSES

__all__ = ["FashionMosaicDataset", "IGNORE_INDEX", "MOSAIC_CLASSES", "check_seg_root", "resolve_ade_root"]


@DATASETS.register_module()
class FashionMosaicDataset(BaseSegDataset):
    """The Fashion-MNIST mosaic set (`make_mosaic`): background + 10 classes, background counted."""

    METAINFO = dict(classes=MOSAIC_CLASSES,
                    palette=[[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                             [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]])

    def __init__(self, img_suffix: str = ".jpg", seg_map_suffix: str = ".png", reduce_zero_label: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label,
                         **kwargs)
