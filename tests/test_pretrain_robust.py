"""nepa-eval pretrain under failure: a NaN loss, unreadable or missing data, and a crash while a checkpoint
is being written."""
from __future__ import annotations

import json
import math
import os
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FASHION

pytest.importorskip("mmengine")

from mmengine.logging import MessageHub  # noqa: E402
from mmengine.registry import DATASETS  # noqa: E402

from nepa_eval.data.sources import ImageDataset  # noqa: E402
from nepa_eval.tasks.pretrain import NepaCheckpointHook  # noqa: E402

TINY_CFG = "cls_configs/pretrain/nepa_tiny_fmnist.py"
TINY_OPTS = ["model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2",
             "model.backbone.mlp_hidden=64", "train_dataloader.batch_size=8", "train_dataloader.num_workers=0",
             "train_dataloader.persistent_workers=False", "custom_hooks.2.enabled=False",
             "default_hooks.logger.interval=1", "custom_hooks.1.interval=1"]


class NanAfterDataset(ImageDataset):
    """Fashion-MNIST whose images turn to NaN after `nan_after` reads (a data or numerics failure mid-run)."""

    def __init__(self, nan_after: int, **kw) -> None:
        super().__init__(**kw)
        self.nan_after, self.reads = nan_after, 0

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        self.reads += 1
        return (torch.full_like(x, float("nan")) if self.reads > self.nan_after else x), y


DATASETS.register_module(name="NanAfterDataset", module=NanAfterDataset, force=True)


def run_cli(argv: list[str]) -> int:
    from nepa_eval.cli import main

    return main(argv)


def final(wd: Path) -> dict:
    return json.loads((wd / "final_metrics.json").read_text())


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
def test_nan_loss_stops_with_step_lr_gradnorm_and_keeps_last_good_checkpoint(tmp_path, capsys):
    from backbones.nepa import from_pretrained

    wd = tmp_path / "nan"
    rc = run_cli(["pretrain", "--config", TINY_CFG, "--work-dir", str(wd), "--cfg-options", *TINY_OPTS,
                  "train_cfg.max_iters=20", "default_hooks.checkpoint.interval=5",
                  "train_dataloader.dataset.type=NanAfterDataset", "train_dataloader.dataset.nan_after=48"])
    assert rc == 3
    f = final(wd)
    assert f["status"] == "diverged"
    assert "step 7" in f["reason"] and "lr " in f["reason"] and "grad norm " in f["reason"]
    assert f["reason"].endswith("iter_5.pth")
    assert "diverged" in capsys.readouterr().err
    assert not (wd / "iter_10.pth").exists()
    m = from_pretrained(wd / "iter_5.pth", verbose=False)
    assert all(torch.isfinite(p).all() for p in m.parameters())


