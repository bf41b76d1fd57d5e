"""`nepa-eval analyze`: attention and next-embedding similarity maps, checked against the model's own forward."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_kwargs

from backbones.nepa import NepaViT
from nepa_eval.analyze import compute_maps, find_images
from nepa_eval.cli import main as cli_main


def foolbox_photos():
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.fail("foolbox's photos are missing: foolbox is not installed (scripts/setup.sh installs it)", pytrace=False)
    return Path(spec.submodule_search_locations[0]) / "data"


@pytest.fixture
def model():
    torch.manual_seed(0)
    return NepaViT(**tiny_kwargs(causal=True)).eval()


@torch.no_grad()
def test_maps_match_the_forward_pass(model):
    x = torch.randn(1, 3, 28, 28)
    maps = compute_maps(model, x, (1, 2))
    torch.testing.assert_close(maps.tokens, model.forward_features(x))
    z, _ = model.embed(x)
    q = 1 + 1 * 4 + 2  # cls + row 1 of a 4x4 grid + col 2
    sim = F.cosine_similarity(maps.tokens[0, q][None], z[0, 1:], dim=-1).reshape(4, 4).numpy()
    np.testing.assert_allclose(maps.similarity, sim, atol=1e-6)
    att = maps.attention.reshape(-1)
    assert att.shape == (16,) and np.all(att[7:] == 0)  # causal: nothing after the query patch (index 6)
    assert np.all(att[:7] > 0) and 0 < att.sum() <= 1 + 1e-6  # the rest of the row went to the cls token


def test_layer_and_head_averages(model):
    x = torch.randn(1, 3, 28, 28)
    one = {(l, h): compute_maps(model, x, (2, 2), [l], [h]).attention for l in (0, 1) for h in (0, 1)}
    np.testing.assert_allclose(compute_maps(model, x, (2, 2)).attention, np.mean(list(one.values()), 0), atol=1e-6)
    np.testing.assert_allclose(compute_maps(model, x, (2, 2), [-1]).attention, (one[1, 0] + one[1, 1]) / 2, atol=1e-6)
    assert not np.allclose(one[0, 0], one[1, 1])
    bi = compute_maps(model, x, (0, 0), causal=False).attention
    assert np.all(bi > 0)  # bidirectional: the first patch attends to every patch
    with pytest.raises(ValueError, match="outside"):
        compute_maps(model, x, (4, 0))


@pytest.mark.parametrize("kw", [dict(embed_dim=768, num_heads=12, depth=2, mlp_hidden=64, patch_size=14, img_size=56),
                                dict(embed_dim=48, num_heads=3, depth=3, pos_embed="abs", class_token=False)])
def test_any_model_size(kw):
    """Base's 12 heads, 3 heads, absolute positions, no class token, another input size: all the same path."""
    m = NepaViT(**tiny_kwargs(**kw)).eval()
    size = 2 * kw.get("img_size", 28)
    maps = compute_maps(m, torch.randn(1, 3, size, size), (3, 3), causal=True)
    g = size // m.patch_size
    assert maps.attention.shape == maps.similarity.shape == (g, g)
    assert maps.attention.reshape(-1)[3 * g + 4:].max() == 0
    if m.num_prefix_tokens == 0:  # no cls: each causal row sums to 1 over the patches
        assert maps.attention.sum() == pytest.approx(1.0, abs=1e-5)


def test_cli_on_release_fixture_and_photos(official_dir, tmp_path):
    photos = foolbox_photos()
    out = tmp_path / "maps"
    rc = cli_main(["analyze", "--ckpt", str(official_dir / "nepa_tiny_pretrain_causal"), "--images", str(photos),
                   "--limit", "2", "--out", str(out), "--query", "1,1", "--layers", "-1", "--size", "60"])
    assert rc == 0
    pngs = sorted(out.glob("*.png"))
    first_two = [p.stem for p in find_images(photos, 2)]
    assert [p.name for p in pngs] == sorted(f"{s}_q1-1.png" for s in first_two)
    assert all(p.stat().st_size > 20000 for p in pngs)
    assert cli_main(["analyze", "--ckpt", str(official_dir / "nepa_tiny_pretrain_causal"), "--images",
                     str(tmp_path / "nothing"), "--out", str(out)]) == 2
