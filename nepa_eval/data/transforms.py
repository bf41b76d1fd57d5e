"""Image transforms (timm's and torchvision's) and the batch collate function (``nepa_collate`` in mmengine)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from mmengine.registry import FUNCTIONS


def build_transform(kind: str = "eval", img_size: int = 224, mean: tuple = (0.5, 0.5, 0.5),
                    std: tuple = (0.5, 0.5, 0.5), interpolation: str = "bicubic", crop_pct: float = 0.875,
                    scale: tuple = (0.08, 1.0), padding: int = 2, **timm_kwargs: Any) -> Callable:
    """'pretrain': RandomResizedCrop + flip (the release); 'train': timm's training transform (RandAugment,
    random erasing, ... via timm_kwargs); 'crop': resize, then a random crop of the image padded by `padding`
    pixels + flip (the light CIFAR-style augmentation of short runs on small images); 'eval': resize then centre
    crop (crop_pct); 'resize': resize only."""
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
    if kind == "crop":
        crop = [T.RandomCrop(img_size, padding=padding, padding_mode="edge")] if padding else []  # 0: flip only
        return T.Compose([T.Resize((img_size, img_size), interpolation=interp), *crop, T.RandomHorizontalFlip(),
                          *norm])
    if kind == "eval":
        return create_transform(img_size, is_training=False, mean=mean, std=std, interpolation=interpolation,
                                crop_pct=crop_pct)
    if kind == "resize":
        return T.Compose([T.Resize((img_size, img_size), interpolation=interp), *norm])
    raise ValueError(f"unknown transform kind {kind!r}: pretrain, train, crop, eval or resize")


@FUNCTIONS.register_module(name="nepa_collate")
def collate(batch: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """Stack (image, label) pairs into {'inputs': (B, C, H, W), 'labels': (B,)} for mmengine models."""
    images, labels = zip(*batch)
    return {"inputs": torch.stack(images), "labels": torch.as_tensor(labels, dtype=torch.long)}
