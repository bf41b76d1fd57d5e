import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NEPA_SHARED", ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official_nepa"
FASHION = Path("/usr/share/datasets/fashion-mnist")
# the file the Fashion-MNIST loader reads first: a directory without it (a partial install) is no data set
HAVE_FASHION = (FASHION / "train-images-idx3-ubyte.gz").is_file()


# Nothing skips for a missing part: scripts/setup.sh installs every part the tests use, so a missing one is a broken
# set-up, and the tests that need it fail with a message naming it (at module level: a collection error).
def require(module: str, what: str) -> Any:
    """`module` imported, or a failure naming `what` is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{what} is missing: `import {module}` failed ({e}); scripts/setup.sh installs it", pytrace=False)


def require_fashion() -> Path:
    """Fashion-MNIST's folder, or a failure naming the missing data set."""
    if not HAVE_FASHION:
        pytest.fail(f"Fashion-MNIST is missing: no {FASHION / 'train-images-idx3-ubyte.gz'} (Debian package "
                    "dataset-fashion-mnist; scripts/setup.sh installs it)", pytrace=False)
    return FASHION


@pytest.fixture
def fashion_mnist() -> Path:
    return require_fashion()


needs_fashion = pytest.mark.usefixtures("fashion_mnist")


@pytest.fixture
def official_dir():
    if not FIXTURES.is_dir():
        pytest.fail(f"the official NEPA fixtures are missing: no {FIXTURES} (set NEPA_SHARED to the shared/ folder)",
                    pytrace=False)
    return FIXTURES


SEG_TINY_ARCH = dict(embed_dim=128, depth=4, num_heads=4, mlp_hidden=256, patch_size=7, rope_rescale=None)


@pytest.fixture(scope="session")
def tiny_mosaic(tmp_path_factory):
    """A 16 + 8 canvas Fashion-MNIST mosaic set in the ADE20K layout, written once per test session."""
    require_fashion()
    from nepa_eval.data.fashion import make_mosaic

    root = tmp_path_factory.mktemp("mosaic")
    make_mosaic(root, n_train=16, n_val=8, seed=2)
    return root


@pytest.fixture(scope="session")
def tiny_seg_backbone(tmp_path_factory) -> str:
    """A random tiny NEPA (the seg CPU configs' architecture, causal as pretrained) saved as .safetensors."""
    from backbones.nepa import NepaViT, save_checkpoint

    torch.manual_seed(0)
    return str(save_checkpoint(NepaViT(**SEG_TINY_ARCH, causal=True), tmp_path_factory.mktemp("ck") / "tiny.safetensors"))


def tiny_kwargs(**kw):
    """A very small NEPA config for fast CPU tests (head_dim 16, so RoPE has 4 frequencies per axis)."""
    base = dict(embed_dim=32, depth=2, num_heads=2, mlp_hidden=64, img_size=28, patch_size=7, rope_rescale=None)
    base.update(kw)
    return base


def numpy_knn_top1(train_f, train_y, test_f, test_y, k: int = 20, temperature: float = 0.07) -> float:
    """DINO's weighted k-NN top-1 (percent) in plain float64 numpy, written apart from nepa_eval.knn to check
    it: cosine similarity, the k nearest training features vote for their class with weight exp(cos / T)."""
    a, b = (np.asarray(f, dtype=np.float64) for f in (train_f, test_f))
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    sim = b @ a.T
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :min(k, len(a))]
    votes = np.zeros((len(b), int(max(train_y.max(), test_y.max())) + 1))
    np.add.at(votes, (np.arange(len(b))[:, None], train_y[idx]), np.exp(np.take_along_axis(sim, idx, 1) / temperature))
    return 100.0 * float((votes.argmax(1) == test_y).mean())


def mean_patch_features(model, dataset, batch: int = 100) -> tuple:
    """Features as the k-NN protocol defines them: mean of the final-normed patch tokens (cls excluded), by hand."""
    model = model.eval()
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    with torch.no_grad():
        f = torch.cat([model.forward_features(torch.stack(xs[i:i + batch]))[:, 1:].mean(1)
                       for i in range(0, len(xs), batch)])
    return f.numpy(), np.asarray(ys)
