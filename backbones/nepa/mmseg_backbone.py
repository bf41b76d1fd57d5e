"""NEPA as an mmsegmentation backbone: chosen block outputs as NCHW maps for Feature2Pyramid + UPerNet.

Configs import this module with ``custom_imports``; ``backbones.nepa`` does not import it, so the core
never needs mmseg. The module is a ``NepaViT`` (same parameter names as every checkpoint, so the
weight door and the layer-decay groups apply unchanged) with:

- ``forward(x)`` -> tuple of (B, D, h, w) maps of the blocks in ``out_indices`` (cls token stripped),
  bidirectional attention unless ``causal=True``; any input size (RoPE needs no interpolation).
- Inputs that are not a multiple of the patch (512 with patch 14) are padded to the next multiple
  (518), and each map is then resampled to cover exactly the unpadded image on an even grid
  (``2 * ceil(H / (2 * s))`` cells, s = ``out_stride`` or the patch): no border pixel is lost, the
  pad is never predicted on, and Feature2Pyramid's 4x, 2x, 1x, 0.5x levels tile the image exactly,
  so UPerNet's resizes and the final logit resize line up. When the input is already a multiple of
  2 * patch the maps are returned untouched.
- Weights only through the checkpoint door (``init_cfg=dict(type='Pretrained', checkpoint=...)`` or
  ``pretrained=...``), loaded in ``init_weights`` (the constructor never reads a file); any key that
  does not fit is an error, never a silent partial load. ``arch`` is the architecture the config
  builds (`nepa-eval seg --ckpt` writes the checkpoint's own there); a checkpoint of another
  architecture is an error naming the config to use.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from .checkpoint import (CheckpointError, CheckpointReads, load_state_dict_into, register_safe_globals, resolve_config,
                         take_checkpoint, to_nepa_state_dict)


register_safe_globals()  # mmseg's tools/train.py --resume and tools/test.py read our mmengine checkpoints
from .model import SIZES, NepaConfig, NepaViT

SIZE_KEYS = ("embed_dim", "depth", "num_heads", "patch_size")
# fields that change the numerics without any weight to show it (a strict load cannot catch them)
NUMERICS_KEYS = ("pos_embed", "rope_theta", "class_token", "norm_eps", "final_norm")
# fields a segmentation config sets itself; everything else about the architecture comes from the checkpoint
SEG_FIELDS = ("causal", "drop_path_rate", "pad_to_patch", "num_classes", "global_pool", "img_size")


def default_out_indices(depth: int) -> list[int]:
    """The MAE/BEiT pattern scaled to any depth: 12 -> [3, 5, 7, 11], 24 -> [7, 11, 15, 23]."""
    return sorted({max(0, round(depth * k / 12) - 1) for k in (4, 6, 8, 12)})


def arch_dict(arch: str | dict) -> dict[str, Any]:
    """NepaConfig fields of a size name ('tiny', 'small', 'base', 'large') or of an explicit dict."""
    if isinstance(arch, str):
        if arch not in SIZES:
            raise ValueError(f"unknown NEPA arch {arch!r}; choose from {sorted(SIZES)} or give a dict of NepaConfig "
                             "fields")
        return dict(SIZES[arch])
    return dict(arch)


def size_name(cfg: dict[str, Any]) -> Optional[str]:
    """The size name whose width/depth/heads a config has, or None."""
    for name, s in SIZES.items():
        if all(cfg.get(k) == v for k, v in s.items()):
            return name
    return None


def describe(cfg: dict[str, Any]) -> str:
    name = size_name(cfg)
    dims = ", ".join(f"{k} {cfg.get(k, NepaConfig.__dataclass_fields__[k].default)}" for k in SIZE_KEYS)
    return f"NEPA-{name} ({dims})" if name else f"NEPA ({dims})"


def check_arch(expected: str | dict, found: dict[str, Any], path: str) -> None:
    """Raise CheckpointError when a checkpoint's size differs from what the config builds."""
    exp = arch_dict(expected)
    default_patch = NepaConfig.__dataclass_fields__["patch_size"].default
    diff = [k for k in SIZE_KEYS if k in exp or k == "patch_size"
            if exp.get(k, default_patch if k == "patch_size" else None) != found.get(k)]
    numerics = [f"{k} {exp[k]!r} vs {found[k]!r}" for k in NUMERICS_KEYS if k in exp and k in found
                and exp[k] != found[k]]
    if numerics and not diff:
        raise CheckpointError(f"{path}: the checkpoint's architecture differs from what the config builds in "
                              f"fields that carry no weights (config vs checkpoint: {'; '.join(numerics)}); set "
                              "model.backbone.arch to the checkpoint's, or let 'nepa-eval seg --ckpt' write it.")
    if diff:
        want = {**{"patch_size": default_patch}, **exp}
        hint = size_name(found)
        raise CheckpointError(
            f"{path}: the checkpoint is a {describe(found)} but the config builds {describe(want)} "
            f"(differs in {', '.join(diff)}). Use a config for that size"
            + (f" (seg_configs/nepa/nepa-{hint[0]}_*.py)" if hint in ("base", "large") else "")
            + ", let 'nepa-eval seg --ckpt' pick it, or set model.backbone.arch to match.")


