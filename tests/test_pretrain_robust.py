"""nepa-eval pretrain under failure: a NaN loss, unreadable or missing data, and a crash while a checkpoint
is being written."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import mean_patch_features, needs_fashion, numpy_knn_top1, require

require("mmengine", "mmengine")

from mmengine.registry import DATASETS  # noqa: E402

from nepa_eval.data.sources import ImageDataset  # noqa: E402

TINY_CFG = "cls_configs/pretrain/nepa_tiny_fmnist.py"
TINY_OPTS = ["model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2",
             "model.backbone.mlp_hidden=64", "train_dataloader.batch_size=8", "train_dataloader.num_workers=0",
             "train_dataloader.persistent_workers=False", "default_hooks.knn.enabled=False",
             "default_hooks.logger.interval=1", "default_hooks.health.interval=1"]


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


@needs_fashion
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


@pytest.mark.parametrize("case", ["empty", "missing"])
def test_bad_data_fails_the_run_with_the_path(tmp_path, case, capsys):
    if case == "empty":
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


def test_an_unreadable_image_is_skipped_and_listed_not_fatal(tmp_path):
    """Issue 11: one unreadable file no longer ends the run; it is skipped, named and counted."""
    root = _folder(tmp_path / "data", bad=True)
    wd = tmp_path / "run"
    rc = run_cli(["pretrain", "--config", TINY_CFG, "--work-dir", str(wd), "--cfg-options", *TINY_OPTS,
                  "train_cfg.max_iters=3", "train_dataloader.batch_size=9", "train_dataloader.dataset.source=folder",
                  f"train_dataloader.dataset.root={root}"])
    assert rc == 0
    f = final(wd)
    assert f["status"] == "ok" and f["steps"] == 3
    assert f["bad_files"]["count"] == 1 and f["bad_files"]["files"][0]["file"] == str(root / "train/a/broken.png")


class Killed(BaseException):
    """The process dying inside a write (no handler of ours catches a BaseException, as none sees a SIGKILL)."""


def test_checkpoint_dying_mid_write_never_replaces_the_last_good_one(tmp_path, monkeypatch):
    """A real run whose iteration-2 checkpoint dies half written: iteration 1's checkpoint and last_checkpoint
    stay whole, and --resume continues from it to the end, with no temp file left."""
    from mmengine.fileio.backends import LocalBackend

    from backbones.nepa import from_pretrained

    put = LocalBackend.put

    def dies_writing_iter_2(self, obj, filepath):
        if Path(filepath).name.startswith("iter_2."):
            with open(filepath, "wb") as f:
                f.write(obj[: len(obj) // 2])
            raise Killed
        return put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, "put", dies_writing_iter_2)
    wd = tmp_path / "run"
    argv = ["pretrain", "--config", TINY_CFG, "--work-dir", str(wd), "--cfg-options", *TINY_OPTS,
            "train_cfg.max_iters=2", "train_dataloader.batch_size=4", "default_hooks.checkpoint.interval=1",
            "default_hooks.checkpoint.max_keep_ckpts=1", "train_dataloader.dataset.source=folder",
            f"train_dataloader.dataset.root={_folder(tmp_path / 'data', bad=False)}"]
    with pytest.raises(Killed):
        run_cli(argv)
    assert sorted(p.name for p in wd.glob("iter_*")) == ["iter_1.pth", "iter_2.pth.tmp"]  # the half-written one
    assert (wd / "last_checkpoint").read_text() == str(wd / "iter_1.pth")
    iter_1 = from_pretrained(wd / "iter_1.pth", verbose=False).state_dict()  # whole: it loads
    died = [json.loads(x) for x in (wd / "scalars.jsonl").read_text().splitlines()]

    monkeypatch.setattr(LocalBackend, "put", put)
    assert run_cli([*argv, "--resume"]) == 0
    f = final(wd)
    assert f["status"] == "ok" and f["steps"] == 2
    assert not list(wd.glob("*.tmp"))  # the resumed run's iteration-2 checkpoint replaced the half-written file
    assert (wd / "last_checkpoint").read_text() == str(wd / "iter_2.pth")
    rows = [json.loads(x) for x in (wd / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0] == died[0]  # step 1 kept, step 2 from the resumed run
    assert not torch.equal(from_pretrained(wd / "iter_2.pth", verbose=False).patch_embed.proj.weight,
                           iter_1["patch_embed.proj.weight"])  # it trained on from iteration 1's weights


def test_max_keep_ckpts_keeps_only_the_newest(tmp_path):
    """Under the real Runner old checkpoints are deleted (mmengine's maxlen deque once hid them from pruning)."""
    wd = tmp_path / "run"
    assert run_cli(["pretrain", "--config", TINY_CFG, "--work-dir", str(wd), "--cfg-options", *TINY_OPTS,
                    "train_cfg.max_iters=3", "train_dataloader.batch_size=4", "default_hooks.checkpoint.interval=1",
                    "default_hooks.checkpoint.max_keep_ckpts=1", "train_dataloader.dataset.source=folder",
                    f"train_dataloader.dataset.root={_folder(tmp_path / 'data', bad=False)}"]) == 0
    assert sorted(p.name for p in wd.glob("iter_*")) == ["iter_3.pth"]


@pytest.mark.parametrize("source", ["folder", "hf"])
def test_folder_and_hf_sources_pretrain(tmp_path, source):
    if source == "folder":
        root = _folder(tmp_path / "data", bad=False)
        extra = []
    else:
        hfds = require("datasets", "Hugging Face datasets")
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


@needs_fashion
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
                  "--cfg-options", *[o for o in TINY_OPTS if not o.startswith("default_hooks.knn")], "train_cfg.max_iters=2",
                  "train_dataloader.batch_size=4", "knn_train.limit=40", "knn_test.limit=20"])
    assert rc == 0
    f = final(wd)
    assert f["status"] == "ok" and f["nepa_config"]["img_size"] == 56
    # the k-NN is on single items at their own 28 px (not resized to the canvas's 56): recomputed by hand
    from backbones.nepa import from_pretrained

    bb = from_pretrained(wd / "backbone.safetensors", verbose=False)
    sets = [ImageDataset(source="fashion_mnist", split=split, limit=n, transform=dict(kind="resize", img_size=28))
            for split, n in (("train", 40), ("test", 20))]
    (ftr, ytr), (fte, yte) = (mean_patch_features(bb, d) for d in sets)
    assert f["knn_top1"] == pytest.approx(numpy_knn_top1(ftr, ytr, fte, yte), abs=5.0)  # one image of 20
