"""One path through the code: the configs declare the whole run (mmengine's own Runner.from_cfg, as tools/train.py
builds it, finds every hook), a seg run reads its checkpoint once, and seg under torchrun on CPUs (gloo) matches
one process with the same global batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from conftest import ROOT, SEG_TINY_ARCH as TINY_ARCH, needs_fashion, require

PRETRAIN_CONFIGS = ["cls_configs/pretrain/nepa_tiny_fmnist.py", "cls_configs/pretrain/nepa_tiny_fmosaic.py",
                    "cls_configs/pretrain/nepa_b_release.py", "cls_configs/pretrain/nepa_l_release.py"]
LINEAR_SEG = "seg_configs/nepa/nepa-t_linear_fashion-mosaic-56x56_cpu.py"


def _hook_types(runner) -> list[str]:
    return [type(h).__name__ for h in runner.hooks]


@pytest.mark.parametrize("config", PRETRAIN_CONFIGS)
def test_runner_from_cfg_finds_the_pretraining_hooks(tmp_path, config):
    """What mmengine's and mmseg's tools/train.py do with a pretraining config: Config.fromfile + Runner.from_cfg.
    No nepa-eval code runs in between, yet the lr recipe, EMA, health and k-NN hooks and the run record are all there."""
    from mmengine.runner import Runner

    cfg = Config.fromfile(str(ROOT / config))
    cfg.work_dir = str(tmp_path)
    cfg.experiment_name = f"hooks_{Path(config).stem}"
    cfg.model.backbone.update(embed_dim=32, depth=1, num_heads=2, mlp_hidden=32)  # cheap to build
    if cfg.optim_wrapper.get("type") == "AmpOptimWrapper" and not torch.cuda.is_available():
        cfg.optim_wrapper.type = "OptimWrapper"
        cfg.optim_wrapper.pop("dtype")
    cfg.env_cfg.dist_cfg = dict(backend="gloo")
    types = _hook_types(Runner.from_cfg(cfg))
    for hook in ("EMAHook", "NepaHealthHook", "KnnMonitorHook", "RunRecordHook", "NepaCheckpointHook", "LrRecipeHook"):
        assert types.count(hook) == 1, (hook, types)


@needs_fashion
def test_plain_runner_trains_a_pretraining_config_as_nepa_eval_does(tmp_path):
    """Runner.from_cfg(...).train() on the tiny recipe, nothing of ours around it: the run directory is the one
    `nepa-eval pretrain` writes (final metrics with k-NN on raw and EMA weights, health scalars, the backbone)."""
    from mmengine.runner import Runner

    cfg = Config.fromfile(str(ROOT / "cls_configs/pretrain/nepa_tiny_fmnist.py"))
    cfg.merge_from_dict({"work_dir": str(tmp_path), "experiment_name": "plain_runner", "train_cfg.max_iters": 4,
                         "train_dataloader.batch_size": 8, "train_dataloader.num_workers": 0,
                         "train_dataloader.persistent_workers": False, "default_hooks.logger.interval": 2,
                         "default_hooks.health.interval": 2, "knn_train.limit": 40, "knn_test.limit": 20})
    Runner.from_cfg(cfg).train()
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["status"] == "ok" and final["steps"] == 4 and final["task"] == "pretrain"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert final["started_from"] is None and len(final["run_id"]) == 32  # random init, recorded
    assert final["code_commit"].split("+")[0] == head
    assert "knn_top1" in final and "knn_top1_ema" in final and "knn_top1_block1" in final
    rows = [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eff_rank" in r] == [2, 4]
    assert (tmp_path / "backbone.safetensors").is_file() and (tmp_path / "backbone_ema.safetensors").is_file()


# ----------------------------------------------------------------------------------------------
# segmentation: one read of the checkpoint; torchrun with gloo on CPUs
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mosaic(tiny_mosaic):
    return tiny_mosaic


@pytest.fixture(scope="module")
def tiny_backbone(tiny_seg_backbone):
    return Path(tiny_seg_backbone)


def test_a_seg_run_reads_its_checkpoint_once(tmp_path, mosaic, tiny_backbone, monkeypatch):
    """`nepa-eval seg --ckpt X`: the task resolves X's architecture and writes it into the config, the backbone
    loads it in init_weights; the file is read from disk once, and the loaded weights are X's."""
    require("mmseg.models", "mmsegmentation with compiled mmcv ops")
    from backbones.nepa import checkpoint
    from nepa_eval.cli import main as cli

    reads = []
    real = checkpoint.read_safetensors
    monkeypatch.setattr(checkpoint, "read_safetensors", lambda p: (reads.append(Path(p).name), real(p))[1])
    wd = tmp_path / "run"
    assert cli(["seg", "--config", LINEAR_SEG, "--ckpt", str(tiny_backbone), "--data-root", str(mosaic),
                "--work-dir", str(wd), "--cfg-options", "train_cfg.max_iters=1", "train_cfg.val_interval=1",
                "train_dataloader.batch_size=2", "val_dataloader.batch_size=8"]) == 0
    assert reads == ["tiny.safetensors"]
    final = json.loads((wd / "final_metrics.json").read_text())
    assert final["status"] == "ok" and "loaded" in final["backbone_load"]
    dumped = Config.fromfile(str(wd / "config.py"))
    assert dumped.model.backbone.arch["embed_dim"] == 128 and dumped.model.backbone.arch["mlp_hidden"] == 256