def checkpoint_prefix(keys: Sequence[str]) -> Optional[str]:
    """'backbone.' when the keys are a whole segmentor's (a backbone plus decode heads), else None."""
    if any(k.startswith("backbone.") for k in keys) and any(k.startswith(("decode_head.", "auxiliary_head."))
                                                           for k in keys):
        return "backbone."
    return None


def image_grid(size: int, stride: float) -> int:
    """Cells of the output grid along one side: the image extent in strides, rounded up to an even number."""
    return 2 * math.ceil(size / (2 * stride))


def align_to_image(feat: torch.Tensor, image_hw: tuple[int, int], patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """Resample a map computed on the padded input so it covers exactly the unpadded image on `grid` cells."""
    h, w = feat.shape[-2:]
    H, W = image_hw
    if (h * patch, w * patch) == (H, W) and (h, w) == grid:
        return feat
    ho, wo = grid
    # output cell centres in image pixels -> normalised coordinates of the padded map (align_corners=False)
    ys = (torch.arange(ho, device=feat.device, dtype=torch.float32) + 0.5) * (H / ho) / (h * patch) * 2 - 1
    xs = (torch.arange(wo, device=feat.device, dtype=torch.float32) + 0.5) * (W / wo) / (w * patch) * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack((gx, gy), dim=-1).to(feat.dtype).expand(feat.shape[0], ho, wo, 2)
    return F.grid_sample(feat, coords, mode="bilinear", padding_mode="border", align_corners=False)


@MODELS.register_module()
class NepaBackbone(NepaViT, BaseModule):
    """NEPA ViT for mmseg: `out_indices` block outputs as NCHW maps aligned to the image (see module doc).

    An mmengine BaseModule as mmseg's MAE backbone: the constructor builds the architecture `arch` says and
    never touches disk; the weights load in ``init_weights()`` from ``init_cfg=dict(type='Pretrained',
    checkpoint=...)`` (or ``pretrained=...``), where a checkpoint of another architecture is an error naming the
    difference. arch: a size name or NepaConfig fields (`nepa-eval seg --ckpt` writes the checkpoint's whole
    architecture here). out_indices: None -> the MAE pattern for the depth. out_norm: apply the final LayerNorm
    to each output (False, as mmseg's MAE; the unused norm is then dropped). out_stride: stride of the output
    grid (None -> the patch). frozen: no gradients and always in eval mode (no drop path), for linear-probe
    segmentation of the pretrained features (DINOv2's protocol); the optimiser leaves the frozen parameters out.
    Extra keyword arguments are NepaConfig overrides.
    """

    def __init__(self, arch: str | dict = "base", out_indices: Optional[Sequence[int]] = None, causal: bool = False,
                 drop_path_rate: float = 0.1, out_norm: bool = False, out_stride: Optional[float] = None,
                 align: bool = True, grad_checkpointing: bool = False, frozen: bool = False,
                 pretrained: Optional[str] = None, init_cfg: Optional[dict | list] = None,
                 checkpoint_reads: Optional[CheckpointReads] = None, **overrides: Any) -> None:
        checkpoint, prefix = self._checkpoint_from(pretrained, init_cfg)
        cfg = {k: v for k, v in arch_dict(arch).items() if k not in SEG_FIELDS}
        cfg.update(overrides, causal=causal, drop_path_rate=drop_path_rate, pad_to_patch=True, num_classes=0)
        super().__init__(NepaConfig.from_dict(cfg))  # NepaViT, then BaseModule (init_cfg set below)
        self.checkpoint, self.checkpoint_prefix = checkpoint, prefix
        depth = len(self.blocks)
        self.out_indices = list(default_out_indices(depth) if out_indices is None else out_indices)
        bad = [i for i in self.out_indices if not -depth <= i < depth]
        if bad:
            raise ValueError(f"out_indices {bad} out of range for a depth-{depth} NEPA; "
                             f"use e.g. {default_out_indices(depth)}")
        self.out_norm, self.out_stride, self.align = out_norm, out_stride, align
        if not out_norm:
            self.norm = nn.Identity()  # unused; leaving it would give DDP parameters without gradients
        self.set_grad_checkpointing(grad_checkpointing)
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.eval()
        self.init_cfg = init_cfg
        self.is_init = False
        self.load_report = None
        self.checkpoint_reads = checkpoint_reads
        self._built = True

    def use_checkpoint_reads(self, reads: Optional[CheckpointReads]) -> None:
        """The run's reads (`CheckpointReads`): ``init_weights`` takes the read its task made instead of reading the
        file again (the engine hands them over to every module that has this method, after building the model)."""
        self.checkpoint_reads = reads

    @staticmethod
    def _read(path: str, prefix: Optional[str], reads: Optional[CheckpointReads] = None
              ) -> tuple[dict[str, torch.Tensor], str, list[str], dict[str, Any]]:
        """(state dict in our names, format, notes, the architecture it describes) of a checkpoint; a file the
        task already read (to write its architecture into the config) is taken from `reads`, not read again."""
        raw = take_checkpoint(path, reads=reads)
        prefix = prefix if prefix is not None else checkpoint_prefix(list(raw.state_dict))
        if prefix:
            raw.state_dict = {k[len(prefix):]: v for k, v in raw.state_dict.items() if k.startswith(prefix)}
            if not raw.state_dict:
                raise CheckpointError(f"{path}: no keys start with the prefix {prefix!r}")
            raw.notes.append(f"took the keys under {prefix!r}")
        sd, notes = to_nepa_state_dict(raw)
        return sd, raw.fmt, notes, resolve_config(raw, sd, notes)

    @staticmethod
    def _checkpoint_from(pretrained: Optional[str], init_cfg: Optional[dict | list]) -> tuple[Optional[str], Optional[str]]:
        cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg] if init_cfg else []
        for c in cfgs:
            if c.get("type") == "Pretrained":
                if c.get("checkpoint") is None:
                    return pretrained, c.get("prefix")
                if pretrained and pretrained != c.get("checkpoint"):
                    raise ValueError("give the checkpoint once: init_cfg=dict(type='Pretrained', ...) or pretrained")
                return c.get("checkpoint"), c.get("prefix")
            raise ValueError(f"NepaBackbone supports only init_cfg type 'Pretrained', got {c.get('type')!r}")
        return pretrained, None

    def init_weights(self) -> None:
        """Load the pretrained checkpoint (called by mmengine); without one keep the release's random init."""
        if not getattr(self, "_built", False):  # NepaViT.__init__ initialising the fresh weights
            return super().init_weights()
        if self.checkpoint is None:
            self.is_init = True
            return
        sd, fmt, notes, found = self._read(self.checkpoint, self.checkpoint_prefix, self.checkpoint_reads)
        self.checkpoint_reads = None  # the run's reads are not the model's: nothing held past the load
        check_arch(self.cfg.to_dict(), found, self.checkpoint)
        ignored = [k for k in sd if k.startswith("norm.")] if not self.out_norm else []
        sd = {k: v for k, v in sd.items() if k not in ignored}
        report = load_state_dict_into(self, sd, self.checkpoint, fmt, list(notes), strict=True, allow_new_head=True)
        if ignored:
            report.notes.append("final norm not used by the segmentation backbone (out_norm=False)")
        self.load_report, self.is_init = report, True
        print_log(f"[nepa] backbone: {report}", logger="current")

    def train(self, mode: bool = True) -> "NepaBackbone":
        """A frozen backbone stays in eval mode whatever the segmentor is switched to."""
        return super().train(mode and not getattr(self, "frozen", False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.forward_intermediates(x, indices=self.out_indices, norm=self.out_norm, output_fmt="NCHW",
                                          intermediates_only=True)
        if not self.align:
            return tuple(maps)
        H, W = x.shape[-2:]
        s = self.out_stride or self.patch_size
        grid = (image_grid(H, s), image_grid(W, s))
        return tuple(align_to_image(m, (H, W), self.patch_size, grid) for m in maps)
