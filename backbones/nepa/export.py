"""Weights out: a NEPA model written in the layouts other code loads as its own.

- `save_hf`: a model directory as the public release's ``save_pretrained`` writes it (``config.json`` with
  every ``ViTNepaConfig`` field, ``model.safetensors`` with the ``vit_nepa.*`` keys), read by the release's
  fine-tune and visualisation scripts and by transformers' ViT NEPA (``model_type`` "vit_nepa").
- `save_timm`: a directory as timm's own ``save_for_hf`` lays it out (``model.safetensors`` in the timm model's
  keys, ``config.json`` with ``architecture``, ``model_args`` and ``pretrained_cfg``), for
  ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=...))``.

A model the release's code cannot express is refused with a CheckpointError naming the field.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .checkpoint import HF_PREFIX, NEPA_MODEL_TYPE, CheckpointError
from .model import SIZES, NepaConfig, NepaViT

HF_CLASSIFIER = "ViTNepaForImageClassification"
HF_PRETRAINING = "ViTNepaForPreTraining"
# the transformers version the release's saved configs carry (its code is written for it); a source directory's
# own value is kept
RELEASE_TRANSFORMERS_VERSION = "4.56.2"
# ViTNepaConfig fields that no NepaConfig switch holds, with the values the release's configs write; a source
# config.json's own values win (they are kept, as are fields this code does not know)
HF_UNMODELLED_DEFAULTS: dict[str, Any] = {
    "add_pooling_layer": True, "attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.0,
    "initializer_range": 0.02, "pos_embed_jitter": None, "pos_embed_shift": None,
}
# config.json fields that transformers' PretrainedConfig may write and our export decides (never copied over)
_HF_DECIDED = ("architectures", "id2label", "label2id", "num_labels", "model_type")


def release_refusals(model: NepaViT) -> list[str]:
    """Why the release's ViTNepa cannot express `model` (one line per field); empty when it can."""
    cfg = model.cfg
    out = []
    if cfg.pos_embed != "rope":
        what = {"abs": "learned absolute positions instead of RoPE", "rope+abs": "learned absolute positions on top "
                "of RoPE", "none": "no position information"}[cfg.pos_embed]
        out.append(f"pos_embed={cfg.pos_embed!r}: {what}; the release's ViTNepa has 2D RoPE only (no "
                   "position_embeddings)")
    if not cfg.class_token:
        out.append("class_token=False: the release's ViTNepa always prepends a class token")
    if not cfg.final_norm:
        out.append("final_norm=False: the release's ViTNepa always applies its final layernorm")
    if cfg.img_size % cfg.patch_size:
        out.append(f"img_size={cfg.img_size}: not a multiple of patch_size={cfg.patch_size}; the release's model "
                   "takes inputs of exactly image_size and cuts them into whole patches (nepa-eval pads instead)")
    if model.num_classes > 0 and model.global_pool != "avg":
        out.append(f"global_pool={model.global_pool!r}: the release's classifier pools the mean of the patch tokens "
                   "(add_pooling_layer) or takes the last token; nepa-eval's class-token or unpooled head differs")
    return out


def check_release_expressible(model: NepaViT, source: str = "model") -> None:
    """Raise a CheckpointError naming each field the release's ViTNepa cannot express."""
    why = release_refusals(model)
    if why:
        raise CheckpointError(f"{source}: cannot be written as the release's Hugging Face model: " + "; ".join(why)
                              + ". Keep it in nepa-eval's format (--format nepa-eval) or as timm weights "
                              "(--format timm), which hold every architecture switch.")


