"""Every checkpoint format goes through one door; every bad input gets a message that names the problem."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from backbones.nepa import CheckpointError, NepaViT, from_pretrained, load_weights, read_checkpoint, save_checkpoint
from backbones.nepa.checkpoint import convert_hf_state_dict
from conftest import tiny_kwargs


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = NepaViT(**tiny_kwargs(causal=True)).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("gamma"):
                p.uniform_(0.5, 1.0)
    return m


X = torch.randn(2, 3, 28, 28)


def same(a: NepaViT, b: NepaViT):
    with torch.no_grad():
        torch.testing.assert_close(a.forward_features(X), b.forward_features(X))


def hf_copy(official_dir, tmp_path, name="nepa_tiny_pretrain_causal"):
    d = tmp_path / name
    shutil.copytree(official_dir / name, d)
    return d


def test_our_formats_roundtrip(model, tmp_path):
    for name in ("m.pth", "m.safetensors"):
        p = save_checkpoint(model, tmp_path / name)
        loaded = from_pretrained(p, verbose=False)
        assert loaded.causal and loaded.load_report.loaded == len(model.state_dict())
        same(model, loaded)


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module.", "backbone.", "mmengine"])
def test_wrapped_state_dicts(model, tmp_path, wrap):
    sd = model.state_dict()
    obj = {
        "plain": sd,
        "model": {"model": sd, "epoch": 3},
        "state_dict": {"state_dict": sd},
        "module.": {"module." + k: v for k, v in sd.items()},
        "backbone.": {"state_dict": {"backbone." + k: v for k, v in sd.items()}, "mask_token": torch.zeros(1)},
        "mmengine": None,
    }[wrap]
    if wrap == "mmengine":
        from mmengine.logging.history_buffer import HistoryBuffer
        import numpy as np

        buf = HistoryBuffer()
        buf.update(1.0)

        obj = {"meta": {"epoch": 1, "iter": 10, "seed": np.int64(3)}, "state_dict": {"backbone." + k: v for k, v in sd.items()},
               "message_hub": {"log_scalars": {"train/loss": buf}},
               "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}}
    torch.save(obj, tmp_path / "ckpt.pth")
    loaded = from_pretrained(tmp_path / "ckpt.pth", verbose=False, causal=True)
    same(model, loaded)
    if wrap == "mmengine":
        assert "mmengine" in loaded.load_report.fmt


def test_shape_inference_without_config(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    loaded = from_pretrained(tmp_path / "plain.pth", verbose=False, causal=True, img_size=28)
    assert loaded.cfg.embed_dim == 32 and loaded.cfg.depth == 2 and loaded.cfg.num_heads == 2
    assert loaded.cfg.patch_size == 7 and loaded.cfg.mlp_hidden == 64
    assert "inferred" in str(loaded.load_report)
    same(model, loaded)


def test_hf_directory_variants(official_dir, tmp_path):
    d = hf_copy(official_dir, tmp_path)
    ref = from_pretrained(d, verbose=False)
    sd = load_file(str(d / "model.safetensors"))
    # older layout: pytorch_model.bin
    (d / "model.safetensors").rename(tmp_path / "moved.safetensors")
    torch.save(sd, d / "pytorch_model.bin")
    same(ref, from_pretrained(d, verbose=False))
    # EMA file beside it, chosen with ema=True
    ema_sd = {k: v * 0.5 if k.endswith("projection.weight") else v for k, v in sd.items()}
    torch.save(ema_sd, d / "pytorch_model_ema.bin")
    ema = from_pretrained(d, ema=True, verbose=False)
    assert "pytorch_model_ema.bin" in ema.load_report.fmt
    assert torch.allclose(ema.patch_embed.proj.weight, ref.patch_embed.proj.weight * 0.5)
    # a single .safetensors with config.json beside it, and the same file alone (shape inference)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "moved.safetensors", alone / "weights.safetensors")
    inferred = from_pretrained(alone / "weights.safetensors", verbose=False, causal=True, img_size=56)
    same_x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(inferred.forward_features(same_x), ref.forward_features(same_x))


def test_missing_qk_norm_loads_as_ones(official_dir, tmp_path):
    d = hf_copy(official_dir, tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    sd = {k: v for k, v in sd.items() if "_norm.weight" not in k}
    save_file(sd, str(d / "model.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    cfg["qk_norm_affine"] = False  # the release's Base pretraining quirk...
    (d / "config.json").write_text(json.dumps(cfg))
    m = from_pretrained(d, verbose=False, qk_norm_affine=True)  # ...loaded by a fine-tuning config that wants them
    assert "loaded as ones" in str(m.load_report)
    assert torch.all(m.blocks[0].attn.q_norm.weight == 1)


def test_convert_hf_names():
    sd = {"vit_nepa.encoder.layer.0.attention.attention.query.weight": torch.ones(2, 2),
          "vit_nepa.encoder.layer.0.attention.attention.key.weight": 2 * torch.ones(2, 2),
          "vit_nepa.encoder.layer.0.attention.attention.value.weight": 3 * torch.ones(2, 2),
          "vit_nepa.encoder.layer.0.intermediate.gate_proj.weight": torch.zeros(4, 2),
          "vit_nepa.encoder.layer.0.intermediate.up_proj.weight": torch.ones(4, 2),
          "vit_nepa.encoder.layer.0.layer_scale.lambda1": torch.ones(2),
          "vit_nepa.encoder.layer.0.output.layer_scale.lambda1": torch.ones(2),
          "classifier.weight": torch.ones(3, 2)}
    out = convert_hf_state_dict(sd)
    assert out["blocks.0.attn.qkv.weight"][:, 0].tolist() == [1, 1, 2, 2, 3, 3]
    assert out["blocks.0.mlp.fc1.weight"][:, 0].tolist() == [0] * 4 + [1] * 4  # [gate; up]
    assert {"blocks.0.ls1.gamma", "blocks.0.ls2.gamma", "head.weight"} <= set(out)


def test_classifier_checkpoint_gives_logits(official_dir):
    m = from_pretrained(official_dir / "nepa_tiny_cls_bidirectional", verbose=False)
    assert m(torch.randn(3, 3, 56, 56)).shape == (3, 10)
    backbone = from_pretrained(official_dir / "nepa_tiny_cls_bidirectional", num_classes=0, verbose=False)
    assert backbone.num_classes == 0 and "head ignored" in str(backbone.load_report)
    new_head = from_pretrained(official_dir / "nepa_tiny_pretrain_causal", num_classes=7, verbose=False)
    assert new_head(torch.randn(1, 3, 56, 56)).shape == (1, 7)
    assert "head.weight" in new_head.load_report.missing


# ---- bad input ---------------------------------------------------------------------------------
def test_missing_path():
    with pytest.raises(CheckpointError, match="not found"):
        from_pretrained("/nonexistent/vit_l.pth")


def test_empty_truncated_and_garbage_files(model, tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        from_pretrained(tmp_path / "empty.pth")
    save_checkpoint(model, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        from_pretrained(tmp_path / "trunc.pth")
    save_checkpoint(model, tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="corrupt or truncated .safetensors"):
        from_pretrained(tmp_path / "trunc.safetensors")
    (tmp_path / "notes.txt").write_text("hello, this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unknown format"):
        from_pretrained(tmp_path / "notes.txt")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/nepa_pwned",))


def test_pickled_code_is_refused(tmp_path):
    torch.save({"model": {"x": torch.zeros(1)}, "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        from_pretrained(tmp_path / "evil.pth")
    assert not os.path.exists("/tmp/nepa_pwned")


def test_not_a_nepa_checkpoint(tmp_path):
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}},
               tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="does not look like a NEPA"):
        from_pretrained(tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="no tensor matched"):
        load_weights(NepaViT(**tiny_kwargs()), tmp_path / "resnet.pth")


def test_shape_mismatch_lists_keys(model, tmp_path):
    save_checkpoint(model, tmp_path / "tiny.pth")
    bigger = NepaViT(**tiny_kwargs(embed_dim=64, num_heads=4, mlp_hidden=128))
    with pytest.raises(CheckpointError, match=r"shapes disagree.*cls_token: checkpoint \(1, 1, 32\) vs model \(1, 1, 64\)"):
        load_weights(bigger, tmp_path / "tiny.pth")


def test_missing_keys_listed(model, tmp_path):
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.")}
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: blocks\.1\."):
        load_weights(NepaViT(**tiny_kwargs()), tmp_path / "partial.pth")
    report = load_weights(NepaViT(**tiny_kwargs()), tmp_path / "partial.pth", strict=False)
    assert any(k.startswith("blocks.1.") for k in report.missing)


def test_unexpected_keys_listed(model, tmp_path):
    shallow = NepaViT(**tiny_kwargs(depth=1))
    save_checkpoint(model, tmp_path / "deep.pth")
    with pytest.raises(CheckpointError, match=r"does not have: blocks\.1\."):
        load_weights(shallow, tmp_path / "deep.pth")


def test_hf_dir_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weights found"):
        read_checkpoint(tmp_path)


def test_convert_cli_folds_layerscale(official_dir, tmp_path):
    from nepa_eval.cli import main

    out = tmp_path / "folded.safetensors"
    assert main(["convert", str(official_dir / "nepa_tiny_pretrain_causal"), str(out), "--fold-layerscale"]) == 0
    ref = from_pretrained(official_dir / "nepa_tiny_pretrain_causal", verbose=False)
    folded = from_pretrained(out, verbose=False)
    assert not hasattr(folded.blocks[0].ls1, "gamma") and folded.causal
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(folded.forward_features(x), ref.forward_features(x), atol=1e-4, rtol=0)
    assert main(["convert", str(tmp_path / "missing"), str(out)]) == 2


def test_read_checkpoint_reads_every_time_and_a_run_hands_its_read_over_once(model, tmp_path, monkeypatch):
    """No cache in the door: two read_checkpoint calls are two reads of the disk, and a rewritten file gives its new
    contents. One read per run is a CheckpointReads the run owns: `read` (the task) then `take` (the model) read
    the disk once; a second `take`, a new run's reads or a file rewritten in between read it again."""
    from backbones.nepa import CheckpointReads
    from backbones.nepa import checkpoint as door

    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path)
    reads = []
    real = door.read_safetensors
    monkeypatch.setattr(door, "read_safetensors", lambda p: (reads.append(p), real(p))[1])
    read_checkpoint(path)
    read_checkpoint(path)
    assert len(reads) == 2
    run = CheckpointReads()
    first = run.read(path)
    first.state_dict.clear()  # the task's copy: changing it leaves the read the model takes whole
    taken = from_pretrained(path, verbose=False, checkpoint_reads=run)
    assert len(reads) == 3 and len(run) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in taken.state_dict().items())
    run.take(path)
    CheckpointReads().take(path)
    assert len(reads) == 5  # nothing held past the hand-over, nothing shared between runs
    run.read(path)
    other = NepaViT(**tiny_kwargs())
    save_checkpoint(other, path)
    os.utime(path, ns=(1, 1))  # a rewrite the modification time alone tells apart
    fresh = run.take(path)
    assert len(reads) == 7 and torch.equal(fresh.state_dict["cls_token"], other.state_dict()["cls_token"])
