"""Hugging Face hub ids wherever a checkpoint is accepted, resolved offline from a hub cache these tests build
exactly as huggingface_hub leaves it (models--OWNER--NAME/{blobs,snapshots,refs}); no network."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from backbones.nepa import CheckpointError, CheckpointReads, from_pretrained
from backbones.nepa import checkpoint as door
from backbones.nepa.hub import HubError, HubRef, parse_hub_id
from conftest import ROOT, needs_fashion, require
from nepa_eval.cli import main as cli

REPO = "nepa-test/tiny-cls"


def _blob_name(name: str, data: bytes) -> str:
    """The blob name huggingface_hub gives a file: the sha256 for LFS files (weights), the git blob sha1 else."""
    if name.endswith((".safetensors", ".bin")):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_repo(cache: Path, repo_id: str, snapshots: dict[str, dict[str, bytes]], refs: dict[str, str]
               ) -> dict[str, str]:
    """Write `repo_id` into the hub cache `cache`: blobs/<hash>, snapshots/<commit>/<file> as relative symlinks to
    the blobs, refs/<name> holding the commit. `snapshots`: label -> {file: bytes}; `refs`: ref -> label.
    Returns label -> commit hash."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commits = {label: hashlib.sha1(f"{repo_id}:{label}".encode()).hexdigest() for label in snapshots}
    for label, files in snapshots.items():
        for name, data in files.items():
            blob = repo / "blobs" / _blob_name(name, data)
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo / "snapshots" / commits[label] / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    for ref, label in refs.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commits[label])  # no newline, as huggingface_hub writes it
    return commits


def model_files(d: Path, *names: str) -> dict[str, bytes]:
    return {n: (d / n).read_bytes() for n in names}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty hub cache under HF_HOME, offline: the environment for subprocesses, huggingface_hub's constants
    (read at its import) for this process."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home / "hub"


@pytest.fixture
def release_repo(hf_cache, official_dir):
    """REPO with main -> the release's classifier fixture, init -> its pretraining fixture (other weights)."""
    cls_dir, pre_dir = official_dir / "nepa_tiny_cls_bidirectional", official_dir / "nepa_tiny_pretrain_causal"
    commits = cache_repo(hf_cache, REPO, {"cls": model_files(cls_dir, "config.json", "model.safetensors"),
                                          "pre": model_files(pre_dir, "config.json", "model.safetensors")},
                         refs={"main": "cls", "init": "pre"})
    return cls_dir, pre_dir, commits


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------------
# the forms of an id
# ----------------------------------------------------------------------------------------------
def test_parse_hub_id_forms():
    assert parse_hub_id("SixAILab/nepa-base-patch14-224") == HubRef("SixAILab/nepa-base-patch14-224")
    assert parse_hub_id("hf-hub:SixAILab/nepa-base-patch14-224") == HubRef("SixAILab/nepa-base-patch14-224")
    assert parse_hub_id("SixAILab/nepa-base-patch14-224-sft@init") == HubRef("SixAILab/nepa-base-patch14-224-sft", "init")
    assert parse_hub_id("hf-hub:o/n@refs/pr/3") == HubRef("o/n", "refs/pr/3")
    assert parse_hub_id("hf-hub:gpt2") == HubRef("gpt2")  # explicit: a repository without an owner
    # local path forms stay local paths
    for spec in ("runs/ckpt.pth", "work_dirs/backbone.safetensors", "./o/n", "/abs/o/n", "a/b/c", "name", "o/n@",
                 "o/bad--name"):
        assert parse_hub_id(spec) is None, spec
    with pytest.raises(HubError, match="not a valid Hugging Face repository name"):
        parse_hub_id("hf-hub:o/bad--name")
    with pytest.raises(HubError, match="empty revision"):
        parse_hub_id("hf-hub:o/n@")
    with pytest.raises(CheckpointError, match="empty revision"):  # through the door: its own error
        from_pretrained("hf-hub:o/n@", verbose=False)


