"""The data package: each registered source, built through mmengine's DATASETS, gives the images, labels, order
and subsets the single ImageDataset gave before the package was split (pixel sums and labels at fixed indices
recorded from it), `ImageDataset(source=...)` still picks them by name, and the mosaic set on disk is unchanged."""
import ast
import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, needs_fashion, require

require("mmengine", "mmengine")

from mmengine.registry import DATASETS, FUNCTIONS  # noqa: E402

from nepa_eval.data import DataError  # noqa: E402
from nepa_eval.data.fashion import FASHION_CLASSES, fashion_mnist_arrays, make_mosaic, mosaic_canvas  # noqa: E402
from nepa_eval.data.sources import ImageDataset, ImageFolderDataset  # noqa: E402
from nepa_eval.data.transforms import collate  # noqa: E402

def pixels(ds, i: int) -> tuple[int, int]:
    """(sum of image i's RGB uint8 pixels, label i): a fingerprint of one item."""
    img, label = ds[i]
    return int(np.asarray(img, np.int64).sum()), label


@needs_fashion
@pytest.mark.parametrize("kw, n, head, items", [
    (dict(split="val", limit=50, seed=0), 50, [9, 2, 0, 4, 7, 6, 7, 3, 8, 0, 5, 0],
     {0: (169215, 9), 7: (153327, 3), 49: (293043, 4)}),
    (dict(split="train", limit=20, seed=4), 20, [8, 3, 8, 1, 4, 5, 7, 1, 4, 9, 1, 8], {3: (110655, 1), 19: (176739, 6)}),
])
def test_fashion_mnist_source(kw, n, head, items):
    ds = DATASETS.build(dict(type="FashionMNISTDataset", **kw))
    assert len(ds) == n and ds.targets[:12] == head and ds.classes == list(FASHION_CLASSES) and ds.num_classes == 10
    assert {i: pixels(ds, i) for i in items} == items
    assert np.asarray(ds.load_image(0)).shape == (28, 28, 3)
    by_name = ImageDataset(source="fashion_mnist", **kw)
    assert by_name.targets == ds.targets and {i: pixels(by_name, i) for i in items} == items


@needs_fashion
def test_fashion_mnist_errors_and_transform():
    with pytest.raises(DataError, match="splits train and test .* not 'dev'"):
        DATASETS.build(dict(type="FashionMNISTDataset", split="dev"))
    with pytest.raises(DataError, match="dataset fashion_mnist::val is empty"):
        ImageDataset(source="fashion_mnist", split="val", limit=0)
    ds = ImageDataset("fashion_mnist", split="val", limit=5, transform=dict(kind="resize", img_size=32))
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() < x.max() <= 1 and y == ds.targets[3]


@needs_fashion
@pytest.mark.parametrize("kw, items, side", [
    (dict(split="train", limit=6, seed=3), {0: (278358, -1), 2: (562338, -1), 5: (351174, -1)}, 56),
    (dict(split="test", limit=4, seed=1, mosaic=dict(size=84, items=(1, 1), noise=0.0)),
     {0: (149115, -1), 3: (195954, -1)}, 84),
])
def test_fashion_mosaic_source(kw, items, side):
    ds = DATASETS.build(dict(type="FashionMosaicImages", **kw))
    assert len(ds) == kw["limit"] and set(ds.targets) == {-1} and ds.classes == []
    assert {i: pixels(ds, i) for i in items} == items
    a = np.asarray(ds.load_image(1))[..., 0]
    want, _ = mosaic_canvas(np.random.default_rng((kw["seed"], 1)), *fashion_mnist_arrays(kw["split"]),
                            **kw.get("mosaic", {}))
    assert a.shape == (side, side) and (a == want).all()
    by_name = ImageDataset(source="fashion_mosaic", **kw)
    assert {i: pixels(by_name, i) for i in items} == items
    assert len(ImageDataset(source="fashion_mosaic", split="test")) == 10000  # one canvas per item by default


def _tree(root, files) -> None:
    """Images whose pixels all equal 10 * (their position in `files`); .txt files are not images."""
    for k, f in enumerate(files):
        p = root / f
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".txt":
            p.write_text("not an image")
        else:
            fmt = {".jpg": "PNG", ".jpeg": "PNG", ".webp": "PNG", ".tif": "TIFF"}.get(p.suffix.lower())
            Image.fromarray(np.full((5, 4, 3), 10 * k, np.uint8)).save(p, format=fmt)


