"""Checkpoints of other model families are named for what they are and refused; genuine NEPA ones are not.

The foreign state dicts come from timm's own models, built small with pretrained=False (their real key names and
shapes); the release-style layouts timm converts from (DINOv2's mask/register tokens, MAE's decoder) are those
models' state dicts with the extra keys those releases carry."""
import json

import pytest
import torch

from backbones.nepa import CheckpointError, NepaViT, from_pretrained, save_checkpoint
from backbones.nepa.checkpoint import identify_foreign, read_checkpoint, to_nepa_state_dict
from conftest import require, tiny_kwargs
from nepa_eval.cli import main as cli

timm = require("timm", "timm")
SMALL = dict(depth=1, embed_dim=64, num_heads=2)


def timm_sd(name: str, **kw) -> dict[str, torch.Tensor]:
    return timm.create_model(name, pretrained=False, **kw).state_dict()


def mae_pretraining() -> dict:
    """The MAE release's pretraining checkpoint: {'model': encoder (timm ViT names) + mask_token + decoder_*}."""
    sd = timm_sd("vit_base_patch16_224.mae", **SMALL)
    dec = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, embed_dim=32, num_heads=1).state_dict()
    sd["mask_token"] = torch.zeros(1, 1, 32)
    sd["decoder_embed.weight"], sd["decoder_embed.bias"] = torch.zeros(32, 64), torch.zeros(32)
    sd["decoder_pos_embed"] = torch.zeros(1, 197, 32)
    sd.update({"decoder_" + k: v for k, v in dec.items() if k.startswith("blocks.")})
    sd["decoder_norm.weight"], sd["decoder_norm.bias"] = dec["norm.weight"], dec["norm.bias"]
    sd["decoder_pred.weight"], sd["decoder_pred.bias"] = torch.zeros(768, 32), torch.zeros(768)
    return {"model": sd}


def dinov2_release() -> dict:
    """The facebookresearch DINOv2 layout: timm's names plus the (1, D) mask token and register_tokens."""
    sd = timm_sd("vit_small_patch14_reg4_dinov2", **SMALL)
    sd["register_tokens"] = sd.pop("reg_token")
    sd["mask_token"] = torch.zeros(1, 64)
    return sd


FAMILIES = {
    "timm_vit": (lambda: timm_sd("vit_tiny_patch16_224", depth=1),
                 r"a timm ViT / DeiT state dict .*pos_embed \(1, 197, 192\).*no QK-norm, no LayerScale"),
    "deit_distilled": (lambda: timm_sd("deit_tiny_distilled_patch16_224", depth=1), r"DeiT distilled.*dist_token"),
    "deit3_classifier": (lambda: timm_sd("deit3_small_patch16_224", **SMALL), r"DeiT III classifier"),
    "mae": (mae_pretraining, r"an MAE pretraining checkpoint.*decoder"),
    "eva02": (lambda: timm_sd("eva02_tiny_patch14_224", depth=1), r"EVA / EVA02 state dict.*q_bias/v_bias"),
    "eva02_unfused": (lambda: timm_sd("eva02_tiny_patch14_224", depth=1, qkv_fused=False, scale_mlp=True),
                      r"EVA / EVA02.*q_proj/k_proj/v_proj.*fc1_g/fc1_x"),
    "dinov2_timm": (lambda: timm_sd("vit_small_patch14_dinov2", **SMALL),
                    r"DINOv2 state dict.*pos_embed \(1, 1370, 64\)"),
    "dinov2_registers_timm": (lambda: timm_sd("vit_small_patch14_reg4_dinov2", **SMALL), r"DINOv2.*register tokens"),
    "dinov2_release": (dinov2_release, r"DINOv2.*register tokens, a mask token \(1, 64\)"),
    "beit": (lambda: timm_sd("beit_base_patch16_224", **SMALL), r"a BEiT state dict.*relative position bias"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_foreign_family_is_named_and_refused(family, tmp_path):
    build, what = FAMILIES[family]
    path = tmp_path / f"{family}.pth"
    torch.save(build(), path)
    with pytest.raises(CheckpointError, match=what) as e:
        from_pretrained(path, verbose=False)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "not a NEPA backbone" in msg and "SixAILab/nepa-" in msg
    assert "vs (1," not in msg  # never the old shape complaint about a 'NEPA' it is not


def test_inspect_names_a_timm_vit_and_an_eva02(tmp_path, capsys):
    for name, what in (("vit_tiny_patch16_224", "a timm ViT / DeiT state dict"), ("eva02_tiny_patch14_224", "EVA02")):
        path = tmp_path / f"{name}.safetensors"
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in timm_sd(name, depth=1).items()}, str(path))
        assert cli(["inspect", str(path)]) == 2
        err = capsys.readouterr().err
        assert what in err and "not a NEPA backbone" in err and "Traceback" not in err


