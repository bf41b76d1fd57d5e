"""Weights out: `nepa-eval convert --format hf|timm` against the release's own files, timm, and our runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import ROOT, needs_fashion, tiny_kwargs
from backbones.nepa import NepaViT, from_pretrained, save_checkpoint
from nepa_eval.cli import main as cli

FIXTURE_FILES = ("config.json", "model.safetensors")  # what the release's save_pretrained writes


def tensors_and_meta(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


def features(model: NepaViT, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x) if model.num_classes else model.forward_features(x)


# ----------------------------------------------------------------------------------------------
# the release's own directories, written back
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nepa_tiny_pretrain_causal", "nepa_tiny_cls_bidirectional"])
def test_release_fixture_round_trips_exactly(official_dir, tmp_path, name):
    src, out = official_dir / name, tmp_path / "hf"
    assert cli(["convert", str(src), str(out), "--format", "hf"]) == 0
    # the same files, the same keys / shapes / dtypes / values, the same transformers metadata
    assert sorted(p.name for p in out.iterdir()) == sorted(FIXTURE_FILES)
    ours, our_meta = tensors_and_meta(out / "model.safetensors")
    theirs, their_meta = tensors_and_meta(src / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for k, v in theirs.items():
        assert ours[k].shape == v.shape and ours[k].dtype == v.dtype, k
        assert torch.equal(ours[k], v), k
    assert our_meta == their_meta == {"format": "pt"}
    # every config field and value, unknown ones (pos_embed_jitter, initializer_range, ...) kept
    assert json.loads((out / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    for f in FIXTURE_FILES:  # and written as transformers writes them: byte for byte
        assert (out / f).read_bytes() == (src / f).read_bytes(), f
    # the same model held in nepa-eval's own format (no config.json to copy from) gives the same directory
    mid, out2 = tmp_path / "ours.safetensors", tmp_path / "hf2"
    assert cli(["convert", str(src), str(mid)]) == 0 and cli(["convert", str(mid), str(out2), "--format", "hf"]) == 0
    for f in FIXTURE_FILES:
        assert (out2 / f).read_bytes() == (src / f).read_bytes(), f

    # read back through the door: the fixture's own outputs, bit for bit the same as from the fixture itself
    exp = load_file(str(src / "expected.safetensors"))
    back, direct = from_pretrained(out, verbose=False), from_pretrained(src, verbose=False)
    assert back.causal == direct.causal and back.num_classes == direct.num_classes
    x = exp["pixel_values"]
    assert torch.equal(features(back, x), features(direct, x))
    ref = exp["logits"] if "logits" in exp else exp["last_hidden_state"]
    torch.testing.assert_close(features(back, x), ref, atol=1e-4, rtol=0)  # the release's outputs (test_parity)


def test_export_of_a_changed_release_config_is_written_from_the_model(official_dir, tmp_path):
    """The fields come from the model, not copied from the source: a causal pretraining model exported after a
    bidirectional override says so, and the release's unknown fields still ride along."""
    src = official_dir / "nepa_tiny_pretrain_causal"
    cfg = json.loads((src / "config.json").read_text())
    cfg["pos_embed_jitter"] = 0.25  # a release field nepa-eval does not model
    cfg["some_future_field"] = [1, 2]
    d = tmp_path / "src"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    from backbones.nepa.export import save_hf

    m = from_pretrained(d, verbose=False, causal=False)
    out = save_hf(m, tmp_path / "hf", base=cfg)
    got = json.loads((out / "config.json").read_text())
    assert got["is_causal"] is False and got["pos_embed_jitter"] == 0.25 and got["some_future_field"] == [1, 2]
    assert got["architectures"] == ["ViTNepaForPreTraining"] and "id2label" not in got


