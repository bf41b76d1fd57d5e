"""`nepa-eval seg` end to end at tiny scale: train + evaluate, resume after an interruption, test-only, config
picking and bad input through the CLI, and mmseg's own tools/train.py and tools/test.py on our config."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, require

require("mmseg.models", "mmsegmentation with compiled mmcv ops")

from mmengine.hooks import Hook  # noqa: E402
from mmengine.registry import HOOKS  # noqa: E402

from backbones.nepa import NepaViT  # noqa: E402
from nepa_eval.cli import main as cli  # noqa: E402
from nepa_eval.engine import read_final, read_scalars  # noqa: E402

TINY = "seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py"
FAST = ["train_dataloader.batch_size=4", "val_dataloader.batch_size=8", "test_dataloader.batch_size=8",
        "model.decode_head.channels=16", "model.auxiliary_head.channels=8"]


@pytest.fixture(scope="module")
def data(tiny_mosaic):
    return tiny_mosaic


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_seg_backbone):
    return tiny_seg_backbone


@HOOKS.register_module()
class InterruptAt(Hook):
    """Raises KeyboardInterrupt once, after iteration `at` (after that iteration's checkpoint hook ran); records
    the iterations each run starts (`ran`, one list per run)."""

    priority = "LOWEST"
    fired = False
    ran: list = []

    def __init__(self, at: int) -> None:
        self.at = at

    def before_train(self, runner) -> None:
        InterruptAt.ran.append([])

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        InterruptAt.ran[-1].append(runner.iter + 1)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.at and not InterruptAt.fired:
            InterruptAt.fired = True
            raise KeyboardInterrupt


def seg(*argv):
    return cli(["seg", *map(str, argv)])


def metrics_by_hand(config, ckpt, data, num_classes=11, ignore=255):
    """aAcc, mIoU, mAcc (percent) of a saved segmentor on the validation split: mmseg's inference API for the
    predictions, a numpy confusion matrix for the rest (classes absent from labels and predictions skipped)."""
    from mmseg.apis import inference_model, init_model

    model = init_model(str(config), str(ckpt), device="cpu")
    cm = np.zeros((num_classes, num_classes), np.int64)
    val = Path(data) / "ADEChallengeData2016"
    images = sorted((val / "images" / "validation").glob("*.jpg"))
    assert len(images) == 8
    for img in images:
        pred = inference_model(model, str(img)).pred_sem_seg.data[0].numpy()
        gt = np.asarray(Image.open(val / "annotations" / "validation" / f"{img.stem}.png"))
        keep = gt != ignore
        cm += np.bincount(gt[keep].astype(np.int64) * num_classes + pred[keep], minlength=num_classes ** 2
                          ).reshape(num_classes, num_classes)
    tp, label, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = tp / (label + predicted - tp), tp / label
    return dict(aAcc=100 * tp.sum() / cm.sum(), mIoU=100 * np.nanmean(iou), mAcc=100 * np.nanmean(acc))


def test_train_then_evaluate_writes_the_run_directory(data, tiny_ckpt, tmp_path):
    wd = tmp_path / "run"
    assert seg("--config", TINY, "--ckpt", tiny_ckpt, "--data-root", data, "--work-dir", wd, "--cfg-options",
               "train_cfg.max_iters=4", "train_cfg.val_interval=4", *FAST) == 0
    final = read_final(wd)
    assert final["task"] == "seg" and final["status"] == "ok" and final["steps"] == 4
    # the metrics are those of the saved segmentor on the 8 validation canvases, recomputed here in numpy
    want = metrics_by_hand(wd / "config.py", wd / "iter_4.pth", data)
    for k in ("mIoU", "aAcc", "mAcc"):
        assert final[k] == pytest.approx(want[k], abs=0.0051), k  # mmseg rounds to 2 decimals
    assert "loaded" in final["backbone_load"] and final["causal"] is False
    assert final["layer_decay"] == dict(rate=0.65, rate_end=None, ramp="constant", exponents="mmseg")
    assert final["num_classes"] == 11 and final["reduce_zero_label"] is False
    assert (wd / "config.py").exists() and any("loss" in r for r in read_scalars(wd))
    # the resolved config holds the checkpoint's whole architecture; test-only rebuilds from it
    assert "mlp_hidden=256" in (wd / "config.py").read_text()
    assert seg("--config", wd / "config.py", "--test-only", "--work-dir", wd, "--inference", "slide") == 0
    again = read_final(wd)
    assert again["inference"] == "slide" and abs(again["test/mIoU"] - again["mIoU"]) < 1e-9


def test_resume_after_interruption_continues_where_it_stopped(data, tmp_path):
    wd = tmp_path / "run"
    config = tmp_path / "interrupted.py"
    config.write_text(f"_base_ = ['{ROOT / TINY}']\ncustom_hooks = [dict(type='LayerDecayLRHook', warmup=2, "
                      "schedule='poly'), dict(type='InterruptAt', at=5)]\n")
    common = ["--config", config, "--data-root", data, "--work-dir", wd, "--cfg-options", "train_cfg.max_iters=6",
              "train_cfg.val_interval=6", "default_hooks.checkpoint.interval=3", *FAST]
    InterruptAt.fired, InterruptAt.ran = False, []
    assert seg(*common) == 130  # interrupted after iteration 5; the last checkpoint is iteration 3
    assert (wd / "last_checkpoint").read_text().strip().endswith("iter_3.pth")
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") is None
    assert seg(*common, "--resume") == 0
    final = read_final(wd)
    assert final["status"] == "ok" and final["steps"] == 6 and "mIoU" in final
    steps = [r["step"] for r in read_scalars(wd) if "loss" in r]
    assert len(steps) == len(set(steps)) and max(steps) == 6
    # the second run restored the iteration-3 state and ran only iterations 4 to 6
    assert InterruptAt.ran == [[1, 2, 3, 4, 5], [4, 5, 6]]
    logs = sorted(wd.rglob("*.log"))
    assert len(logs) == 2 and not re.search(r"resumed epoch", logs[0].read_text())
    assert re.search(r"resumed epoch: \d+, iter: 3\b", logs[1].read_text())


def test_checkpoint_size_picks_the_config_or_is_a_clear_error(tmp_path, capsys):
    from safetensors.torch import save_file

    large = dict(NepaViT(embed_dim=32, depth=2, num_heads=2).cfg.to_dict(), embed_dim=1024, depth=24, num_heads=16)
    path = tmp_path / "vit_l.safetensors"
    save_file({"cls_token": torch.zeros(1, 1, 1024)}, str(path),
              metadata={"format": "nepa-eval/1", "nepa_config": json.dumps(large)})
    from nepa_eval.tasks.seg import checkpoint_info, pick_config

    info = checkpoint_info(str(path))
    assert info["size"] == "large" and pick_config(info, str(path)).endswith("nepa-l_upernet_8xb2-160k_ade20k-512x512.py")
    rc = seg("--ckpt", path, "--config", "seg_configs/nepa/nepa-b_upernet_8xb2-160k_ade20k-512x512.py",
             "--data-root", tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and "NEPA-large" in err and "NEPA-base" in err and "nepa-l_" in err


def test_bad_input_through_the_cli(data, tiny_ckpt, tmp_path, capsys):
    rc = seg("--config", TINY, "--ckpt", tiny_ckpt, "--data-root", tmp_path, "--work-dir", tmp_path / "w")
    assert rc == 2 and "ADE20K layout" in capsys.readouterr().err
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, other)
    rc = seg("--config", TINY, "--ckpt", other, "--data-root", data, "--work-dir", tmp_path / "w")
    assert rc == 2 and "does not look like a NEPA/ViT checkpoint" in capsys.readouterr().err
    rc = seg("--config", TINY, "--test-only", "--data-root", data, "--work-dir", tmp_path / "empty")
    assert rc == 2 and "no trained segmentor" in capsys.readouterr().err


def test_mmseg_tools_train_and_test_run_our_config(data, tiny_ckpt, tmp_path):
    import mmseg

    tools = Path(mmseg.__file__).parent / ".mim" / "tools"
    root = str(Path(data) / "ADEChallengeData2016")
    opts = [f"{k}.dataset.data_root={root}" for k in ("train_dataloader", "val_dataloader", "test_dataloader")]
    opts += ["train_cfg.max_iters=2", "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2",
             f"model.backbone.init_cfg.checkpoint={tiny_ckpt}", *FAST]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    wd = tmp_path / "mmseg_run"
    r = subprocess.run([sys.executable, str(tools / "train.py"), str(ROOT / TINY), "--work-dir", str(wd),
                        "--cfg-options", *opts], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "mIoU" in out and "[nepa] backbone: loaded" in out
    ckpt = (wd / "last_checkpoint").read_text().strip()
    r = subprocess.run([sys.executable, str(tools / "test.py"), str(ROOT / TINY), ckpt, "--work-dir", str(wd),
                        "--cfg-options", *opts], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mIoU" in r.stdout + r.stderr