def test_wrapped_foreign_state_dicts_are_named_too(tmp_path):
    sd = timm_sd("vit_tiny_patch16_224", depth=1)
    for obj in ({"state_dict": {"module." + k: v for k, v in sd.items()}}, {"model": sd},
                {"meta": {}, "state_dict": {"backbone." + k: v for k, v in sd.items()}}):
        torch.save(obj, tmp_path / "w.pth")
        with pytest.raises(CheckpointError, match="timm ViT / DeiT"):
            from_pretrained(tmp_path / "w.pth", verbose=False)


def test_a_transformers_model_of_another_type_is_named(tmp_path):
    d = tmp_path / "dinov2-small"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "dinov2", "hidden_size": 64}))
    from safetensors.torch import save_file

    save_file({"embeddings.cls_token": torch.zeros(1, 1, 64), "embeddings.mask_token": torch.zeros(1, 64),
               "embeddings.position_embeddings": torch.zeros(1, 257, 64),
               "embeddings.patch_embeddings.projection.weight": torch.zeros(64, 3, 14, 14),
               "encoder.layer.0.layer_scale1.lambda1": torch.zeros(64)}, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="Hugging Face transformers 'dinov2' model.*not a NEPA backbone"):
        from_pretrained(d, verbose=False)


def test_timm_filter_refuses_a_foreign_state_dict():
    """timm's hub/url path (checkpoint_filter_fn) goes through the same door."""
    from backbones.nepa.timm_models import checkpoint_filter_fn

    m = timm.create_model("nepa_tiny_patch16_224", depth=1)
    with pytest.raises(CheckpointError, match="timm ViT / DeiT"):
        checkpoint_filter_fn(timm_sd("vit_tiny_patch16_224", depth=1), m)


# ----------------------------------------------------------------------------------------------
# genuine NEPA checkpoints are never caught
# ----------------------------------------------------------------------------------------------
VARIANTS = [dict(), dict(pos_embed="abs", qk_norm=False, layerscale_init=None),
            dict(pos_embed="rope+abs", qk_norm=False), dict(pos_embed="abs", class_token=False),
            dict(mlp_type="swiglu", num_classes=5), dict(pos_embed="abs", qk_norm=False, num_classes=5,
                                                         global_pool="token"),
            dict(patch_size=14, img_size=56, qk_norm_affine=False)]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_nepa_variants_are_not_foreign(variant, tmp_path):
    torch.manual_seed(0)
    model = NepaViT(**tiny_kwargs(**variant))
    sd = model.state_dict()
    assert identify_foreign(sd) is None
    assert identify_foreign({**sd, "mask_token": torch.zeros(1, 1, 32)}) is None  # the objective's
    save_checkpoint(model, tmp_path / "ours.safetensors")
    assert from_pretrained(tmp_path / "ours.safetensors", verbose=False).num_classes == model.num_classes
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "plain.pth")
    sd2, _ = to_nepa_state_dict(read_checkpoint(tmp_path / "plain.pth"))
    assert sd2.keys() == sd.keys()


def test_release_fixtures_are_not_foreign(official_dir):
    for name in ("nepa_tiny_cls_bidirectional", "nepa_tiny_pretrain_causal"):
        raw = read_checkpoint(official_dir / name)
        raw.hf_config = None  # judged by the tensors alone, without the config's model_type
        to_nepa_state_dict(raw)