FILES = ["train/cat/a.png", "train/cat/sub/b.png", "train/cat/z.jpg", "train/cat/sub/deeper/c.bmp", "train/cat/B.PNG",
         "train/dog/d.JPEG", "train/dog/e.webp", "train/dog/notes.txt", "train/zebra/f.tif", "train/zebra/g.ppm",
         "val/cat/h.png", "val/dog/i.png", "val/emu/j.png"]
# what the hand-written loader gave on this tree: classes sorted (an empty one counts), each class's files in
# path order (sub-folders among the files), every image extension in any case, other files skipped
TRAIN_ORDER = ["cat/B.PNG", "cat/a.png", "cat/sub/b.png", "cat/sub/deeper/c.bmp", "cat/z.jpg", "dog/d.JPEG",
               "dog/e.webp", "zebra/f.tif", "zebra/g.ppm"]
TRAIN_LABELS = [0, 0, 0, 0, 0, 1, 1, 3, 3]


def test_folder_source(tmp_path):
    _tree(tmp_path, FILES)
    (tmp_path / "train" / "empty").mkdir()
    ds = DATASETS.build(dict(type="ImageFolderDataset", root=str(tmp_path), split="train"))
    assert isinstance(ds, ImageFolderDataset) and ds.classes == ["cat", "dog", "empty", "zebra"] and ds.num_classes == 4
    assert [p for p, _ in ds.samples] == [str(tmp_path / "train" / f) for f in TRAIN_ORDER]
    assert ds.targets == TRAIN_LABELS and len(ds) == 9
    assert [pixels(ds, i) for i in range(len(ds))] == [(FILES.index(f"train/{f}") * 10 * 60, y)
                                                       for f, y in zip(TRAIN_ORDER, TRAIN_LABELS)]
    sub = DATASETS.build(dict(type="ImageFolderDataset", root=str(tmp_path), limit=4, seed=2))
    assert [p for p, _ in sub.samples] == [str(tmp_path / "train" / f) for f in
                                           ("cat/sub/b.png", "dog/d.JPEG", "dog/e.webp", "zebra/f.tif")]
    assert sub.targets == [0, 1, 1, 3] and pixels(sub, 1) == (FILES.index("train/dog/d.JPEG") * 600, 1)
    val = ImageDataset(source="folder", root=str(tmp_path), split="val")
    assert val.classes == ["cat", "dog", "emu"] and val.targets == [0, 1, 2] and pixels(val, 2) == (12 * 600, 2)
    train_only = ImageDataset(source="folder", root=str(tmp_path / "train"))  # no train/ inside: root is the split
    assert train_only.targets == TRAIN_LABELS and train_only.load_image(8).size == (4, 5)


def test_folder_source_errors_name_the_folder_and_the_fix(tmp_path):
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert set(IMG_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
    with pytest.raises(DataError, match="needs a root directory"):
        ImageDataset(source="folder")
    with pytest.raises(DataError, match=f"image folder not found: {tmp_path}/val .*<class>/<image>"):
        DATASETS.build(dict(type="ImageFolderDataset", root=str(tmp_path), split="val"))
    (tmp_path / "flat.png").write_text("")
    with pytest.raises(DataError, match=f"{tmp_path} has no class sub-folders"):
        ImageDataset(source="folder", root=str(tmp_path))
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "a.txt").write_text("")
    with pytest.raises(DataError, match="holds no images with extensions"):
        ImageDataset(source="folder", root=str(tmp_path))
    (tmp_path / "cls" / "broken.png").write_text("not a png")
    ds = ImageDataset(source="folder", root=str(tmp_path))
    with pytest.raises(DataError, match="unreadable image .*broken.png"):
        ds[0]
    with pytest.raises(DataError, match=f"dataset folder:{tmp_path}:train is empty"):
        ImageDataset(source="folder", root=str(tmp_path), limit=0)
    with pytest.raises(DataError, match="unknown data source 'nope'; choose fashion_mnist, folder, images, hf, parquet, hub, fashion_mosaic"):
        ImageDataset(source="nope")