def test_seg_backbone_constructor_never_touches_disk(tmp_path):
    """NepaBackbone is an mmengine BaseModule: building it from a config naming a checkpoint that does not exist
    succeeds; init_weights is where the file is read (and a missing one is a clear error)."""
    require("mmseg.models", "mmsegmentation with compiled mmcv ops")
    from mmengine.model import BaseModule

    from backbones.nepa import CheckpointError
    from backbones.nepa.mmseg_backbone import NepaBackbone

    missing = tmp_path / "not_there.safetensors"
    bb = NepaBackbone(arch=dict(TINY_ARCH), init_cfg=dict(type="Pretrained", checkpoint=str(missing)))
    assert isinstance(bb, BaseModule) and not bb.is_init
    with pytest.raises(CheckpointError, match="not_there.safetensors"):
        bb.init_weights()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # three processes importing mmseg (~25 s); as the pretrain and cls gloo tests, in `make test-slow`
def test_seg_two_gloo_processes_match_one_with_the_same_global_batch(tmp_path, mosaic, tiny_backbone):
    """torchrun --nproc_per_node 2 ... seg --launcher pytorch on a CPU (gloo): 2 x batch 2 trains the same weights
    and evaluates the same mIoU as 1 x batch 4 (no augmentation, no BatchNorm in the linear-head config)."""
    require("mmseg.models", "mmsegmentation with compiled mmcv ops")
    cfg = tmp_path / "deterministic.py"
    cfg.write_text(f"_base_ = ['{ROOT / LINEAR_SEG}']\n"
                   "train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), "
                   "dict(type='PackSegInputs')]\n"
                   "train_dataloader = dict(num_workers=0, dataset=dict(pipeline=train_pipeline))\n"
                   "train_cfg = dict(max_iters=3, val_interval=3)\n"
                   "default_hooks = dict(checkpoint=dict(interval=3))\n")
    common = ["seg", "--config", str(cfg), "--ckpt", str(tiny_backbone), "--data-root", str(mosaic)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    one, two = tmp_path / "one", tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "nepa_eval.cli", *common, "--work-dir", str(one),
                        "--cfg-options", "train_dataloader.batch_size=4"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(_free_port()), "-m", "nepa_eval.cli", *common, "--work-dir", str(two),
                        "--launcher", "pytorch", "--cfg-options", "train_dataloader.batch_size=2"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    f1, f2 = (json.loads((d / "final_metrics.json").read_text()) for d in (one, two))
    assert f1["status"] == f2["status"] == "ok" and f1["steps"] == f2["steps"] == 3
    assert f2["mIoU"] == pytest.approx(f1["mIoU"], abs=1e-6)
    w1, w2 = (torch.load(d / "iter_3.pth", map_location="cpu", weights_only=False)["state_dict"] for d in (one, two))
    assert w1.keys() == w2.keys()
    assert max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1) < 1e-5
    from safetensors.torch import load_file

    start = load_file(str(tiny_backbone))
    assert (w1["backbone.blocks.0.attn.qkv.weight"] - start["blocks.0.attn.qkv.weight"]).abs().max() > 1e-6  # trained