# ----------------------------------------------------------------------------------------------
# our own models
# ----------------------------------------------------------------------------------------------
def test_gated_mlp_without_layerscale_and_qkv_bias_round_trips(tmp_path):
    torch.manual_seed(1)
    m = NepaViT(**tiny_kwargs(mlp_type="swiglu", layerscale_init=None, qkv_bias=False, qk_norm_affine=False,
                              norm_eps=1e-6, rope_rescale=1.5, causal=True)).eval()
    ck = save_checkpoint(m, tmp_path / "m.safetensors")
    out = tmp_path / "hf"
    assert cli(["convert", str(ck), str(out), "--format", "hf"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["use_gated_mlp"] is True and cfg["hidden_act"] == "silu" and cfg["intermediate_size"] == 64
    assert cfg["qkv_bias"] is False and cfg["qk_norm_affine"] is False and cfg["layer_norm_eps"] == 1e-6
    assert cfg["pos_embed_rescale"] == 1.5 and cfg["is_causal"] is True and cfg["layerscale_value"] == 1.0
    sd = load_file(str(out / "model.safetensors"))
    assert sd["vit_nepa.encoder.layer.0.intermediate.gate_proj.weight"].shape == (64, 32)
    assert not any(k.endswith(("query.bias", "q_norm.weight")) for k in sd)
    # no LayerScale: the release's lambdas of one, the same function
    assert torch.equal(sd["vit_nepa.encoder.layer.1.output.layer_scale.lambda1"], torch.ones(32))
    back = from_pretrained(out, verbose=False)
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(features(back, x), features(m, x))


@pytest.mark.parametrize("change, field", [
    (dict(pos_embed="abs"), "pos_embed"),
    (dict(pos_embed="rope+abs"), "pos_embed"),
    (dict(pos_embed="none"), "pos_embed"),
    (dict(class_token=False), "class_token"),
    (dict(final_norm=False), "final_norm"),
    (dict(img_size=30), "img_size"),
    (dict(num_classes=5, global_pool="token"), "global_pool"),
])
def test_what_the_release_cannot_express_is_refused(tmp_path, capsys, change, field):
    ck = save_checkpoint(NepaViT(**tiny_kwargs(**change)), tmp_path / "m.safetensors")
    out = tmp_path / "hf"
    assert cli(["convert", str(ck), str(out), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert f"{field}=" in err and "--format nepa-eval" in err, err
    assert not out.exists()  # nothing half-written
    # the same model is fine in nepa-eval's own format
    assert cli(["convert", str(ck), str(tmp_path / "ok.safetensors")]) == 0


def test_a_file_name_for_a_directory_format_is_an_error(tmp_path, capsys):
    ck = save_checkpoint(NepaViT(**tiny_kwargs()), tmp_path / "m.safetensors")
    assert cli(["convert", str(ck), str(tmp_path / "x.safetensors"), "--format", "hf"]) == 2
    assert "give a directory" in capsys.readouterr().err


def test_help_shows_the_three_formats_with_an_example_each(capsys):
    with pytest.raises(SystemExit):
        cli(["convert", "--help"])
    text = capsys.readouterr().out
    assert "{nepa-eval,hf,timm}" in text
    examples = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("nepa-eval convert ")]
    assert len(examples) == 3
    assert not any("--format" in e for e in examples[:1]) and "--format hf" in examples[1] and "--format timm" in examples[2]


@needs_fashion
def test_pretraining_run_exported_to_hf_gives_the_same_features(tmp_path):
    wd = tmp_path / "run"
    opts = ["model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2",
            "model.backbone.mlp_hidden=64", "train_dataloader.batch_size=8", "train_dataloader.num_workers=0",
            "train_dataloader.persistent_workers=False", "train_dataloader.dataset.limit=16", "knn_train.limit=20",
            "knn_test.limit=10", "train_cfg.max_iters=2", "default_hooks.checkpoint.interval=2",
            "default_hooks.ema.momentum=0.5"]
    assert cli(["pretrain", "--config", "cls_configs/pretrain/nepa_tiny_fmnist.py", "--work-dir", str(wd),
                "--cfg-options", *opts]) == 0
    x = torch.randn(2, 3, 28, 28)
    for src, ema in ((wd / "backbone.safetensors", False), (wd / "iter_2.pth", True)):
        out = tmp_path / f"hf_{ema}"
        assert cli(["convert", str(src), str(out), "--format", "hf"] + (["--ema"] if ema else [])) == 0
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["architectures"] == ["ViTNepaForPreTraining"] and cfg["model_type"] == "vit_nepa"
        assert cfg["is_causal"] is True and cfg["hidden_size"] == 32 and cfg["image_size"] == 28
        assert all(k.startswith("vit_nepa.") for k in load_file(str(out / "model.safetensors")))
        ref = from_pretrained(wd / ("backbone_ema.safetensors" if ema else "backbone.safetensors"), verbose=False)
        back = from_pretrained(out, verbose=False)
        assert back.causal and torch.equal(features(back, x), features(ref, x))
    raw, ema = (load_file(str(tmp_path / f"hf_{e}" / "model.safetensors")) for e in (False, True))
    assert not torch.equal(raw["vit_nepa.layernorm.weight"], ema["vit_nepa.layernorm.weight"])  # --ema took the EMA


@needs_fashion
def test_classifier_run_export_names_its_classes(tmp_path):
    """A fine-tuning run's checkpoint -> ViTNepaForImageClassification with the run's class names."""
    cfg = tmp_path / "cfg.py"
    bb = dict(tiny_kwargs(), causal=False, drop_path_rate=0.0)
    cfg.write_text(
        f"_base_ = [{str(ROOT / 'cls_configs/finetune/nepa-t_fmnist.py')!r}]\n"
        f"model = dict(backbone=dict(_delete_=True, **{bb!r}))\n"
        "train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, dataset=dict(limit=16))\n"
        "val_dataloader = dict(batch_size=10, dataset=dict(limit=10))\ntest_dataloader = val_dataloader\n"
        "train_cfg = dict(max_epochs=1, val_interval=1)\n"
        "custom_hooks = [dict(type='EMAHook', momentum=0.5), dict(type='ClsRecordHook', protocol='finetune')]\n")
    wd = tmp_path / "run"
    assert cli(["cls", "--ckpt", "none", "--config", str(cfg), "--work-dir", str(wd)]) == 0
    from nepa_eval.data.fashion import FASHION_CLASSES

    x = torch.randn(3, 3, 28, 28)
    for fmt in ("hf", "timm"):
        out = tmp_path / fmt
        assert cli(["convert", str(wd / "epoch_1.pth"), str(out), "--format", fmt]) == 0
        c = json.loads((out / "config.json").read_text())
        if fmt == "hf":
            assert c["architectures"] == ["ViTNepaForImageClassification"] and c["add_pooling_layer"] is True
            assert c["id2label"] == {str(i): n for i, n in enumerate(FASHION_CLASSES)}
            assert c["label2id"] == {n: i for i, n in enumerate(FASHION_CLASSES)}
            sd = load_file(str(out / "model.safetensors"))
            assert sd["classifier.weight"].shape == (10, 32) and "fc_norm.bias" in sd
        else:
            assert c["pretrained_cfg"]["label_names"] == list(FASHION_CLASSES)
        back, ref = from_pretrained(out, verbose=False), from_pretrained(wd / "epoch_1.pth", verbose=False)
        assert not back.causal and torch.equal(features(back, x), features(ref, x))


# ----------------------------------------------------------------------------------------------
# timm
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["classifier", "pretraining", "gated, no LayerScale, token pool"])
def test_timm_export_round_trips_through_create_model(tmp_path, kind):
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    kw = {"classifier": dict(num_classes=7, causal=False), "pretraining": dict(causal=True),
          "gated, no LayerScale, token pool": dict(num_classes=3, global_pool="token", mlp_type="swiglu",
                                                   layerscale_init=None, rope_rescale=2.0)}[kind]
    m = NepaViT(**tiny_kwargs(**kw)).eval()
    if kind == "classifier":
        torch.nn.init.normal_(m.head.weight)  # a trained head: zeros would hide a lost one
    ck = save_checkpoint(m, tmp_path / "m.safetensors")
    out = tmp_path / "timm"
    assert cli(["convert", str(ck), str(out), "--format", "timm"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "nepa_base_patch14_224" and cfg["num_classes"] == m.num_classes
    x = torch.randn(2, 3, 28, 28)
    want = features(m, x)
    # the call README and --help show: the variant, pretrained=True, model_args, the pretrained_cfg with file=...
    t = timm.create_model(cfg["architecture"], pretrained=True, **cfg["model_args"],
                          pretrained_cfg_overlay=dict(cfg["pretrained_cfg"], file=str(out / "model.safetensors")))
    t.eval()
    # the same architecture (None switches written as the same function: rescale 1.0, LayerScale of ones)
    same = {"pad_to_patch": True, "rope_rescale": m.cfg.rope_rescale or 1.0, "layerscale_init": m.cfg.layerscale_init or 1.0}
    assert t.cfg.to_dict() == m.cfg.to_dict() | same and t.global_pool == m.global_pool and t.causal == m.causal
    assert tuple(t.pretrained_cfg["input_size"]) == (3, 28, 28) and t.pretrained_cfg["num_classes"] == m.num_classes
    assert torch.equal(features(t, x), want)
    # timm's own local-directory loader reads config.json (architecture, model_args, pretrained_cfg) by itself
    local = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert local.num_classes == m.num_classes and torch.equal(features(local, x), want)
    # and without nepa-eval's door: timm's plain model + a strict load_state_dict of the file
    plain = timm.create_model(cfg["architecture"], **cfg["model_args"], num_classes=cfg["num_classes"]).eval()
    plain.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    assert torch.equal(features(plain, x), want)
    # nepa-eval reads it back too (the directory and the file)
    assert torch.equal(features(from_pretrained(out, verbose=False), x), want)
    assert torch.equal(features(from_pretrained(out / "model.safetensors", verbose=False), x), want)


def test_timm_export_of_the_release_classifier(official_dir, tmp_path):
    timm = pytest.importorskip("timm")
    src = official_dir / "nepa_tiny_cls_bidirectional"
    out = tmp_path / "timm"
    assert cli(["convert", str(src), str(out), "--format", "timm"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    t = timm.create_model(cfg["architecture"], pretrained=True, **cfg["model_args"],
                          pretrained_cfg_overlay=dict(cfg["pretrained_cfg"], file=str(out / "model.safetensors")))
    exp = load_file(str(src / "expected.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(t.eval()(exp["pixel_values"]), exp["logits"], atol=1e-4, rtol=0)
    assert cfg["pretrained_cfg"]["label_names"] == [f"LABEL_{i}" for i in range(10)]  # the release's id2label