def test_hf_source(tmp_path):
    hf = require("datasets", "Hugging Face datasets")
    rng = np.random.default_rng(0)
    feats = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=["a", "b", "c", "d"])})
    arrays = {s: [rng.integers(0, 255, (6, 5, 3), dtype=np.uint8) for _ in range(n)] for s, n in (("t", 9), ("v", 6))}

    def split(s: str):
        return hf.Dataset.from_dict({"image": [Image.fromarray(a) for a in arrays[s]],
                                     "label": [(3 * i) % 4 for i in range(len(arrays[s]))]}, features=feats)

    hf.DatasetDict(train=split("t"), validation=split("v")).save_to_disk(str(tmp_path / "hf"))
    root = str(tmp_path / "hf")
    ds = DATASETS.build(dict(type="HFDiskDataset", root=root))
    assert ds.targets == [0, 3, 2, 1, 0, 3, 2, 1, 0] and ds.classes == ["a", "b", "c", "d"]
    assert (np.asarray(ds.load_image(4)) == arrays["t"][4]).all() and ds[4][1] == 0
    val = ImageDataset(source="hf", root=root, split="val", limit=4, seed=5)  # 'val' finds 'validation'
    assert val.targets == [3, 2, 1, 0] and (np.asarray(val.load_image(0)) == arrays["v"][1]).all()
    unlabelled = DATASETS.build(dict(type="HFDiskDataset", root=root, label_key=None))
    assert unlabelled.targets == [-1] * 9 and unlabelled.classes == []
    with pytest.raises(DataError, match=r"has no split 'test' .*the splits found: \['train', 'validation'\]"):
        ImageDataset(source="hf", root=root, split="test")
    with pytest.raises(DataError, match="no column 'pic'.*set image_key/label_key"):
        ImageDataset(source="hf", root=root, image_key="pic")
    with pytest.raises(DataError, match="Hugging Face dataset directory not found"):
        ImageDataset(source="hf", root=str(tmp_path / "missing"))


def test_collate_is_registered():
    assert FUNCTIONS.get("nepa_collate") is collate
    out = collate([(torch.zeros(3, 4, 4), 1), (torch.ones(3, 4, 4), 7)])
    assert out["inputs"].shape == (2, 3, 4, 4) and out["labels"].tolist() == [1, 7]


@needs_fashion
def test_mosaic_set_on_disk_is_unchanged(tmp_path):
    """Decoded pixels, labels and mosaic.json of a small set, recorded from the mosaic maker before the move."""
    root = make_mosaic(tmp_path, n_train=3, n_val=2, seed=5)

    def digest(kind: str) -> str:
        h = hashlib.sha256()
        for f in sorted((root / kind).rglob("*.*")):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(np.asarray(Image.open(f)).tobytes())
        return h.hexdigest()[:16]

    assert (digest("images"), digest("annotations")) == ("dcf8121238a2a6a8", "c265d0c7968f61f9")
    assert hashlib.sha256((root / "mosaic.json").read_bytes()).hexdigest()[:16] == "ec67b6c43231a8d2"


def test_light_imports():
    """The package and the mosaic maker import neither torch nor mmengine (make-data stays light), and no module
    of the package but seg names mmseg in an import."""
    code = ("import sys; import nepa_eval.data, nepa_eval.data.fashion, nepa_eval.data.ade, nepa_eval.data.resolve, "
            "nepa_eval.data.bad_files; "
            "assert not {'torch', 'mmengine', 'mmseg'} & set(sys.modules), sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for f in sorted((ROOT / "nepa_eval" / "data").glob("*.py")):
        names = {a.name for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.ImportFrom) and n.module}
        assert any(m.startswith("mmseg") for m in names) == (f.name == "seg.py"), (f.name, names)


def test_seg_configs_import_the_mosaic_dataset_from_the_data_package():
    require("mmseg", "mmsegmentation with compiled mmcv ops")
    from mmengine.config import Config
    from mmseg.registry import DATASETS as SEG_DATASETS

    cfg = Config.fromfile(str(ROOT / "seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py"))
    assert "nepa_eval.data.seg" in cfg.custom_imports.imports
    from nepa_eval.data.seg import MOSAIC_CLASSES, FashionMosaicDataset

    assert SEG_DATASETS.get(cfg.train_dataloader.dataset.type) is FashionMosaicDataset
    assert FashionMosaicDataset.METAINFO["classes"] == MOSAIC_CLASSES and len(MOSAIC_CLASSES) == 11