def hf_state_dict(model: NepaViT) -> dict[str, torch.Tensor]:
    """The model's weights under the release's key names (query/key/value and gate/up split again)."""
    cfg = model.cfg
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    D, pre = cfg.embed_dim, HF_PREFIX
    out: dict[str, torch.Tensor] = {
        pre + "embeddings.cls_token": sd.pop("cls_token"),
        pre + "embeddings.patch_embeddings.projection.weight": sd.pop("patch_embed.proj.weight"),
        pre + "embeddings.patch_embeddings.projection.bias": sd.pop("patch_embed.proj.bias"),
        pre + "layernorm.weight": sd.pop("norm.weight"),
        pre + "layernorm.bias": sd.pop("norm.bias"),
    }
    for i in range(cfg.depth):
        b, L = f"blocks.{i}.", f"{pre}encoder.layer.{i}."
        for ours, theirs in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                             ("attn.proj", "attention.output.dense"), ("mlp.fc2", "output.dense"),
                             ("attn.q_norm", "attention.attention.q_norm"), ("attn.k_norm", "attention.attention.k_norm")):
            for p in ("weight", "bias"):
                if b + f"{ours}.{p}" in sd:
                    out[L + f"{theirs}.{p}"] = sd.pop(b + f"{ours}.{p}")
        for p in ("weight", "bias"):
            if b + f"attn.qkv.{p}" in sd:
                for name, t in zip(("query", "key", "value"), sd.pop(b + f"attn.qkv.{p}").split(D, 0)):
                    out[L + f"attention.attention.{name}.{p}"] = t
            fc1 = sd.pop(b + f"mlp.fc1.{p}")
            if cfg.mlp_type == "swiglu":  # ours is one projection [gate; up]
                out[L + f"intermediate.gate_proj.{p}"], out[L + f"intermediate.up_proj.{p}"] = fc1.chunk(2, 0)
            else:
                out[L + f"intermediate.up_proj.{p}"] = fc1
        for ours, theirs in (("ls1.gamma", "layer_scale.lambda1"), ("ls2.gamma", "output.layer_scale.lambda1")):
            # without LayerScale the release's lambda of ones is the same function
            ones = torch.ones(D, dtype=out[L + "layernorm_before.weight"].dtype)
            out[L + theirs] = sd.pop(b + ours) if b + ours in sd else ones
    if model.num_classes > 0:
        out.update({"fc_norm.weight": sd.pop("fc_norm.weight"), "fc_norm.bias": sd.pop("fc_norm.bias"),
                    "classifier.weight": sd.pop("head.weight"), "classifier.bias": sd.pop("head.bias")})
    if sd:  # a tensor left over would be silently lost
        raise CheckpointError(f"no place in the release's layout for {sorted(sd)[:8]}")
    return {k: v.contiguous().clone() for k, v in out.items()}


def _dtype_name(model: NepaViT) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")


