import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NEPA_SHARED", ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official_nepa"
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def official_dir():
    if not FIXTURES.is_dir():
        pytest.skip(f"official fixtures not found at {FIXTURES} (set NEPA_SHARED to the shared/ folder)")
    return FIXTURES


def tiny_kwargs(**kw):
    """A very small NEPA config for fast CPU tests (head_dim 16, so RoPE has 4 frequencies per axis)."""
    base = dict(embed_dim=32, depth=2, num_heads=2, mlp_hidden=64, img_size=28, patch_size=7, rope_rescale=None)
    base.update(kw)
    return base