@pytest.mark.parametrize("form", ["{repo}", "hf-hub:{repo}", "{repo}@main", "{repo}@{commit}"])
def test_an_id_loads_as_its_directory_does(release_repo, form):
    cls_dir, _, commits = release_repo
    spec = form.format(repo=REPO, commit=commits["cls"])
    model = from_pretrained(spec, verbose=False)
    assert same_weights(model, from_pretrained(cls_dir, verbose=False))
    exp = load_file(str(cls_dir / "expected.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(model(exp["pixel_values"]), exp["logits"], atol=1e-4, rtol=0)
    report = str(model.load_report)
    assert f"Hugging Face hub model {REPO}" in report and commits["cls"][:12] in report
    assert "config.json, model.safetensors" in report and spec in report


def test_a_revision_picks_its_own_snapshot(release_repo):
    cls_dir, pre_dir, commits = release_repo
    pre = from_pretrained(f"{REPO}@init", verbose=False)
    assert pre.causal and pre.num_classes == 0 and same_weights(pre, from_pretrained(pre_dir, verbose=False))
    assert "revision init" in str(pre.load_report) and commits["pre"][:12] in str(pre.load_report)
    exp = load_file(str(pre_dir / "expected.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(pre.forward_features(exp["pixel_values"]), exp["last_hidden_state"], atol=1e-4, rtol=0)
    main = from_pretrained(REPO, verbose=False)
    assert not main.causal and main.num_classes == 10


def test_only_the_needed_files_are_asked_for_and_ema_takes_the_ema_file(hf_cache, official_dir, tmp_path,
                                                                         monkeypatch):
    import huggingface_hub

    d = official_dir / "nepa_tiny_pretrain_causal"
    sd = load_file(str(d / "model.safetensors"))
    torch.manual_seed(0)
    ema = {k: v + 0.01 * torch.randn_like(v) for k, v in sd.items()}
    local = tmp_path / "local_copy"
    local.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(d / name, local / name)
    torch.save(ema, local / "pytorch_model_ema.bin")
    cache_repo(hf_cache, REPO, {"a": {**model_files(local, "config.json", "model.safetensors",
                                                    "pytorch_model_ema.bin"), "README.md": b"# card\n"}},
               refs={"main": "a"})
    asked = []
    real = huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **kw: asked.append(name) or real(repo, name, **kw))
    raw_model = from_pretrained(REPO, verbose=False)
    assert asked == ["model.safetensors", "config.json"]
    asked.clear()
    ema_model = from_pretrained(REPO, ema=True, verbose=False)
    assert asked == ["pytorch_model_ema.bin", "config.json"]
    assert same_weights(ema_model, from_pretrained(local, ema=True, verbose=False))
    assert same_weights(raw_model, from_pretrained(local, verbose=False)) and not same_weights(raw_model, ema_model)
    assert "pytorch_model_ema.bin" in str(ema_model.load_report)


def test_pytorch_model_bin_when_the_repo_has_no_safetensors(hf_cache, official_dir):
    d = official_dir / "nepa_tiny_cls_bidirectional"
    buf = hf_cache.parent / "w.bin"
    torch.save(load_file(str(d / "model.safetensors")), buf)
    cache_repo(hf_cache, REPO, {"a": {"config.json": (d / "config.json").read_bytes(),
                                      "pytorch_model.bin": buf.read_bytes()}}, refs={"main": "a"})
    model = from_pretrained(REPO, verbose=False)
    assert same_weights(model, from_pretrained(d, verbose=False)) and "pytorch_model.bin" in str(model.load_report)


def test_a_local_path_of_the_same_name_wins(release_repo, tmp_path, monkeypatch):
    cls_dir, pre_dir, _ = release_repo
    monkeypatch.chdir(tmp_path)
    shutil.copytree(pre_dir, tmp_path / REPO)  # ./nepa-test/tiny-cls holds the pretraining model
    local = from_pretrained(REPO, verbose=False)
    assert local.causal and same_weights(local, from_pretrained(pre_dir, verbose=False))
    assert "Hugging Face hub" not in str(local.load_report)
    hub_model = from_pretrained(f"hf-hub:{REPO}", verbose=False)  # hf-hub: has no local meaning
    assert same_weights(hub_model, from_pretrained(cls_dir, verbose=False))


def test_offline_and_not_cached_says_how_to_fetch(hf_cache, official_dir):
    with pytest.raises(CheckpointError) as e:
        from_pretrained("SixAILab/nepa-base-patch14-224-sft@init", verbose=False)
    msg = str(e.value)
    assert "HF_HUB_OFFLINE" in msg and str(hf_cache) in msg
    assert "hf download SixAILab/nepa-base-patch14-224-sft config.json model.safetensors --revision init" in msg
    # cached without its EMA file: --ema names the file to fetch
    d = official_dir / "nepa_tiny_cls_bidirectional"
    cache_repo(hf_cache, REPO, {"a": model_files(d, "config.json", "model.safetensors")}, refs={"main": "a"})
    with pytest.raises(CheckpointError, match=f"pytorch_model_ema.bin.*hf download {REPO} config.json pytorch_model_ema.bin"):
        from_pretrained(REPO, ema=True, verbose=False)
    # a mistyped local file is no hub question
    with pytest.raises(CheckpointError, match="checkpoint not found: runs/vit_l.pth"):
        from_pretrained("runs/vit_l.pth", verbose=False)


# ----------------------------------------------------------------------------------------------
# every caller: the CLI, timm, the mmseg backbone, the one-read-per-run hand-over
# ----------------------------------------------------------------------------------------------
def test_inspect_in_a_fresh_process_honours_hf_home_and_offline(release_repo, tmp_path, capsys):
    _, pre_dir, commits = release_repo
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # HF_HOME and HF_HUB_OFFLINE=1 come from the fixture
    out = subprocess.run([sys.executable, "-m", "nepa_eval.cli", "inspect", f"{REPO}@init"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"revision init (commit {commits['pre'][:12]})" in out.stdout
    assert cli(["inspect", str(pre_dir)]) == 0
    direct = capsys.readouterr().out
    config = [ln for ln in out.stdout.splitlines() if ln.startswith("config:")]
    assert config and config == [ln for ln in direct.splitlines() if ln.startswith("config:")]
    # not cached: the CLI's error says how to fetch it (in this process: a second interpreter costs seconds)
    assert cli(["inspect", "nepa-test/absent"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "hf download nepa-test/absent config.json model.safetensors" in err
    assert "HF_HUB_OFFLINE" in err


def test_convert_an_id_to_our_format(release_repo, tmp_path):
    _, pre_dir, _ = release_repo
    out = tmp_path / "nepa_tiny.safetensors"
    assert cli(["convert", f"hf-hub:{REPO}@init", str(out)]) == 0
    converted = from_pretrained(out, verbose=False)
    assert converted.causal and same_weights(converted, from_pretrained(pre_dir, verbose=False))


def _tiny_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(2):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_knn_with_an_id_equals_knn_with_the_directory(release_repo, tmp_path):
    _, pre_dir, _ = release_repo
    data = f"folder:{_tiny_folder(tmp_path / 'data')}"
    common = ["--data", data, "--test-split", "val", "-k", "3", "--device", "cpu", "--block", "0"]
    assert cli(["knn", "--ckpt", f"{REPO}@init", *common, "--json", str(tmp_path / "hub.json")]) == 0
    assert cli(["knn", "--ckpt", str(pre_dir), *common, "--json", str(tmp_path / "dir.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("hub.json", "dir.json"))
    assert a.pop("ckpt") == f"{REPO}@init" and b.pop("ckpt") == str(pre_dir)
    assert a == b


@needs_fashion
def test_cls_eval_only_with_an_id_reads_the_checkpoint_once(release_repo, tmp_path, monkeypatch):
    from test_cls import final, tiny_config

    cls_dir, _, _ = release_repo
    cfg = tiny_config(tmp_path, val=20, val_size=56)
    assert cli(["cls", "--ckpt", str(cls_dir), "--config", cfg, "--eval-only", "--work-dir", str(tmp_path / "d")]) == 0
    reads = []
    real = door._read_local
    monkeypatch.setattr(door, "_read_local", lambda p, ema: reads.append(p) or real(p, ema))
    assert cli(["cls", "--ckpt", REPO, "--config", cfg, "--eval-only", "--work-dir", str(tmp_path / "h")]) == 0
    assert len(reads) == 1 and reads[0].parent.name == "snapshots"
    a, b = final(tmp_path / "h"), final(tmp_path / "d")
    assert a["ckpt"] == REPO and (a["top1"], a["top5"]) == (b["top1"], b["top5"])


def test_timm_pretrained_cfg_overlay_takes_an_id(release_repo):
    import timm

    cls_dir, _, _ = release_repo
    arch = dict(embed_dim=128, depth=2, num_heads=2, mlp_hidden=512, num_classes=10)
    exp = load_file(str(cls_dir / "expected.safetensors"))
    ref = timm.create_model("nepa_tiny_patch14_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(cls_dir)),
                            **arch)
    for overlay in (dict(file=REPO), dict(file=f"hf-hub:{REPO}@main"), dict(hf_hub_id=REPO)):
        m = timm.create_model("nepa_tiny_patch14_224", pretrained=True, pretrained_cfg_overlay=overlay, **arch)
        assert m.load_report.loaded == len(m.state_dict()) and "Hugging Face hub" in str(m.load_report)
        assert same_weights(m, ref)
        with torch.no_grad():
            torch.testing.assert_close(m.eval()(exp["pixel_values"]), exp["logits"], atol=1e-4, rtol=0)


def test_seg_with_an_id_writes_the_snapshot_and_reads_once(release_repo, tmp_path, monkeypatch):
    require("mmseg.models", "mmsegmentation with compiled mmcv ops")
    from mmseg.registry import MODELS

    from nepa_eval.cli import build_parser
    from nepa_eval.commands import seg as seg_cmd
    from nepa_eval.tasks import seg

    _, pre_dir, commits = release_repo
    config = tmp_path / "tiny_seg.py"
    config.write_text(f"_base_ = ['{ROOT / 'seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py'}']\n"
                      "model = dict(backbone=dict(arch=dict(_delete_=True, embed_dim=128, depth=2, num_heads=2, "
                      "patch_size=14), out_indices=[0, 1, 1, 1]))\n")
    parser, subs = build_parser()
    seg_cmd.add_arguments(subs["seg"])
    read_files = []
    real = door._read_local
    monkeypatch.setattr(door, "_read_local", lambda p, ema: read_files.append(p) or real(p, ema))
    args = parser.parse_args(["seg", "--ckpt", f"{REPO}@init", "--config", str(config), "--work-dir", str(tmp_path / "w")])
    reads = CheckpointReads()  # the run's, handed from the task to the backbone as the engine's Runner does
    cfg = seg.build_cfg(args, reads)
    snapshot = cfg.model.backbone.init_cfg["checkpoint"]
    assert Path(snapshot).name == commits["pre"] and cfg.seg_run["ckpt"] == snapshot
    assert cfg.seg_run["ckpt_hub"] == f"{REPO}@init" and cfg.seg_run["ckpt_commit"] == commits["pre"]
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope("mmseg"):  # as the run's Runner: an earlier test's may be current
        bb = MODELS.build(cfg.model.backbone, default_args=dict(checkpoint_reads=reads))
    bb.init_weights()
    assert len(read_files) == 1  # the task's read is handed to the backbone
    assert len(reads) == 0 and bb.checkpoint_reads is None  # taken once, and not kept by the model
    want = from_pretrained(pre_dir, verbose=False).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in bb.state_dict().items())


def test_seg_ckpt_none_is_random_initialisation(tmp_path):
    require("mmseg.models", "mmsegmentation with compiled mmcv ops")
    from nepa_eval.cli import build_parser
    from nepa_eval.commands import seg as seg_cmd
    from nepa_eval.tasks import seg

    parser, subs = build_parser()
    seg_cmd.add_arguments(subs["seg"])
    args = parser.parse_args(["seg", "--ckpt", "none", "--config",
                              str(ROOT / "seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py"),
                              "--work-dir", str(tmp_path / "w")])
    cfg = seg.build_cfg(args)
    assert cfg.seg_run["ckpt"] is None and cfg.seg_run["arch"] == "random init" and not cfg.model.backbone.get("init_cfg")