def hf_config(model: NepaViT, base: Optional[dict[str, Any]] = None,
              class_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """The release's config.json for `model`. `base`: the config.json the weights came with (its fields that
    nepa-eval does not model, e.g. pos_embed_jitter, are kept); `class_names`: id2label of a classifier."""
    cfg: NepaConfig = model.cfg
    d: dict[str, Any] = dict(HF_UNMODELLED_DEFAULTS, transformers_version=RELEASE_TRANSFORMERS_VERSION)
    d.update({k: v for k, v in (base or {}).items() if k not in _HF_DECIDED})
    gated = cfg.mlp_type == "swiglu"
    d.update(
        model_type=NEPA_MODEL_TYPE,
        architectures=[HF_CLASSIFIER if model.num_classes > 0 else HF_PRETRAINING],
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.hidden_dim, use_gated_mlp=gated, hidden_act="silu" if gated else "gelu",
        image_size=cfg.img_size, patch_size=cfg.patch_size, num_channels=cfg.in_chans,
        qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, qk_norm_affine=cfg.qk_norm_affine,
        qk_norm_bias=cfg.qk_norm_bias and cfg.qk_norm_affine,  # an affine-free norm has no bias (ours neither)
        layerscale_value=cfg.layerscale_init if cfg.layerscale_init is not None else 1.0,
        rope_theta=float(cfg.rope_theta), pos_embed_rescale=cfg.rope_rescale,
        is_causal=bool(model.causal), layer_norm_eps=cfg.norm_eps, drop_path_prob=cfg.drop_path_rate,
    )
    if model.num_classes > 0:
        d["add_pooling_layer"] = True  # mean of the patch tokens -> fc_norm: nepa-eval's avg head
    d["torch_dtype" if "torch_dtype" in d and "dtype" not in d else "dtype"] = _dtype_name(model)
    for k in ("id2label", "label2id"):
        d.pop(k, None)
    if model.num_classes > 0:
        names = list(class_names) if class_names is not None else None
        if names is None or len(names) != model.num_classes:
            old = (base or {}).get("id2label") or {}
            names = [old.get(str(i), f"LABEL_{i}") for i in range(model.num_classes)] \
                if len(old) == model.num_classes else [f"LABEL_{i}" for i in range(model.num_classes)]
        names = [str(n) for n in names]
        if len(set(names)) != len(names):  # label2id must invert id2label
            raise CheckpointError(f"class names are not unique: {names[:10]}")
        d["id2label"] = {str(i): n for i, n in enumerate(names)}
        d["label2id"] = {n: i for i, n in enumerate(names)}
    return d


def _write_json(path: Path, d: dict[str, Any]) -> None:
    path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")  # as transformers writes config.json


def _prepare_dir(out: str | os.PathLike, files: Sequence[str]) -> Path:
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise CheckpointError(f"{d}: exists and is a file; give a directory for this format (it holds "
                              f"{' + '.join(files)})")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _save_safetensors(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # never a half-written file under the final name


def save_hf(model: NepaViT, out: str | os.PathLike, base: Optional[dict[str, Any]] = None,
            class_names: Optional[Sequence[str]] = None, source: str = "model") -> Path:
    """Write `model` as the release's Hugging Face model directory: config.json + model.safetensors."""
    check_release_expressible(model, source)
    sd = hf_state_dict(model)
    cfg = hf_config(model, base, class_names)
    d = _prepare_dir(out, ("config.json", "model.safetensors"))
    _save_safetensors(sd, d / "model.safetensors", {"format": "pt"})  # transformers' own metadata
    _write_json(d / "config.json", cfg)
    return d


# ----------------------------------------------------------------------------------------------
# timm
# ----------------------------------------------------------------------------------------------
# fields the user passes as model_args when they differ from the variant's (width/depth/heads/patch come from
# its name); training-time and run-time switches stay out (drop_path_rate; pad_to_patch: timm's variants pad),
# num_classes travels on its own
_TIMM_SKIP = ("num_classes", "drop_path_rate", "pad_to_patch")
# timm.create_model drops keyword arguments that are None, so "off" is written as the value that is the same
# function: RoPE coordinate rescale 1.0 (no jitter); no LayerScale -> LayerScale of ones (save_timm writes them)
_TIMM_NONE_AS = {"rope_rescale": 1.0, "layerscale_init": 1.0}


def timm_architecture(model: NepaViT) -> str:
    """The registered timm name closest to `model`: its width's size (else base) at its patch (14 or 16)."""
    cfg = model.cfg
    size = next((s for s, a in SIZES.items() if a["embed_dim"] == cfg.embed_dim), "base")
    patch = cfg.patch_size if cfg.patch_size in (14, 16) else 14
    return f"nepa_{size}_patch{patch}_224"


def timm_model_args(model: NepaViT, arch: str) -> dict[str, Any]:
    """The keyword arguments `timm.create_model(arch, **model_args)` needs to build `model`'s architecture."""
    size, patch = arch.split("_")[1], int(arch.split("_")[2][len("patch"):])
    # what timm_models' _create_nepa builds for the variant (checked by the round-trip test)
    default = NepaConfig(**SIZES[size], patch_size=patch, causal=False, pad_to_patch=True).to_dict()
    ours = model.cfg.to_dict()
    ours.update(causal=bool(model.causal), global_pool=model.global_pool)
    args = {k: v for k, v in ours.items() if k not in _TIMM_SKIP and v != default.get(k)}
    for k in [k for k, v in args.items() if v is None]:
        if k not in _TIMM_NONE_AS:
            raise CheckpointError(f"{k}=None differs from {arch}'s {default.get(k)!r} and timm.create_model drops "
                                  "keyword arguments that are None; keep this model in nepa-eval's format")
        args[k] = _TIMM_NONE_AS[k]
    return {k: v for k, v in args.items() if v != default.get(k)}


def timm_pretrained_cfg(model: NepaViT, arch: str, class_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """The pretrained_cfg to pass as timm's pretrained_cfg_overlay (plus file=...): the variant's own with this
    model's input size, classes and class names."""
    import timm

    cfg = dict(timm.models.get_pretrained_cfg(arch + ".untrained").to_dict())
    size = model.cfg.img_size
    cfg.update(input_size=[model.cfg.in_chans, size, size], num_classes=model.num_classes, architecture=arch,
               tag="nepa-eval")
    if class_names is not None and model.num_classes > 0 and len(class_names) == model.num_classes:
        cfg["label_names"] = [str(n) for n in class_names]
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def save_timm(model: NepaViT, out: str | os.PathLike, class_names: Optional[Sequence[str]] = None) -> Path:
    """Write `model` for timm as timm's own save_for_hf does: model.safetensors (the timm model's keys) and
    config.json {architecture, num_classes, num_features, global_pool, model_args, pretrained_cfg}."""
    from .checkpoint import FORMAT_TAG

    arch = timm_architecture(model)
    cfg = {"architecture": arch, "num_classes": model.num_classes, "num_features": model.num_features,
           "global_pool": model.global_pool, "model_args": timm_model_args(model, arch),
           "pretrained_cfg": timm_pretrained_cfg(model, arch, class_names)}
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    nepa_cfg = model.cfg.to_dict()
    nepa_cfg.update(num_classes=model.num_classes, global_pool=model.global_pool, causal=bool(model.causal))
    if model.cfg.layerscale_init is None:  # as model_args says: LayerScale of ones, the same function
        ones = torch.ones(model.cfg.embed_dim, dtype=sd["norm.weight"].dtype)
        sd.update({f"blocks.{i}.ls{j}.gamma": ones.clone() for i in range(model.cfg.depth) for j in (1, 2)})
        nepa_cfg["layerscale_init"] = _TIMM_NONE_AS["layerscale_init"]
    d = _prepare_dir(out, ("config.json", "model.safetensors"))
    # the metadata lets nepa-eval's weight door rebuild the exact model; timm reads only the tensors
    _save_safetensors(sd, d / "model.safetensors", {"format": "pt", "nepa_format": FORMAT_TAG,
                                                    "nepa_config": json.dumps(nepa_cfg)})
    _write_json(d / "config.json", cfg)
    return d
