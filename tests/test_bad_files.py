"""Bad files never end a long run unannounced: an unreadable image (or, for segmentation, an annotation whose size
differs from its image) is skipped for the next good item, warned about by name, counted across DataLoader worker
processes and listed in final_metrics.json; past the bound the run fails naming the files; --check-data decodes
everything first and stops before training. Real runs through the CLI, at tiny size."""
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, require, require_fashion, tiny_kwargs

require("mmengine", "mmengine")

from mmengine.registry import DATASETS  # noqa: E402

from nepa_eval.cli import main as cli  # noqa: E402
from nepa_eval.data import DataError, bad_files  # noqa: E402
from nepa_eval.data.sources import ImageDataset  # noqa: E402


def truncated_jpeg(path: Path, seed: int = 0) -> Path:
    """A JPEG cut in half: its header (and so its size) reads, its pixels do not decode (PIL nor OpenCV)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=95)
    path.write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    with Image.open(path) as im:
        assert im.size == (56, 56)  # the header is fine
    return path


def write_images(root: Path, n: int, bad: tuple = (), classes: int = 0) -> list[Path]:
    """n small images (in `classes` class folders, or flat), those at indices `bad` truncated."""
    rng = np.random.default_rng(1)
    files = []
    for k in range(n):
        d = root / f"c{k % classes}" if classes else root
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"img{k:02d}.jpg"
        if k in bad:
            truncated_jpeg(p, seed=k)
        else:
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p, quality=95)
        files.append(p)
    return files


def final(wd: Path) -> dict:
    return json.loads((wd / "final_metrics.json").read_text())


def run_log(wd: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(wd.rglob("*.log")))


# ----------------------------------------------------------------------------------------------
# the datasets
# ----------------------------------------------------------------------------------------------
def test_a_bad_image_is_replaced_by_the_next_good_one_and_reported(tmp_path, capsys):
    files = write_images(tmp_path / "imgs", 4, bad=(1, 2))
    ds = ImageDataset(source="images", root=str(tmp_path / "imgs"), transform=dict(kind="resize", img_size=16))
    x1, y1 = ds[1]
    x3, _ = ds[3]
    assert torch.equal(x1, x3) and y1 == -1 and torch.equal(ds[1][0], x1)  # the next good item, every time
    err = capsys.readouterr().err
    assert f"skipped bad file {files[1]}" in err and f"skipped bad file {files[2]}" in err
    assert ds.check_item(0) is None and ds.check_item(2)[0] == str(files[2])
    # with a run collecting them: appended to its list (what DataLoader workers do), nothing on stderr
    log = tmp_path / "bad_files.jsonl"
    previous = bad_files.start_collecting(log, min_files=2)
    try:
        ds[1]
        records, _ = bad_files.read_records(log)
        assert [r["file"] for r in records] == [str(files[1]), str(files[2])] and capsys.readouterr().err == ""
        assert "OSError" in records[0]["reason"] and records[0]["pid"] == os.getpid()
        # past the bound (here 1 file) this process stops, naming the files
        bad_files.start_collecting(log, min_files=1)
        with pytest.raises(bad_files.BadFileError, match=f"2 bad files, more than the 1 .*{files[1].name}"):
            ds[1]
    finally:
        bad_files.stop_collecting(previous)
    assert bad_files.ENV not in os.environ


def test_a_bad_hugging_face_row_is_named_by_row_and_skipped(tmp_path):
    hf = require("datasets", "Hugging Face datasets")
    imgs = [Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)) for k in range(3)]
    ds = hf.Dataset.from_dict({"image": imgs, "label": [0, 1, 2]}, features=hf.Features(
        {"image": hf.Image(), "label": hf.ClassLabel(names=["a", "b", "c"])}))
    ds = ds.cast_column("image", hf.Image(decode=False))
    rows = ds.to_dict()
    rows["image"][1] = {"bytes": b"\x89PNG broken", "path": "b/broken.png"}
    hf.Dataset.from_dict(rows, features=ds.features).cast_column("image", hf.Image()).save_to_disk(str(tmp_path / "d"))
    src = DATASETS.build(dict(type="HFDiskDataset", root=str(tmp_path / "d")))
    assert src.check_item(1)[0] == f"{tmp_path / 'd'}:train row 1 (broken.png)"  # datasets keeps the name
    img, label = src[1]
    assert label == 2 and np.asarray(img)[0, 0, 0] == 80  # row 2 instead


def test_all_bad_is_a_clear_error(tmp_path):
    write_images(tmp_path / "imgs", 2, bad=(0, 1))
    ds = ImageDataset(source="images", root=str(tmp_path / "imgs"))
    with pytest.raises(DataError, match="none of the 2 images .* can be read; the last: unreadable image"):
        ds[0]


# ----------------------------------------------------------------------------------------------
# runs: pretrain (a bad file in a DataLoader worker process), the bound, --check-data (cls)
# ----------------------------------------------------------------------------------------------
PRETRAIN = ["model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2",
            "model.backbone.mlp_hidden=64", "train_dataloader.batch_size=4", "train_dataloader.num_workers=1",
            "train_dataloader.persistent_workers=False", "train_cfg.max_iters=2", "default_hooks.checkpoint.interval=2"]


def test_pretrain_skips_a_bad_file_met_in_a_worker_process(tmp_path):
    files = write_images(tmp_path / "flat", 8, bad=(5,))
    wd = tmp_path / "run"
    # 2 steps of 4 from 8 images: the sampler's first pass draws every image, the bad one in the worker
    assert cli(["pretrain", "--data", str(tmp_path / "flat"), "--work-dir", str(wd), "--cfg-options", *PRETRAIN]) == 0
    f = final(wd)
    assert f["status"] == "ok" and f["steps"] == 2
    assert f["bad_files"]["count"] == 1 and f["bad_files"]["limit"] == 100
    assert [r["file"] for r in f["bad_files"]["files"]] == [str(files[5])]
    records, _ = bad_files.read_records(wd / "bad_files.jsonl")
    assert {r["file"] for r in records} == {str(files[5])} and all(r["pid"] != os.getpid() for r in records)
    assert f"[nepa] bad file skipped: {files[5]}" in run_log(wd)
    assert bad_files.ENV not in os.environ  # the run's collection ended with it


def test_past_the_bound_the_run_fails_naming_the_files(tmp_path, capsys):
    files = write_images(tmp_path / "flat", 8, bad=(2, 5))
    wd = tmp_path / "run"
    rc = cli(["pretrain", "--data", str(tmp_path / "flat"), "--work-dir", str(wd), "--cfg-options", *PRETRAIN,
              "default_hooks.bad_files.min_files=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "2 bad files, more than the 1" in err and str(files[2]) in err and str(files[5]) in err
    f = final(wd)
    assert f["status"] == "failed" and "BadFileError" in f["reason"] and f["bad_files"]["count"] == 2


def test_check_data_lists_bad_files_and_stops_before_training(tmp_path, capsys):
    root = tmp_path / "folder"
    bad = write_images(root / "train", 6, bad=(4,), classes=2)[4]
    write_images(root / "val", 2, classes=2)
    cfg = tmp_path / "tiny.py"
    cfg.write_text(f"_base_ = ['{ROOT / 'cls_configs/finetune/nepa-t_fmnist.py'}']\n"
                   f"model = dict(backbone=dict(_delete_=True, **{dict(tiny_kwargs(), causal=False)!r}))\n"
                   "train_dataloader = dict(batch_size=2)\nval_dataloader = dict(batch_size=2)\n"
                   "train_cfg = dict(max_epochs=1)\n")
    wd = tmp_path / "run"
    rc = cli(["cls", "--ckpt", "none", "--config", str(cfg), "--data", str(root), "--work-dir", str(wd), "--check-data"])
    err = capsys.readouterr().err
    assert rc == 2 and "--check-data: 1 bad file(s), training not started" in err and str(bad) in err
    assert "checking train data" in err  # the progress bar
    f = final(wd)
    assert f["status"] == "failed" and f["steps"] == 0 and f["bad_files"]["files"][0]["file"] == str(bad)
    assert not list(wd.glob("*.pth"))
    # without --check-data the same run trains, skipping the file
    assert cli(["cls", "--ckpt", "none", "--config", str(cfg), "--data", str(root), "--work-dir", str(wd)]) == 0
    f = final(wd)
    assert f["status"] == "ok" and f["bad_files"]["count"] == 1 and f["bad_files"]["files"][0]["file"] == str(bad)


# ----------------------------------------------------------------------------------------------
# segmentation: mmseg's datasets and pipeline
# ----------------------------------------------------------------------------------------------
SEG = "seg_configs/nepa/nepa-t_linear_fashion-mosaic-56x56_cpu.py"  # mmseg's dataset and pipeline, a light head
SEG_FAST = ["train_dataloader.batch_size=4", "train_dataloader.num_workers=1", "val_dataloader.batch_size=4",
            "test_dataloader.batch_size=4", "train_cfg.max_iters=2", "train_cfg.val_interval=2",
            "default_hooks.checkpoint.interval=2"]


@pytest.fixture
def bad_mosaic(tmp_path):
    """The mosaic set (8 training, 4 validation canvases), one training image truncated (its header reads, so only
    decoding finds it) and one training annotation cropped to 50x40."""
    require("mmseg.models", "mmsegmentation with compiled mmcv ops")
    require_fashion()
    from nepa_eval.data.fashion import make_mosaic

    root = make_mosaic(tmp_path / "mosaic", n_train=8, n_val=4, seed=3)
    img = truncated_jpeg(sorted((root / "images/training").glob("*.jpg"))[2])
    ann = sorted((root / "annotations/training").glob("*.png"))[5]
    Image.fromarray(np.asarray(Image.open(ann))[:40, :50]).save(ann)
    return root, img, ann


def test_seg_pre_run_check_reads_sizes_from_headers(bad_mosaic):
    from nepa_eval.data.ade import check_seg_root

    root, img, ann = bad_mosaic
    found = []
    assert check_seg_root(root.parent, 11, False, bad=found) == {"training": 8, "validation": 4}
    its_image = root / "images" / "training" / f"{ann.stem}.jpg"
    # the truncated image's header is fine: only decoding finds it
    assert found == [(str(ann), f"annotation is 50x40, its image {its_image} is 56x56 (width x height)")]
    with pytest.raises(DataError, match="annotation is 50x40"):
        check_seg_root(root.parent, 11, False)


def test_seg_skip_bad_files_wraps_mmseg_datasets(bad_mosaic):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    root, img, ann = bad_mosaic
    cfg = Config.fromfile(str(ROOT / SEG))
    init_default_scope("mmseg")
    inner = dict(cfg.train_dataloader.dataset, data_root=str(root))
    ds = DATASETS.build(dict(type="SkipBadFiles", dataset=inner))
    names = [Path(ds.get_data_info(i)["img_path"]).name for i in range(len(ds))]
    assert len(ds) == 8 and ds.metainfo["classes"][0] == "background"
    assert ds.check_item(2) == (str(img), ds.check_item(2)[1]) and "LoadImageFromFile" in ds.check_item(2)[1]
    assert ds.check_item(5)[0] == str(ann) and ds.check_item(4) is None
    previous = bad_files.start_collecting(root / "bad.jsonl")
    try:
        assert Path(ds[2]["data_samples"].img_path).name == names[3]  # the next good item
        assert Path(ds[5]["data_samples"].img_path).name == names[6]
    finally:
        bad_files.stop_collecting(previous)
    assert [r["file"] for r in bad_files.read_records(root / "bad.jsonl")[0]] == [str(img), str(ann)]


def test_seg_run_with_a_corrupt_image_and_a_mis_sized_annotation(bad_mosaic, tmp_path, capsys):
    root, img, ann = bad_mosaic
    wd = tmp_path / "run"
    common = ["seg", "--config", SEG, "--data-root", str(root.parent), "--work-dir", str(wd)]
    assert cli([*common, "--cfg-options", *SEG_FAST]) == 0  # finishes
    f = final(wd)
    assert f["status"] == "ok" and f["steps"] == 2 and "mIoU" in f
    assert f["bad_files"]["count"] == 2 and {r["file"] for r in f["bad_files"]["files"]} == {str(img), str(ann)}
    log = run_log(wd)
    assert f"[nepa] bad file skipped: {img}" in log  # met in a DataLoader worker while training
    assert f"[nepa] bad file found before the run: {ann}" in log  # the headers' check
    capsys.readouterr()
    rc = cli([*common, "--check-data", "--cfg-options", *SEG_FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "--check-data: 2 bad file(s), training not started" in err
    assert str(img) in err and str(ann) in err and "annotation is 50x40" in err
    f = final(wd)
    assert f["status"] == "failed" and f["steps"] == 0 and f["bad_files"]["count"] == 2
