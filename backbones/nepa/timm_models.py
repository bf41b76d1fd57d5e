"""timm registration: `timm.create_model('nepa_base_patch14_224', ...)` once `backbones` is imported."""
from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, register_notrace_function

from .checkpoint import fill_missing_qk_norm, to_nepa_state_dict, unwrap_state_dict
from .model import SIZES, NepaViT, check_and_pad, resample_abs_pos

__all__ = ["checkpoint_filter_fn"]

# Python control flow over input shapes (the image check and padding, resizing learned positions) runs as one
# leaf call under timm's FX tracer, so create_feature_extractor and timm's fx helpers can trace the models.
register_notrace_function(check_and_pad)
register_notrace_function(resample_abs_pos)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: NepaViT) -> dict[str, torch.Tensor]:
    """Map foreign state dicts (the release's HF names, wrapper prefixes) onto a NEPA model's keys."""
    state_dict, _ = to_nepa_state_dict(unwrap_state_dict(state_dict))  # the weight door's own mapping
    own = model.state_dict()
    out = {k: v for k, v in state_dict.items() if k != "mask_token"}
    fill_missing_qk_norm(out, own)
    if "head.weight" in out and ("head.weight" not in own or out["head.weight"].shape != own["head.weight"].shape):
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    return out


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.875,
        "interpolation": "bicubic", "fixed_input_size": False, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "nepa_tiny_patch14_224.untrained": _cfg(),
    "nepa_small_patch14_224.untrained": _cfg(),
    "nepa_base_patch14_224.untrained": _cfg(),
    "nepa_large_patch14_224.untrained": _cfg(crop_pct=0.95),
    "nepa_tiny_patch16_224.untrained": _cfg(),
    "nepa_small_patch16_224.untrained": _cfg(),
    "nepa_base_patch16_224.untrained": _cfg(),
    "nepa_large_patch16_224.untrained": _cfg(crop_pct=0.95),
})


def _create_nepa(variant: str, size: str, patch: int, pretrained: bool = False, **kwargs: Any) -> NepaViT:
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and (overlay.get("file") or overlay.get("hf_hub_id")):
        # a local file of any format, or a Hugging Face id (OWNER/NAME[@REVISION], also as file=...): loaded
        # through our door, which resolves ids in huggingface_hub's cache; timm's own hub loader would skip the
        # release's config.json and EMA file
        file = overlay.get("file") or overlay["hf_hub_id"]
        kwargs["pretrained_cfg_overlay"] = {**overlay, "file": file, "custom_load": overlay.get("custom_load", True)}
    out_indices = kwargs.pop("out_indices", 3)
    # any input size, as the cfg's fixed_input_size=False says: pad to a multiple of the patch (timm's dynamic_img_pad)
    # kwargs override any of these (patch_size too: `nepa-eval convert --format timm` writes such model_args)
    model_args = dict(SIZES[size], patch_size=patch, causal=kwargs.pop("causal", False), pad_to_patch=True)
    return build_model_with_cfg(
        NepaViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **dict(model_args, **kwargs))


@register_model
def nepa_tiny_patch14_224(pretrained: bool = False, **kwargs: Any) -> NepaViT:
    """NEPA-Tiny/14 (192 wide, 12 blocks, 3 heads)."""
    return _create_nepa("nepa_tiny_patch14_224", "tiny", 14, pretrained, **kwargs)


@register_model
def nepa_small_patch14_224(pretrained: bool = False, **kwargs: Any) -> NepaViT:
    """NEPA-Small/14 (384 wide, 12 blocks, 6 heads)."""
    return _create_nepa("nepa_small_patch14_224", "small", 14, pretrained, **kwargs)


@register_model
def nepa_base_patch14_224(pretrained: bool = False, **kwargs: Any) -> NepaViT:
    """NEPA-Base/14 (768 wide, 12 blocks, 12 heads): the release's ViT-B."""
    return _create_nepa("nepa_base_patch14_224", "base", 14, pretrained, **kwargs)


@register_model
def nepa_large_patch14_224(pretrained: bool = False, **kwargs: Any) -> NepaViT:
    """NEPA-Large/14 (1024 wide, 24 blocks, 16 heads): the release's ViT-L."""
    return _create_nepa("nepa_large_patch14_224", "large", 14, pretrained, **kwargs)


@register_model
def nepa_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> NepaViT:
    """NEPA-Tiny/16."""
    return _create_nepa("nepa_tiny_patch16_224", "tiny", 16, pretrained, **kwargs)


@register_model
def nepa_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> NepaViT:
    """NEPA-Small/16."""
    return _create_nepa("nepa_small_patch16_224", "small", 16, pretrained, **kwargs)


@register_model
def nepa_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> NepaViT:
    """NEPA-Base/16."""
    return _create_nepa("nepa_base_patch16_224", "base", 16, pretrained, **kwargs)


@register_model
def nepa_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> NepaViT:
    """NEPA-Large/16."""
    return _create_nepa("nepa_large_patch16_224", "large", 16, pretrained, **kwargs)
