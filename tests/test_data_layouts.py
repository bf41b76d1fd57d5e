"""`--data` on every layout users hold, built here offline and run through the CLI: an ImageFolder root, flat and
nested folders of unlabelled images, a save_to_disk dataset, a local copy of a hub dataset repo (parquet shards), a
hub dataset name in `datasets`' cache and in the hub cache (HF_HUB_OFFLINE=1, in a child process whose Hugging Face
environment is set before anything imports), a local path that wins over the same hub name; and the resolver's
rules (split names, columns by features, clear errors)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, mean_patch_features, numpy_knn_top1, require, tiny_kwargs

require("mmengine", "mmengine")

from nepa_eval.cli import main as cli  # noqa: E402
from nepa_eval.data import DataError  # noqa: E402
from nepa_eval.data.resolve import find_columns, parquet_splits, pick_split, resolve_data  # noqa: E402

CLASSES = ["cat", "dog", "emu"]
HUB = "ILSVRC/imagenet-1k"  # the datasets cache under this name is built below, in a temporary HF_HOME
SNAP = "nepa-test/snapshot-only"  # only in the hub cache (a snapshot of the repo), not in datasets' cache
SHA = "0123456789abcdef0123456789abcdef01234567"
PRETRAIN_OPTS = ["model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2",
                 "model.backbone.mlp_hidden=64", "train_dataloader.batch_size=4", "train_dataloader.num_workers=0",
                 "train_dataloader.persistent_workers=False", "train_cfg.max_iters=2", "default_hooks.knn.batch_size=8",
                 "default_hooks.checkpoint.interval=2"]


def _images():
    """6 training images (labels 0 1 2 0 1 2) and 3 validation images, each a noisy copy of a training one."""
    rng = np.random.default_rng(0)
    train = [(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), y) for y in (0, 1, 2, 0, 1, 2)]
    val = [(np.clip(train[j][0].astype(int) + rng.integers(-20, 20, (16, 16, 3)), 0, 255).astype(np.uint8),
            train[j][1]) for j in (0, 4, 2)]
    return train, val


TRAIN, VAL = _images()


def write_folder(root: Path, splits=(("train", TRAIN), ("validation", VAL))) -> Path:
    for split, items in splits:
        for k, (a, y) in enumerate(items):
            p = root / split / CLASSES[y] / f"{k}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(p)
    return root


def hf_split(items):
    import datasets as hf

    feats = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=CLASSES)})
    return hf.Dataset.from_dict({"image": [Image.fromarray(a) for a, _ in items], "label": [y for _, y in items]},
                                features=feats)


def write_parquet_repo(root: Path) -> Path:
    """A hub dataset repo as a local copy holds it: README.md and parquet shards named <split>-NNNNN-of-NNNNN."""
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text("---\nlicense: other\n---\n# a tiny test set\n")
    hf_split(TRAIN[:4]).to_parquet(str(root / "data/train-00000-of-00002.parquet"))
    hf_split(TRAIN[4:]).to_parquet(str(root / "data/train-00001-of-00002.parquet"))
    hf_split(VAL).to_parquet(str(root / "data/validation-00000-of-00001.parquet"))
    return root


def build_hub_cache(repo: Path, cache_dir: Path, name: str) -> Path:
    """The datasets cache of hub dataset `name` (<cache>/OWNER___NAME/default/0.0.0/<sha>), written by datasets'
    own parquet builder from the repo's shards, as a load_dataset(name) with network leaves it."""
    from datasets.data_files import DataFilesDict, get_data_patterns
    from datasets.packaged_modules.parquet.parquet import Parquet

    builder = Parquet(cache_dir=str(cache_dir), dataset_name=name.split("/")[1], repo_id=name, hash=SHA)
    # set after construction: the builder checks that a hub repo's data files are hf:// URLs of that repo
    builder.config.data_files = DataFilesDict.from_patterns(get_data_patterns(str(repo)), base_path=str(repo))
    builder.download_and_prepare()
    return Path(builder.cache_dir)


