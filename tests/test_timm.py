"""timm's model contract for every registered NEPA size."""
import pytest
import timm
import torch

import backbones  # noqa: F401  registers the models
from backbones.nepa import save_checkpoint

NAMES = [f"nepa_{s}_patch{p}_224" for s in ("tiny", "small", "base", "large") for p in (14, 16)]
SMALL = dict(depth=2)  # contract checks on 2 blocks of the real width keep the suite fast


def test_all_registered():
    assert set(NAMES) <= set(timm.list_models("nepa_*"))


@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=4, **SMALL).eval()
    p = m.patch_size
    x = torch.randn(2, 3, 2 * p, 3 * p)
    feats = m.forward_features(x)
    assert feats.shape == (2, 1 + 6, m.num_features)
    assert m.forward_head(feats, pre_logits=True).shape == (2, m.num_features)
    assert m.forward_head(feats).shape == (2, 4)
    assert m.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    # forward_intermediates agrees with forward_features
    final, inter = m.forward_intermediates(x, indices=[0, 1])
    torch.testing.assert_close(final, feats)
    assert [t.shape for t in inter] == [(2, m.num_features, 2, 3)] * 2
    # grad checkpointing does not change outputs
    m.train()
    torch.manual_seed(1)
    a = m.forward_features(x)
    m.set_grad_checkpointing(True)
    torch.manual_seed(1)
    torch.testing.assert_close(m.forward_features(x), a)
    m.reset_classifier(7)
    assert m.get_classifier().out_features == 7 and m.num_classes == 7
    assert m.get_classifier().weight.abs().sum() == 0  # zero-initialised head
    m.reset_classifier(0)
    assert m(x).shape == (2, m.num_features)
    assert {"cls_token"} <= m.no_weight_decay()


def test_group_matcher_orders_layers():
    from timm.models import group_parameters

    m = timm.create_model("nepa_tiny_patch14_224", depth=3)
    groups = group_parameters(m, m.group_matcher())
    assert groups[0] == [n for n in ("cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias")]
    assert all(n.startswith("blocks.0.") for n in groups[1])
    assert "norm.weight" in groups[3] and all(n.startswith(("blocks.2.", "norm.")) for n in groups[3])


def test_default_pool_is_patch_mean_and_head():
    m = timm.create_model("nepa_tiny_patch14_224", depth=1, num_classes=3).eval()
    x = torch.randn(1, 3, 28, 28)
    feats = m.forward_features(x)
    pooled = m.fc_norm(feats[:, 1:].mean(1))
    torch.testing.assert_close(m.forward_head(feats, pre_logits=True), pooled)


def test_features_only():
    fm = timm.create_model("nepa_tiny_patch14_224", features_only=True, out_indices=(3, 5, 7, 11))
    outs = fm(torch.randn(1, 3, 56, 56))
    assert [o.shape for o in outs] == [(1, 192, 4, 4)] * 4
    assert fm.feature_info.reduction() == [14] * 4


