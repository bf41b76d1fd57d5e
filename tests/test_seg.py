"""NEPA inside mmseg's UPerNet: feature maps and padding, the configs, weights, inference modes, layer decay,
bad input. End-to-end runs (CLI, resume, mmseg's tools/train.py) are in test_seg_run.py."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, require, tiny_kwargs

mmseg = require("mmseg.models", "mmsegmentation with compiled mmcv ops")

from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from backbones.nepa import CheckpointError, NepaViT, save_checkpoint  # noqa: E402
from backbones.nepa.mmseg_backbone import NepaBackbone, align_to_image, default_out_indices  # noqa: E402
from nepa_eval.data import DataError  # noqa: E402
from nepa_eval.data.fashion import make_mosaic  # noqa: E402
from nepa_eval.data.seg import check_seg_root  # noqa: E402

TINY_CFG = ROOT / "seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py"
B_CFG = ROOT / "seg_configs/nepa/nepa-b_upernet_8xb2-160k_ade20k-512x512.py"
L_CFG = ROOT / "seg_configs/nepa/nepa-l_upernet_8xb2-160k_ade20k-512x512.py"
ARCH14 = dict(embed_dim=32, depth=4, num_heads=2, mlp_hidden=64, patch_size=14, rope_rescale=None)


def backbone(**kw):
    torch.manual_seed(0)
    return NepaBackbone(**{"arch": ARCH14, "drop_path_rate": 0.0, **kw}).eval()


# ----------------------------------------------------------------------------------------------
# feature maps, padding, alignment
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw,grid", [((512, 512), (38, 38)), ((518, 518), (38, 38)), ((448, 448), (32, 32)),
                                     ((375, 500), (28, 36)), ((56, 84), (4, 6))])
def test_feature_shapes_for_several_sizes(hw, grid):
    bb = backbone(out_indices=[0, 1, 3])
    with torch.no_grad():
        outs = bb(torch.randn(2, 3, *hw))
    assert len(outs) == 3
    for o in outs:
        assert o.shape == (2, 32, *grid)  # cls stripped, even grid covering the image
        assert torch.isfinite(o).all()


def test_multiple_of_two_patches_is_untouched():
    bb = backbone(out_indices=[1, 3])
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        raw = bb.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        outs = bb(x)
    for r, o in zip(raw, outs):
        assert torch.equal(r, o)


def test_alignment_covers_exactly_the_unpadded_image():
    # a map whose value is the x coordinate (pixels) of each cell centre on the padded 518 input
    p, h = 14, 37
    centres = (torch.arange(h) + 0.5) * p
    feat = centres.view(1, 1, 1, h).expand(1, 1, h, h).contiguous()
    out = align_to_image(feat, (512, 512), p, (38, 38))
    want = (torch.arange(38) + 0.5) * 512 / 38  # output cell centres spread over the 512 real pixels only
    inner = slice(1, -1)  # the outermost centres sit within half a cell of the edge and clamp to it
    torch.testing.assert_close(out[0, 0, 0, inner], want[inner], atol=1e-3, rtol=0)
    assert out[0, 0, 0, -1] < 512 and (out[0, 0, 0, -1] - want[-1]).abs() < p / 2


def test_no_border_pixel_is_lost_and_the_pad_is_not_seen():
    bb = backbone(out_indices=[3])
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        base = bb(x)[0]
        y = x.clone()
        y[..., 505:, 505:] += 5.0  # the last real pixels: inside the padded tokens' area
        moved = bb(y)[0]
    diff = (moved - base).abs().amax(dim=1)[0]
    assert diff[-1, -1] > 1e-3  # bottom-right output cell responds to the bottom-right pixels
    # the output's geometry is the image's: feature pyramid levels tile it exactly
    from mmseg.models.necks import Feature2Pyramid

    neck = Feature2Pyramid(32, rescales=[4, 2, 1, 0.5], norm_cfg=dict(type="BN", requires_grad=True)).eval()
    with torch.no_grad():
        levels = neck([base] * 4)
    assert [tuple(t.shape[-2:]) for t in levels] == [(152, 152), (76, 76), (38, 38), (19, 19)]
    # the base grid is the fewest cells, an even number, of at most one patch (14 px) each that span the 512 px
    # crop (37 patches would not be even, 36 would leave 8 px out); the levels subdivide that same tiling
    n = next(n for n in range(2, 512, 2) if n * 14 >= 512)
    assert base.shape[-2:] == (n, n) == (38, 38)
    assert [t.shape[-1] for t in levels] == [int(n * r) for r in (4, 2, 1, 0.5)]


def test_out_stride_16_gives_maes_grid_and_default_indices():
    assert backbone(out_stride=16)(torch.randn(1, 3, 512, 512))[0].shape[-2:] == (32, 32)
    assert default_out_indices(12) == [3, 5, 7, 11] and default_out_indices(24) == [7, 11, 15, 23]
    assert backbone().out_indices == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        backbone(out_indices=[4])


def test_bidirectional_by_default_causal_on_request():
    x = torch.randn(1, 3, 56, 56)
    y = x.clone()
    y[..., 42:, 42:] += 3.0  # the last patch in raster order
    for causal, first_changes in ((False, True), (True, False)):
        bb = backbone(causal=causal, out_indices=[3], align=False, layerscale_init=None)  # visible mixing
        assert bb.causal is causal
        with torch.no_grad():
            a, b = bb(x)[0], bb(y)[0]
        assert bool((a[..., 0, 0] - b[..., 0, 0]).abs().max() > 1e-5) is first_changes


def test_drop_path_is_linear_over_depth_and_active_in_training():
    bb = backbone(drop_path_rate=0.3)
    assert [round(b.drop_path.p, 3) for b in bb.blocks] == [0.0, 0.1, 0.2, 0.3]
    bb.train()
    x = torch.randn(4, 3, 28, 28)
    torch.manual_seed(1)
    a = bb(x)[-1]
    torch.manual_seed(2)
    assert not torch.allclose(a, bb(x)[-1])


def test_frozen_backbone_has_no_gradients_and_no_drop_path():
    from nepa_eval.layer_decay import LayerDecayOptimWrapperConstructor

    bb = backbone(drop_path_rate=0.3, frozen=True)
    bb.train()  # what the segmentor's runner does every iteration
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    x = torch.randn(2, 3, 28, 28)
    torch.manual_seed(1)
    a = bb(x)[-1]
    torch.manual_seed(2)
    assert torch.equal(a, bb(x)[-1])  # drop path is off
    model = torch.nn.ModuleDict(dict(backbone=bb, head=torch.nn.Conv2d(32, 3, 1)))
    wrapper = LayerDecayOptimWrapperConstructor(
        dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3)), dict(layer_decay_rate=0.65))(model)
    optimised = {id(p) for g in wrapper.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model["head"].parameters()}


# ----------------------------------------------------------------------------------------------
# weights through the door
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(3)
    m = NepaViT(**{**ARCH14, "mlp_type": "swiglu", "causal": True})
    return m, save_checkpoint(m, tmp_path / "tiny.pth")


def test_pretrained_loads_exactly_with_the_checkpoints_architecture(tiny_ckpt):
    """The config states the architecture (`nepa-eval seg --ckpt` writes the checkpoint's into it); the weights
    load in init_weights, exactly; a config that builds a different MLP is refused there, never half-loaded."""
    m, path = tiny_ckpt
    short = NepaBackbone(arch=dict(embed_dim=32, depth=4, num_heads=2, patch_size=14),
                         init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    assert short.cfg.mlp_type == "gelu"  # the constructor reads no file: the arch says gelu
    with pytest.raises(CheckpointError, match="mlp"):
        short.init_weights()
    bb = NepaBackbone(arch={**ARCH14, "mlp_type": "swiglu"}, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    assert bb.causal is False  # bidirectional for dense prediction, whatever the checkpoint was trained with
    bb.init_weights()
    own = bb.state_dict()
    for k, v in m.state_dict().items():
        if not k.startswith("norm."):
            assert torch.equal(own[k], v), k
    assert "final norm not used" in str(bb.load_report)


def test_size_mismatch_is_a_clear_error(tiny_ckpt):
    _, path = tiny_ckpt
    bb = NepaBackbone(arch="base", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(CheckpointError, match=r"checkpoint is a NEPA .*embed_dim 32.* config builds NEPA-base"):
        bb.init_weights()


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}}, path)
    bb = NepaBackbone(arch="base", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(CheckpointError, match="does not look like a NEPA/ViT checkpoint"):
        bb.init_weights()


def test_partial_checkpoint_never_loads_silently(tiny_ckpt, tmp_path):
    m, _ = tiny_ckpt
    sd = {k: v for k, v in m.state_dict().items() if k != "blocks.2.mlp.fc2.weight"}  # one tensor, same depth
    path = tmp_path / "partial.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=r"missing.*blocks\.2\.mlp\.fc2\.weight"):
        bb = NepaBackbone(arch={**ARCH14, "mlp_type": "swiglu"}, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
        bb.init_weights()


def test_missing_file_is_reported_at_init_weights(tmp_path):
    bb = NepaBackbone(arch=ARCH14, init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "nope.pth")))
    with pytest.raises(CheckpointError, match="not found"):
        bb.init_weights()


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------
def test_b_and_l_configs_inherit_the_mae_anchor_recipe():
    b, l_ = Config.fromfile(str(B_CFG)), Config.fromfile(str(L_CFG))
    assert b.model.backbone.type == "NepaBackbone" and b.model.backbone.out_indices == [3, 5, 7, 11]
    assert l_.model.backbone.arch == "large" and l_.model.backbone.out_indices == [7, 11, 15, 23]
    assert l_.model.decode_head.in_channels == [1024] * 4 and l_.model.neck.embed_dim == 1024
    assert b.model.decode_head.type == "UPerHead" and b.model.auxiliary_head.type == "FCNHead"
    assert b.model.decode_head.num_classes == 150 and b.model.neck.rescales == [4, 2, 1, 0.5]
    assert b.model.test_cfg == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    assert b.train_dataloader.dataset.type == "ADE20KDataset" and b.train_dataloader.batch_size == 2
    assert b.train_cfg.max_iters == 160000
    assert b.optim_wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert b.param_scheduler == []
    hook = [h for h in b.custom_hooks if h.type == "LayerDecayLRHook"][0]
    assert (hook.warmup, hook.schedule, hook.power) == (1500, "poly", 1.0)
    pw = b.optim_wrapper.paramwise_cfg
    assert (pw.layer_decay_rate, pw.layer_decay_rate_end, pw.layer_decay_ramp) == (0.65, None, "constant")
    assert "backbones.nepa.mmseg_backbone" in b.custom_imports.imports
    whole = Config.fromfile(str(B_CFG).replace(".py", "_whole.py"))
    assert whole.model.test_cfg == dict(mode="whole")


def test_a_user_config_can_inherit_ours(tmp_path):
    user = tmp_path / "mine.py"
    user.write_text(f"_base_ = ['{B_CFG}']\nmodel = dict(backbone=dict(causal=True), decode_head=dict(num_classes=59))\n")
    cfg = Config.fromfile(str(user))
    assert cfg.model.backbone.causal is True and cfg.model.backbone.type == "NepaBackbone"
    assert cfg.model.decode_head.num_classes == 59 and cfg.model.decode_head.channels == 768


def test_seg_inputs_are_normalised_as_in_pretraining():
    """mmseg's MAE model file normalises with ImageNet's statistics; NEPA's weights were learned on pixels
    normalised with mean = std = 0.5 (the pretraining transform's defaults). Every seg config must feed the
    backbone what the pretraining transform feeds it, pixel for pixel."""
    from mmseg.models.data_preprocessor import SegDataPreProcessor

    from nepa_eval.data.transforms import build_transform

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
    want = build_transform("resize", img_size=28)(Image.fromarray(img))  # what pretraining sees (no resampling at 28)
    for path in (B_CFG, L_CFG, TINY_CFG):
        pre_cfg = Config.fromfile(str(path)).model.data_preprocessor.to_dict()
        assert pre_cfg.pop("type") == "SegDataPreProcessor"
        pre_cfg.pop("size", None)
        pre = SegDataPreProcessor(**{**pre_cfg, "bgr_to_rgb": False})  # the image is already RGB here
        got = pre(dict(inputs=[torch.from_numpy(img).permute(2, 0, 1).contiguous()]), training=False)["inputs"][0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=f"{path.name} normalises differently")


# ----------------------------------------------------------------------------------------------
# the segmentor: inference modes and layer-decay groups
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_segmentor():
    init_default_scope("mmseg")
    cfg = Config.fromfile(str(TINY_CFG))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return cfg, model.eval()


def _predict(model, x, test_cfg):
    from mmseg.structures import SegDataSample

    model.test_cfg = Config(test_cfg)
    metas = [dict(img_shape=x.shape[-2:], ori_shape=x.shape[-2:], pad_shape=x.shape[-2:], padding_size=[0] * 4)]
    with torch.no_grad():
        logits = model.inference(x, metas)
        res = model.predict(x, [SegDataSample(metainfo=metas[0])])
    return logits, res[0].pred_sem_seg.data


def test_slide_and_whole_inference(tiny_segmentor):
    _, model = tiny_segmentor
    x = torch.randn(1, 3, 70, 98)  # not a multiple of the patch (4 x 2) anywhere
    whole, pred = _predict(model, x, dict(mode="whole"))
    assert whole.shape == (1, 11, 70, 98) and pred.shape == (1, 70, 98)
    one_window, _ = _predict(model, x, dict(mode="slide", crop_size=(128, 128), stride=(85, 85)))
    torch.testing.assert_close(one_window, whole)  # a window larger than the image is the whole image
    slide, pred = _predict(model, x, dict(mode="slide", crop_size=(56, 56), stride=(37, 37)))
    assert slide.shape == whole.shape and pred.shape == (1, 70, 98) and torch.isfinite(slide).all()
    assert not torch.allclose(slide, whole)  # the windows really were different crops


def test_layer_decay_groups_of_the_segmentor(tiny_segmentor):
    from mmengine.optim import build_optim_wrapper

    import nepa_eval.layer_decay  # noqa: F401 (registers the constructor)

    cfg, model = tiny_segmentor
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    lr, rate, L = cfg.optim_wrapper.optimizer.lr, 0.65, 4
    by_name = {}
    for g in ow.optimizer.param_groups:
        for p in g["params"]:
            by_name[id(p)] = g
    named = dict(model.named_parameters())
    # mmseg's exponents (its MAE recipe): embeddings L + 1, block i L - i, everything above the blocks 0
    expect = {"backbone.patch_embed.proj.weight": rate ** (L + 1), "backbone.cls_token": rate ** (L + 1),
              "backbone.blocks.0.attn.qkv.weight": rate ** L, "backbone.blocks.3.mlp.fc1.weight": rate,
              "decode_head.conv_seg.weight": 1.0, "neck.upsample_2x.0.weight": 1.0,
              "auxiliary_head.conv_seg.weight": 1.0}
    for name, scale in expect.items():
        g = by_name[id(named[name])]
        assert g["lr"] == pytest.approx(lr * scale), name
    assert by_name[id(named["backbone.cls_token"])]["weight_decay"] == 0.0
    assert by_name[id(named["backbone.blocks.0.attn.qkv.weight"])]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in ow.optimizer.param_groups) == len(named)


# ----------------------------------------------------------------------------------------------
# data and bad input
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    from conftest import require_fashion

    require_fashion()
    return make_mosaic(tmp_path_factory.mktemp("mosaic"), n_train=12, n_val=4, seed=1)


def test_mosaic_layout_and_labels(mosaic):
    assert check_seg_root(mosaic.parent, 11, False) == {"training": 12, "validation": 4}
    ann = np.array(Image.open(sorted((mosaic / "annotations/training").glob("*.png"))[0]))
    img = Image.open(sorted((mosaic / "images/training").glob("*.jpg"))[0])
    assert ann.shape == (56, 56) and img.size == (56, 56) and img.mode == "RGB"
    assert ann.max() <= 10 and (ann == 0).any() and (ann > 0).any()
    assert json.loads((mosaic / "mosaic.json").read_text())["reduce_zero_label"] is False


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_data_roots(mosaic, tmp_path):
    with pytest.raises(DataError, match="not in the ADE20K layout"):
        check_seg_root(tmp_path, 11, False)
    d = _copy(mosaic, tmp_path / "a" / "ADEChallengeData2016")
    (d / "annotations/validation").rename(d / "annotations/val")
    with pytest.raises(DataError, match="missing folder .*annotations/validation"):
        check_seg_root(d.parent, 11, False)
    d = _copy(mosaic, tmp_path / "b" / "ADEChallengeData2016")
    victim = sorted((d / "annotations/training").glob("*.png"))[2]
    victim.unlink()
    with pytest.raises(DataError, match=f"1 of 12 images .*have no annotation.*{victim.stem}"):
        check_seg_root(d.parent, 11, False)
    d = _copy(mosaic, tmp_path / "c" / "ADEChallengeData2016")
    bad = sorted((d / "annotations/validation").glob("*.png"))[1]
    arr = np.array(Image.open(bad))
    arr[0, :3] = [11, 40, 255]  # 255 is the ignore value and allowed; 11 and 40 are not classes
    Image.fromarray(arr).save(bad)
    with pytest.raises(DataError, match=r"values \[11, 40\] are outside the 11 classes"):
        check_seg_root(d.parent, 11, False)
    assert check_seg_root(d.parent, 40, True)  # as ADE20K-style labels (0..40, 0 unlabelled) they are fine
    Image.fromarray(np.stack([arr] * 3, -1)).save(bad)
    with pytest.raises(DataError, match="single-channel"):
        check_seg_root(d.parent, 11, False)


def test_reading_a_checkpoint_keeps_the_registered_safe_globals(tiny_ckpt):
    from backbones.nepa import register_safe_globals
    from backbones.nepa.checkpoint import read_torch_file

    register_safe_globals()
    before = len(torch.serialization.get_safe_globals())
    read_torch_file(tiny_ckpt[1])  # mmengine's resume after this must still find HistoryBuffer allowed
    assert len(torch.serialization.get_safe_globals()) == before


VOC = Path(os.environ.get("NEPA_LABELME_VOC", Path.home() / ".cache/nepa-eval/labelme/data_dataset_voc"))


def test_real_voc_photos_run_through_inference(tmp_path):
    """Smoke: labelme's three Pascal VOC photos (GPL archive, used as inputs only, never committed) through the
    B config's test path (ADE test pipeline, slide 512/341, and whole) with a small random 21-class segmentor."""
    if not (VOC / "JPEGImages").is_dir():
        pytest.fail(f"labelme's VOC photos are missing: not at {VOC} (scripts/setup.sh fetches them): pip download --no-deps --no-binary :all: labelme==6.3.1, untar, "
                    "and point NEPA_LABELME_VOC at examples/semantic_segmentation/data_dataset_voc")
    import shutil

    from mmengine.model import revert_sync_batchnorm
    from mmengine.runner import load_checkpoint
    from mmseg.apis import inference_model, init_model

    from nepa_eval.tasks.seg import load_segmentor, set_inference

    root = tmp_path / "voc" / "ADEChallengeData2016"
    for sub, src, ext in (("images", "JPEGImages", "jpg"), ("annotations", "SegmentationClass", "png")):
        (root / sub / "validation").mkdir(parents=True)
        for f in sorted((VOC / src).glob(f"*.{ext}")):
            shutil.copy(f, root / sub / "validation")
    assert check_seg_root(root.parent, 21, False, splits=("validation",)) == {"validation": 3}
    cfg_path = tmp_path / "voc_tiny.py"
    cfg_path.write_text(
        f"_base_ = ['{B_CFG}']\n"
        f"model = dict(backbone=dict(arch=dict(_delete_=True, **{ARCH14!r}), out_indices=[0, 1, 2, 3], drop_path_rate=0.0),\n"
        "    neck=dict(embed_dim=32), decode_head=dict(in_channels=[32] * 4, channels=16, num_classes=21),\n"
        "    auxiliary_head=dict(in_channels=32, channels=8, num_classes=21))\n")
    init_default_scope("mmseg")
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(cfg_path)).model)
    ckpt = tmp_path / "seg.pth"
    torch.save({"meta": {}, "state_dict": model.state_dict()}, ckpt)
    photos = sorted(str(p) for p in (root / "images" / "validation").glob("*.jpg"))
    for mode in ("config", "whole"):  # the config's slide 512/341 after its resize to 512 short side, then whole
        cfg = Config.fromfile(str(cfg_path))  # mmseg's own inference API on the trained segmentor (SyncBN -> BN)
        cfg.model.backbone.init_cfg = None
        set_inference(cfg, None if mode == "config" else "whole")
        seg_model = init_model(cfg, None, device="cpu")
        load_segmentor(lambda p, strict: load_checkpoint(seg_model, p, map_location="cpu", strict=strict), str(ckpt))
        seg_model = revert_sync_batchnorm(seg_model).eval()
        preds = [r.pred_sem_seg.data[0].cpu() for r in (inference_model(seg_model, img) for img in photos)]
        for photo, pred in zip(photos, preds):
            w, h = Image.open(photo).size
            assert pred.shape == (h, w) and int(pred.max()) < 21
