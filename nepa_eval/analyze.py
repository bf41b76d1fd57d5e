"""The paper's two pictures of a NEPA model, for any size: attention maps and next-embedding similarity maps.

- attention map: for a query patch, its attention row over the patches, averaged over chosen layers and heads;
- next-embedding similarity map: the cosine of the query position's output (the predicted next embedding)
  with every patch embedding z of the image; the peak should sit on the patch that comes next.
Head count, depth, grid and prefix tokens are read from the model, so Tiny to Large all work.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from backbones.nepa import NepaViT

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class Maps:
    """Per-patch maps (grid_h, grid_w) for one image and one query patch."""

    query: tuple[int, int]
    attention: np.ndarray  # attention of the query over the patches, averaged over layers and heads
    similarity: np.ndarray  # cos(h[query], z[patch]) for every patch
    tokens: torch.Tensor  # final-normed outputs h (1, prefix + N, D), for checks


def find_images(src: str | os.PathLike, limit: Optional[int] = None) -> list[Path]:
    """An image file, or the images under a folder (sorted, recursive)."""
    p = Path(src)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"--images: no such file or folder: {p}")
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS and f.is_file())
    if not files:
        raise FileNotFoundError(f"--images: no images ({', '.join(IMG_EXTENSIONS)}) under {p}")
    return files[:limit] if limit else files


def load_image(path: Path, size: int) -> tuple[np.ndarray, torch.Tensor]:
    """(RGB uint8 array size x size for drawing, normalised tensor (1, 3, size, size), mean/std 0.5)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    s = min(w, h)  # centre square, then resize: the model sees what is drawn
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.BICUBIC)
    arr = np.asarray(im)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
    return arr, x[None]


def _pick(spec: Optional[Sequence[int]], n: int) -> list[int]:
    """Indices chosen by the user (negative counts from the end), or all."""
    if not spec:
        return list(range(n))
    out = sorted({i % n for i in spec})
    bad = [i for i in spec if not -n <= i < n]
    if bad:
        raise ValueError(f"indices {bad} out of range for {n}")
    return out


@torch.no_grad()
def compute_maps(model: NepaViT, x: torch.Tensor, query: tuple[int, int], layers: Optional[Sequence[int]] = None,
                 heads: Optional[Sequence[int]] = None, causal: Optional[bool] = None) -> Maps:
    """Attention and next-embedding similarity maps of one query patch (row, col) for one image x (1, 3, H, W)."""
    model.eval()
    causal = model.causal if causal is None else causal
    z, grid = model.embed(x)
    gh, gw = grid
    r, c = query
    if not (0 <= r < gh and 0 <= c < gw):
        raise ValueError(f"query patch {query} is outside the {gh}x{gw} patch grid")
    n = model.num_prefix_tokens
    q_tok = n + r * gw + c
    layer_ids = set(_pick(layers, len(model.blocks)))
    head_ids = _pick(heads, model.blocks[0].attn.num_heads)
    captured: dict[int, tuple] = {}  # the inputs each chosen attention sees in the ordinary forward pass
    hooks = [blk.attn.register_forward_pre_hook(lambda mod, args, i=i: captured.__setitem__(i, args))
             for i, blk in enumerate(model.blocks) if i in layer_ids]
    try:
        h = model.forward_tokens(z, grid, causal)
    finally:
        for hk in hooks:
            hk.remove()
    rows = []
    for i in sorted(captured):
        probs = model.blocks[i].attn.attention_probs(*captured[i])  # (1, heads, T, T)
        rows.append(probs[0, head_ids, q_tok, n:].mean(0))
    attention = torch.stack(rows).mean(0).reshape(gh, gw)
    similarity = F.cosine_similarity(h[0, q_tok][None], z[0, n:], dim=-1).reshape(gh, gw)
    return Maps(query, attention.float().numpy(), similarity.float().numpy(), h)


def _overlay(ax, img: np.ndarray, m: np.ndarray, title: str, cmap: str, query: tuple[int, int], patch: int,
             vmin: Optional[float] = None, vmax: Optional[float] = None) -> None:
    import matplotlib.patches as mpatches

    H, W = img.shape[:2]
    ax.imshow(img)
    im = ax.imshow(m, cmap=cmap, alpha=0.6, extent=(0, W, H, 0), interpolation="nearest", vmin=vmin, vmax=vmax)
    r, c = query
    ax.add_patch(mpatches.Rectangle((c * patch, r * patch), patch, patch, fill=False, ec="white", lw=2))
    nr, nc = divmod(r * m.shape[1] + c + 1, m.shape[1])
    if nr < m.shape[0]:  # the patch the query position predicts
        ax.add_patch(mpatches.Rectangle((nc * patch, nr * patch), patch, patch, fill=False, ec="yellow", lw=1.5,
                                        ls="--"))
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)


def draw(img: np.ndarray, maps: Maps, patch: int, path: Path, caption: str = "") -> Path:
    """image | attention map | next-embedding similarity map, the query patch boxed (next patch dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    axes[0].imshow(img)
    axes[0].set_title(f"query patch {maps.query}", fontsize=9)
    axes[0].axis("off")
    _overlay(axes[1], img, maps.attention, "attention of the query patch", "inferno", maps.query, patch, vmin=0)
    _overlay(axes[2], img, maps.similarity, "cos(output at query, patch embeddings)", "coolwarm", maps.query, patch,
             vmin=-1, vmax=1)
    if caption:
        fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def default_queries(grid: tuple[int, int]) -> list[tuple[int, int]]:
    """The centre patch and one a quarter of the way in: two views of the same image."""
    gh, gw = grid
    return [(gh // 2, gw // 2), (gh // 4, gw // 4)]


def analyze(model: NepaViT, images: list[Path], out: Path, size: Optional[int] = None,
            queries: Optional[list[tuple[int, int]]] = None, layers: Optional[Sequence[int]] = None,
            heads: Optional[Sequence[int]] = None, causal: Optional[bool] = None, progress: bool = True) -> list[Path]:
    """Draw the maps of every image and query into `out`; returns the PNG paths."""
    p = model.patch_size
    size = size or model.cfg.img_size
    size = max(p, round(size / p) * p)
    grid = (size // p, size // p)
    qs = queries or default_queries(grid)
    causal = model.causal if causal is None else causal
    layer_txt = "all layers" if not layers else f"layers {list(layers)}"
    head_txt = "all heads" if not heads else f"heads {list(heads)}"
    it = images
    if progress:
        from tqdm import tqdm

        it = tqdm(images, desc="analyze", unit="img")
    written = []
    for f in it:
        img, x = load_image(f, size)
        for q in qs:
            maps = compute_maps(model, x, q, layers, heads, causal)
            cap = (f"{f.name}: {size}px, {grid[0]}x{grid[1]} patches, {'causal' if causal else 'bidirectional'}, "
                   f"{layer_txt}, {head_txt}")
            written.append(draw(img, maps, p, out / f"{f.stem}_q{q[0]}-{q[1]}.png", cap))
    return written