@pytest.mark.parametrize("fmt", ["hf_dir", "ours"])
def test_pretrained_from_local_file(official_dir, tmp_path, fmt):
    arch = dict(embed_dim=128, depth=2, num_heads=2, mlp_hidden=512)
    path = official_dir / "nepa_tiny_cls_bidirectional"
    if fmt == "ours":
        from backbones.nepa import from_pretrained

        path = save_checkpoint(from_pretrained(path, verbose=False), tmp_path / "c.pth")
    m = timm.create_model("nepa_tiny_patch14_224", pretrained=True, num_classes=10,
                          pretrained_cfg_overlay=dict(file=str(path)), **arch)
    assert m.load_report.loaded == len(m.state_dict())
    from safetensors.torch import load_file

    exp = load_file(str(official_dir / "nepa_tiny_cls_bidirectional" / "expected.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(exp["pixel_values"]), exp["logits"], atol=1e-4, rtol=0)


def test_filter_fn_maps_release_and_wrapped_state_dicts(official_dir):
    """The hub/url path (checkpoint_filter_fn) maps the same formats as the weight door."""
    from safetensors.torch import load_file

    from backbones.nepa.timm_models import checkpoint_filter_fn

    d = official_dir / "nepa_tiny_cls_bidirectional"
    sd = load_file(str(d / "model.safetensors"))
    exp = load_file(str(d / "expected.safetensors"))
    m = timm.create_model("nepa_tiny_patch14_224", embed_dim=128, depth=2, num_heads=2, mlp_hidden=512, num_classes=10)
    for obj in (sd, {"model": sd}, {"state_dict": {"module." + k: v for k, v in sd.items()}}):
        m.load_state_dict(checkpoint_filter_fn(obj, m), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(m.eval()(exp["pixel_values"]), exp["logits"], atol=1e-4, rtol=0)


def test_load_pretrained_is_the_models_own_method(official_dir):
    """NepaViT.load_pretrained (what timm's custom_load calls) goes through the weight door and reports."""
    from backbones.nepa import CheckpointError, NepaViT
    from backbones.nepa.model import NepaViT as ModelClass

    assert NepaViT.load_pretrained is ModelClass.__dict__["load_pretrained"]
    m = timm.create_model("nepa_tiny_patch14_224", embed_dim=128, depth=2, num_heads=2, mlp_hidden=512, num_classes=7)
    report = m.load_pretrained(official_dir / "nepa_tiny_cls_bidirectional")
    assert report is m.load_report and "head newly initialised" in str(report)
    assert report.loaded == len(m.state_dict()) - 2  # all but the 7-class head
    with pytest.raises(CheckpointError, match="missing"):
        timm.create_model("nepa_tiny_patch14_224", embed_dim=128, depth=3, num_heads=2, mlp_hidden=512).load_pretrained(
            official_dir / "nepa_tiny_cls_bidirectional")


def test_missing_qk_norm_is_one_rule_for_the_door_and_the_filter(official_dir):
    """The hub path (checkpoint_filter_fn) and the weight door fill absent QK-norm weights the same way."""
    from safetensors.torch import load_file

    from backbones.nepa.checkpoint import fill_missing_qk_norm, load_state_dict_into, to_nepa_state_dict, unwrap_state_dict
    from backbones.nepa.timm_models import checkpoint_filter_fn

    sd = load_file(str(official_dir / "nepa_tiny_pretrain_causal" / "model.safetensors"))
    sd = {k: v for k, v in sd.items() if "_norm.weight" not in k or "attention.attention" not in k}
    arch = dict(embed_dim=128, depth=2, num_heads=2, mlp_hidden=512, num_classes=0)
    a, b = (timm.create_model("nepa_tiny_patch14_224", **arch) for _ in range(2))
    for m in (a, b):
        with torch.no_grad():
            for blk in m.blocks:
                blk.attn.q_norm.weight.fill_(5.0)
    a.load_state_dict(checkpoint_filter_fn(sd, a), strict=True)
    ours, notes = to_nepa_state_dict(unwrap_state_dict(sd))
    report = load_state_dict_into(b, ours, "release", "hf", notes)
    assert "4 QK-norm weights missing" in str(report)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.all(a.blocks[1].attn.k_norm.weight == 1)
    filled = {}
    assert fill_missing_qk_norm(filled, {"blocks.0.attn.q_norm.weight": torch.zeros(3), "x": torch.zeros(1)}) == [
        "blocks.0.attn.q_norm.weight"]
    assert filled["blocks.0.attn.q_norm.weight"].tolist() == [1.0] * 3


def test_patch14_models_take_any_size():
    """timm's cfg says fixed_input_size=False: timm-built models pad to the patch (timm's dynamic_img_pad)."""
    m = timm.create_model("nepa_tiny_patch14_224", depth=1).eval()
    assert m.patch_embed.pad
    assert m.forward_features(torch.randn(1, 3, 96, 128)).shape == (1, 1 + 7 * 10, 192)  # 98 x 140 after padding
    x = torch.randn(1, 3, 112, 126)  # multiples of 14: nothing padded, the same numbers as a non-padding model
    strict = timm.create_model("nepa_tiny_patch14_224", depth=1, pad_to_patch=False).eval()
    strict.load_state_dict(m.state_dict())
    torch.testing.assert_close(strict(x), m(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
        strict(torch.randn(1, 3, 96, 128))


def test_fx_feature_extraction_with_timm_notrace_helpers():
    """torch.fx traces the models with timm's tracer settings: shape checks and padding are one leaf call."""
    from timm.models import create_feature_extractor, get_graph_node_names

    m = timm.create_model("nepa_tiny_patch14_224", depth=3, drop_path_rate=0.1).eval()
    train_nodes, eval_nodes = get_graph_node_names(m)  # traces train mode (drop path) and eval mode
    assert "patch_embed.check_and_pad" in eval_nodes and "patch_embed.check_and_pad" in train_nodes
    fx = create_feature_extractor(m, {"blocks.1": "b1", "norm": "out"})
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        out = fx(x)
        _, (b1,) = m.forward_intermediates(x, indices=[1], output_fmt="NLC")
        torch.testing.assert_close(out["out"], m.forward_features(x))
        torch.testing.assert_close(out["b1"][:, 1:], b1)
        torch.testing.assert_close(torch.jit.script(fx)(x)["out"], out["out"])
    with pytest.raises(ValueError, match="3 input channels"):  # the leaf still checks at run time
        fx(torch.randn(1, 1, 28, 28))