def build_hub_snapshot(repo: Path, hub_cache: Path, name: str) -> Path:
    """huggingface_hub's cache of dataset repo `name`: datasets--OWNER--NAME/{refs/main, snapshots/<sha>/...}."""
    base = hub_cache / f"datasets--{name.replace('/', '--')}"
    shutil.copytree(repo, base / "snapshots" / SHA)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(SHA)
    return base


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch

    from backbones.nepa import NepaViT, save_checkpoint

    torch.manual_seed(0)
    return str(save_checkpoint(NepaViT(**tiny_kwargs()), tmp_path_factory.mktemp("ck") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def expected_top1(ckpt):
    """The k-NN top-1 of these images and labels, features computed by hand (not through any data source)."""
    from backbones.nepa import from_pretrained
    from nepa_eval.data.transforms import build_transform

    model = from_pretrained(ckpt, verbose=False)
    tf = build_transform("resize", img_size=28)
    (ftr, ytr), (fte, yte) = (mean_patch_features(model, [(tf(Image.fromarray(a)), y) for a, y in items])
                              for items in (TRAIN, VAL))
    return numpy_knn_top1(ftr, ytr, fte, yte)


def knn_json(tmp_path, ckpt, data, name):
    out = tmp_path / f"{name}.json"
    assert cli(["knn", "--ckpt", ckpt, "--data", str(data), "--json", str(out)]) == 0
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------------------------
# folders, in this process
# ----------------------------------------------------------------------------------------------
def test_imagefolder_with_a_validation_split_through_knn(tmp_path, ckpt, expected_top1):
    root = write_folder(tmp_path / "folder")  # train/ and validation/: our 'val' finds 'validation'
    res = knn_json(tmp_path, ckpt, root, "folder")
    assert (res["train_images"], res["test_images"]) == (6, 3)
    assert res["knn_top1"] == pytest.approx(expected_top1)
    spec = resolve_data(str(root))
    assert spec.source == "folder" and spec.splits == ("train", "validation") and spec.split("val") == "validation"


def test_unlabelled_folders_pretrain_and_are_refused_for_classification(tmp_path, capsys):
    from mmengine.config import Config
    from mmengine.registry import DATASETS

    flat, nested = tmp_path / "flat", tmp_path / "nested"
    flat.mkdir()
    for k, (a, _) in enumerate(TRAIN):
        Image.fromarray(a).save(flat / f"img{k}.jpg")
        sub = nested / ("a/b" if k % 2 else "c") / (".hidden" if k == 5 else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(sub / f"img{k}.png")
    (nested / "notes.txt").write_text("not an image")
    wd = tmp_path / "run"  # (a flat folder is pretrained on in test_bad_files.py)
    assert cli(["pretrain", "--data", str(nested), "--work-dir", str(wd), "--cfg-options", *PRETRAIN_OPTS]) == 0
    final = json.loads((wd / "final_metrics.json").read_text())
    assert final["status"] == "ok" and final["steps"] == 2 and "knn_top1" not in final
    ds_cfg = Config.fromfile(str(wd / "config.py")).train_dataloader.dataset
    assert (ds_cfg.source, ds_cfg.root, ds_cfg.split) == ("images", str(nested), "train")
    ds = DATASETS.build(ds_cfg)
    assert len(ds) == 5 and set(ds.targets) == {-1} and ds[0][0].shape == (3, 28, 28)  # not the hidden folder's
    assert resolve_data(str(flat), labelled=False).source == "images"
    assert "k-NN monitor is off" in capsys.readouterr().err
    # classification and k-NN need labels: a flat folder is a clear error there
    assert cli(["knn", "--ckpt", "none", "--data", str(flat)]) == 2
    assert "has no class sub-folders" in capsys.readouterr().err


def test_missing_split_lists_the_splits_found(tmp_path, ckpt, capsys):
    root = write_folder(tmp_path / "train_only", splits=(("train", TRAIN),))
    assert cli(["knn", "--ckpt", ckpt, "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert "no split 'val'" in err and "the splits found: ['train']" in err


# ----------------------------------------------------------------------------------------------
# Hugging Face forms: a child process with HF_HOME, HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 set before import
# ----------------------------------------------------------------------------------------------
DRIVER = """
import contextlib, io, json, os, sys, time
from nepa_eval.cli import main
out = {}
for name, cwd, argv in json.loads(sys.argv[1]):
    os.chdir(cwd)
    err = io.StringIO()
    t = time.time()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    out[name] = dict(rc=rc, err=err.getvalue()[-3000:], seconds=round(time.time() - t, 2))
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def hub_runs(tmp_path_factory, ckpt):
    """Every Hugging Face layout through the CLI, offline, in one child process; ({name: rc, err}, paths)."""
    require("datasets", "Hugging Face datasets")
    t = tmp_path_factory.mktemp("hf_layouts")
    hf_home = t / "hf_home"
    import datasets as hf

    hf.DatasetDict(train=hf_split(TRAIN), validation=hf_split(VAL)).save_to_disk(str(t / "disk"))
    repo = write_parquet_repo(t / "repo")
    cache = build_hub_cache(repo, hf_home / "datasets", HUB)
    snapshot = build_hub_snapshot(repo, hf_home / "hub", SNAP)
    here, local = t / "cwd", t / "cwd_with_a_local_copy"
    here.mkdir()
    write_folder(local / HUB, splits=(("train", TRAIN[:3]), ("val", VAL)))  # ./ILSVRC/imagenet-1k, an ImageFolder
    paths = dict(t=t, disk=t / "disk", repo=repo, cache=cache, snapshot=snapshot)
    knn = ["knn", "--ckpt", ckpt, "--json"]
    runs = [
        ("disk", here, knn + [str(t / "disk.json"), "--data", str(t / "disk")]),
        ("disk_prefixed", here, knn + [str(t / "disk_prefixed.json"), "--data", f"hf:{t / 'disk'}"]),
        ("repo", here, knn + [str(t / "repo.json"), "--data", str(repo)]),
        ("hub", here, knn + [str(t / "hub.json"), "--data", HUB]),
        ("snapshot", here, knn + [str(t / "snapshot.json"), "--data", SNAP]),
        ("local_wins", local, knn + [str(t / "local_wins.json"), "--data", HUB]),
        ("not_cached", here, knn + [str(t / "nothing.json"), "--data", "nepa-test/not-cached"]),
        ("pretrain_hub", here, ["pretrain", "--data", HUB, "--work-dir", str(t / "pretrain_hub"), "--cfg-options",
                                *PRETRAIN_OPTS]),
        ("cls_repo", here, ["cls", "--ckpt", ckpt, "--protocol", "knn", "--config",
                            "cls_configs/linear/knn_fmnist.py", "--data", str(repo), "--work-dir", str(t / "cls_repo")]),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("HF_DATASETS_CACHE", None)
    env.pop("HF_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([(n, str(c), a) for n, c, a in runs])], cwd=here,
                       env=env, capture_output=True, text=True, timeout=600)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, r.stderr[-4000:]
    return json.loads(line[len("RESULT "):]), paths


@pytest.mark.parametrize("name", ["disk", "disk_prefixed", "repo", "hub", "snapshot"])
def test_hugging_face_layouts_through_knn(hub_runs, name, expected_top1):
    runs, paths = hub_runs
    assert runs[name]["rc"] == 0, runs[name]["err"]
    res = json.loads((paths["t"] / f"{name}.json").read_text())
    assert (res["train_images"], res["test_images"]) == (6, 3)  # both train shards, the validation split
    assert res["knn_top1"] == pytest.approx(expected_top1)  # the labels read are the labels written


def test_hub_layouts_are_the_ones_datasets_and_huggingface_hub_use(hub_runs):
    _, paths = hub_runs
    assert paths["cache"].relative_to(paths["t"]).as_posix() == \
        f"hf_home/datasets/ILSVRC___imagenet-1k/default/0.0.0/{SHA}"
    assert (paths["cache"] / "dataset_info.json").exists()
    assert (paths["snapshot"] / "snapshots" / SHA / "data" / "validation-00000-of-00001.parquet").exists()


def test_a_local_path_wins_over_the_hub_name(hub_runs):
    runs, paths = hub_runs
    assert runs["local_wins"]["rc"] == 0, runs["local_wins"]["err"]
    res = json.loads((paths["t"] / "local_wins.json").read_text())
    assert (res["train_images"], res["test_images"]) == (3, 3)  # ./ILSVRC/imagenet-1k, not the cached hub set


def test_a_hub_name_not_cached_offline_says_how_to_fetch_it(hub_runs):
    runs, _ = hub_runs
    assert runs["not_cached"]["rc"] == 2
    err = runs["not_cached"]["err"]
    assert "nepa-test/not-cached" in err and "datasets cache" in err and "hub cache" in err
    assert "load_dataset('nepa-test/not-cached')" in err and "Traceback" not in err


def test_pretrain_on_a_hub_name_and_cls_on_a_repo_copy(hub_runs):
    runs, paths = hub_runs
    for name in ("pretrain_hub", "cls_repo"):
        assert runs[name]["rc"] == 0, runs[name]["err"]
    pre = json.loads((paths["t"] / "pretrain_hub" / "final_metrics.json").read_text())
    assert pre["status"] == "ok" and pre["steps"] == 2 and "knn_top1" in pre  # the monitor followed the data
    cfg_text = (paths["t"] / "pretrain_hub" / "config.py").read_text()
    assert "source='hub'" in cfg_text and "split='validation'" in cfg_text and "label_key=None" in cfg_text
    cls = json.loads((paths["t"] / "cls_repo" / "final_metrics.json").read_text())
    assert cls["status"] == "ok" and (cls["train_images"], cls["val_images"]) == (6, 3)
    assert cls["bad_files"] == dict(count=0, files=[], limit=100)


# ----------------------------------------------------------------------------------------------
# the resolver's rules
# ----------------------------------------------------------------------------------------------
def test_split_names_as_the_data_names_them():
    assert pick_split(["train", "validation"], "val", "d") == "validation"
    assert pick_split(["training", "val"], "validation", "d") == "val"
    assert pick_split(["train", "test"], "val", "d") == "test"  # the held-out split when there is no validation
    assert pick_split(["train", "dev"], "val", "d") == "dev"
    with pytest.raises(DataError, match=r"d has no split 'test' \(looked for test, testing\); the splits found: "
                                        r"\['train', 'validation'\]"):
        pick_split(["train", "validation"], "test", "d")
    assert resolve_data("fashion_mnist").split("val") == "test"


def test_parquet_split_names_and_columns_by_features(tmp_path):
    hf = require("datasets", "Hugging Face datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = write_parquet_repo(tmp_path / "repo")
    files = parquet_splits(repo)
    assert {k: [Path(f).name for f in v] for k, v in files.items()} == {
        "train": ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"],
        "validation": ["validation-00000-of-00001.parquet"]}
    export = tmp_path / "export"  # the hub's parquet export layout: <config>/<split>/NNNN.parquet
    for split in ("train", "validation"):
        (export / "default" / split).mkdir(parents=True)
        shutil.copy(files[split][0], export / "default" / split / "0000.parquet")
    spec = resolve_data(str(export))
    assert spec.source == "parquet" and set(spec.splits) == {"train", "validation"}
    # shards written without the Hugging Face metadata: the image is the {bytes, path} struct, the label an int
    plain = tmp_path / "plain"
    plain.mkdir()
    png = Path(files["train"][0])
    table = pq.read_table(png).replace_schema_metadata(None).rename_columns(["picture", "labels"])
    pq.write_table(table, plain / "train-00000-of-00001.parquet")
    spec = resolve_data(str(plain))
    assert spec.keys == dict(image_key="picture", label_key="labels") and spec.splits == ("train",)
    assert resolve_data(str(plain), labelled=False).keys == dict(image_key="picture", label_key=None)
    feats = hf.Features({"img": hf.Image(), "y": hf.ClassLabel(names=["a"]), "label": hf.Value("int64")})
    assert find_columns(feats, "x") == ("img", "y")  # a ClassLabel before a column merely named label
    pq.write_table(pa.table({"picture": table["picture"]}), plain / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match="no label column .* among the columns \\['picture'\\]"):
        resolve_data(str(plain))
    assert resolve_data(str(plain), labelled=False).keys["label_key"] is None


def test_resolver_errors_name_the_value_and_the_forms(tmp_path):
    with pytest.raises(DataError, match="no such file or directory, and not a hub dataset name"):
        resolve_data(str(tmp_path / "nowhere"))
    (tmp_path / "f.txt").write_text("")
    with pytest.raises(DataError, match="is a file, not a folder"):
        resolve_data(str(tmp_path / "f.txt"))
    with pytest.raises(DataError, match="give the location after 'folder:'"):
        resolve_data("folder:")