def _folder(root: Path, bad: bool) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        d = root / "train" / c
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(d / f"{i}.png")
    if bad:
        (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


@pytest.mark.parametrize("case", ["unreadable", "empty", "missing"])
def test_bad_data_fails_the_run_with_the_path(tmp_path, case, capsys):
    if case == "unreadable":
        root, expect = _folder(tmp_path / "data", bad=True), "broken.png"
    elif case == "empty":
        (tmp_path / "data" / "train").mkdir(parents=True)
        root, expect = tmp_path / "data", "no class sub-folders"
    else:
        root, expect = tmp_path / "nowhere", "not found"
    wd = tmp_path / "run"
    rc = run_cli(["pretrain", "--config", TINY_CFG, "--work-dir", str(wd), "--cfg-options", *TINY_OPTS,
                  "train_cfg.max_iters=3", "train_dataloader.batch_size=9", "train_dataloader.dataset.source=folder",
                  f"train_dataloader.dataset.root={root}"])
    assert rc == 2
    assert expect in capsys.readouterr().err
    f = final(wd)
    assert f["status"] == "failed" and expect in f["reason"] and "DataError" in f["reason"]


def test_checkpoint_dying_mid_write_never_replaces_the_last_good_one(tmp_path):
    hook = NepaCheckpointHook(interval=1, max_keep_ckpts=1)
    hook.out_dir = str(tmp_path)
    hook.keep_ckpt_ids = deque([1])
    (tmp_path / "iter_1.pth").write_bytes(b"good")
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_1.pth"))

    class Runner:
        work_dir = str(tmp_path)
        message_hub = MessageHub.get_instance("test_ckpt_hub")
        die = True

        def save_checkpoint(self, out_dir, filename, *args, **kwargs):
            with open(os.path.join(out_dir, filename), "wb") as f:
                f.write(b"half")
                if self.die:
                    raise SystemExit("killed while writing")
                f.write(b" and whole")

    runner = Runner()
    with pytest.raises(SystemExit):
        hook._save_checkpoint_with_step(runner, 2, {})
    assert (tmp_path / "iter_1.pth").read_bytes() == b"good"
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_1.pth")
    assert not (tmp_path / "iter_2.pth").exists()

    runner.die = False
    hook.keep_ckpt_ids = deque([1])
    hook._save_checkpoint_with_step(runner, 2, {})
    assert (tmp_path / "iter_2.pth").read_bytes() == b"half and whole"
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_2.pth")
    assert not (tmp_path / "iter_1.pth").exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("source", ["folder", "hf"])
def test_folder_and_hf_sources_pretrain(tmp_path, source):
    if source == "folder":
        root = _folder(tmp_path / "data", bad=False)
        extra = []
    else:
        hfds = pytest.importorskip("datasets")
        rng = np.random.default_rng(0)
        imgs = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(8)]
        root = tmp_path / "hf"
        hfds.Dataset.from_dict({"image": imgs}, features=hfds.Features({"image": hfds.Image()})).save_to_disk(str(root))
        extra = ["train_dataloader.dataset.label_key=None"]
    wd = tmp_path / "run"
    rc = run_cli(["pretrain", "--config", TINY_CFG, "--work-dir", str(wd), "--cfg-options", *TINY_OPTS,
                  "train_cfg.max_iters=2", "train_dataloader.batch_size=4", f"train_dataloader.dataset.source={source}",
                  f"train_dataloader.dataset.root={root}", *extra])
    assert rc == 0
    f = final(wd)
    assert f["status"] == "ok" and f["steps"] == 2 and math.isfinite(f["final_loss"])


@pytest.mark.skipif(not FASHION, reason="Fashion-MNIST (Debian dataset-fashion-mnist) is not installed")
def test_mosaic_source_is_the_seg_sets_image_distribution_without_labels(tmp_path):
    """source='fashion_mosaic': unlabelled 56 px canvases from the split's own items, the same per index,
    different across indices, and pixel for pixel what the mosaic maker draws for that generator."""
    from nepa_eval.data.fashion import fashion_mnist_arrays, mosaic_canvas

    ds = ImageDataset(source="fashion_mosaic", split="train", limit=6, seed=3)
    assert len(ds) == 6 and set(ds.targets) == {-1}
    a, b, c = (np.asarray(ds.load_image(i))[..., 0] for i in (2, 2, 4))
    assert a.shape == (56, 56) and (a == b).all() and not (a == c).all()
    want, label = mosaic_canvas(np.random.default_rng((3, 2)), *fashion_mnist_arrays("train"))
    assert (a == want).all() and (label > 0).any()  # the canvas holds items (labels exist, the dataset drops them)

    wd = tmp_path / "run"  # the domain-pretraining recipe runs and reports a k-NN on single 28 px items
    rc = run_cli(["pretrain", "--config", "cls_configs/pretrain/nepa_tiny_fmosaic.py", "--work-dir", str(wd),
                  "--cfg-options", *[o for o in TINY_OPTS if not o.startswith("custom_hooks.2")], "train_cfg.max_iters=2",
                  "train_dataloader.batch_size=4", "knn_train.limit=40", "knn_test.limit=20"])
    assert rc == 0
    f = final(wd)
    assert f["status"] == "ok" and f["nepa_config"]["img_size"] == 56 and 0 <= f["knn_top1"] <= 100
