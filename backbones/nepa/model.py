"""The NEPA Vision Transformer: a (causal) ViT with 2D axial RoPE, QK-Norm, LayerScale and a GeLU or SwiGLU MLP.

Pure PyTorch; nothing here imports timm, mmengine or mmseg. One class, `NepaViT`, serves as the
pretraining backbone (``num_classes=0``) and as the classifier with the public release's head
(final norm -> mean of patch tokens -> fc_norm -> zero-initialised Linear).
"""

import contextlib
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from .checkpoint import CheckpointReads, LoadReport

POS_EMBED_CHOICES = ("rope", "abs", "rope+abs", "none")
MLP_CHOICES = ("gelu", "swiglu")
POOL_CHOICES = ("avg", "token", "")


@dataclass
class NepaConfig:
    """Every architecture switch of the paper's tables; the defaults are the public release's Base."""

    img_size: int = 224
    patch_size: int = 14
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_hidden: Optional[int] = None  # None -> 4 * embed_dim
    mlp_type: str = "gelu"  # "gelu" (the release) or "swiglu" (the paper)
    qkv_bias: bool = True
    qk_norm: bool = True
    qk_norm_affine: bool = True
    qk_norm_bias: bool = False
    layerscale_init: Optional[float] = 1e-5  # None -> no LayerScale
    pos_embed: str = "rope"  # "rope", "abs" (learned, interpolated), "rope+abs", "none"
    rope_theta: float = 100.0
    rope_rescale: Optional[float] = 2.0  # train-time coordinate scale, log-uniform in [1/r, r]; None -> off
    class_token: bool = True
    causal: bool = True
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-12
    final_norm: bool = True
    pad_to_patch: bool = False  # pad inputs to a multiple of the patch instead of raising
    num_classes: int = 0
    global_pool: str = "avg"

    def __post_init__(self) -> None:
        if self.pos_embed not in POS_EMBED_CHOICES:
            raise ValueError(f"pos_embed must be one of {POS_EMBED_CHOICES}, got {self.pos_embed!r}")
        if self.mlp_type not in MLP_CHOICES:
            raise ValueError(f"mlp_type must be one of {MLP_CHOICES}, got {self.mlp_type!r}")
        if self.global_pool not in POOL_CHOICES:
            raise ValueError(f"global_pool must be one of {POOL_CHOICES}, got {self.global_pool!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if "rope" in self.pos_embed and (self.embed_dim // self.num_heads) % 4:
            raise ValueError("2D RoPE needs a head dimension divisible by 4")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        return self.mlp_hidden or 4 * self.embed_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> "NepaConfig":
        """Build from a dict, ignoring unknown keys (so newer files load in older code)."""
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown NepaConfig fields: {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**{**{k: v for k, v in d.items() if k in names}, **overrides})


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------
class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (init small, e.g. 1e-5)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def check_and_pad(x: torch.Tensor, in_chans: int, patch: int, pad: bool) -> torch.Tensor:
    """Check a (B, C, H, W) image batch; pad H and W to a multiple of the patch (bottom/right) or raise."""
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got shape {list(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} (shape {list(x.shape)})")
    H, W = x.shape[-2], x.shape[-1]
    if H % patch == 0 and W % patch == 0:
        return x
    if not pad:
        raise ValueError(
            f"input size {H}x{W} is not a multiple of the patch size {patch}; resize or crop to a multiple "
            f"(e.g. {max(H // patch * patch, patch)}x{max(W // patch * patch, patch)}), or build the model "
            "with pad_to_patch=True"
        )
    return F.pad(x, (0, (patch - W % patch) % patch, 0, (patch - H % patch) % patch))


class PatchEmbed(nn.Module):
    """Conv2d patchify, raster order, with an explicit error (or padding) for non-multiple inputs."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, pad: bool = False) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.pad = pad
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(check_and_pad(x, self.proj.in_channels, self.patch_size, self.pad))
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid


def _fx_tracing() -> bool:
    """Inside torch.fx symbolic tracing (timm's feature extraction): the device is a Proxy there."""
    if torch.jit.is_scripting():
        return False
    return _is_fx_tracing()


@torch.jit.unused
def _is_fx_tracing() -> bool:
    from torch.fx._symbolic_trace import is_fx_tracing

    return is_fx_tracing()


class Rope2D(nn.Module):
    """2D axial rotary embedding of the release (DINOv3 style): normalised patch-centre coordinates.

    Channels j and j + head_dim/2 form a rotation pair; the first quarter of the pairs rotate with
    the y coordinate, the second with x. During training the coordinates are multiplied by one
    log-uniform factor in [1/rescale, rescale] per forward pass.

    The tables come in the dtype q and k have: float32, or under autocast the autocast dtype (cast once per
    forward, not in every block). Without the training-time rescale a grid's tables are the same every forward,
    so they are computed once per (grid, prefix, device, dtype) and kept (not in compiled, traced or scripted
    code; keyed on inv_freq's identity and version, cleared when the module moves). The values are those
    computed afresh either way.
    """

    __jit_ignored_attributes__ = ["_tables_cache"]

    def __init__(self, head_dim: int, theta: float = 100.0, rescale: Optional[float] = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rescale = 1.0 if rescale is None else float(rescale)  # 1.0: off
        inv_freq = 1.0 / theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._tables_cache: dict = {}

    def forward(self, grid: tuple[int, int], device: torch.device, num_prefix: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin_signed), each (num_prefix + N, head_dim); prefix rows are the identity rotation."""
        if torch.jit.is_scripting() or _fx_tracing():
            return self.tables(grid, device, num_prefix)  # float32; apply_rope casts
        return self._cached_tables(grid, device, num_prefix)

    @torch.jit.unused
    def _cached_tables(self, grid: tuple[int, int], device: torch.device, num_prefix: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.float32
        if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        if ((self.training and self.rescale != 1.0) or torch.compiler.is_compiling() or torch.jit.is_tracing()):
            cos, sin = self.tables(grid, device, num_prefix)
            return cos.to(dtype), sin.to(dtype)
        # inv_freq's identity and version: an in-place change or a new buffer is never served stale tables;
        # inference mode: tables made there cannot be saved for a backward pass outside it
        key = (tuple(grid), num_prefix, device, dtype, torch.is_inference_mode_enabled(), id(self.inv_freq),
               self.inv_freq._version)
        hit = self._tables_cache.get(key)
        if hit is None:
            if len(self._tables_cache) >= 16:  # a few grids and dtypes in use; never grows without bound
                self._tables_cache = {}
            cos, sin = self.tables(grid, device, num_prefix)
            hit = self._tables_cache[key] = (cos.to(dtype), sin.to(dtype), self.inv_freq)
        return hit[0], hit[1]

    def _apply(self, fn, recurse: bool = True):  # .to() / .cuda() / .half(): tables of the old device go
        self._tables_cache = {}
        return super()._apply(fn, recurse)

    def tables(self, grid: tuple[int, int], device: torch.device, num_prefix: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin_signed) computed afresh in float32 (in training with the rescale drawn for this call)."""
        h, w = grid
        cy = 2 * (torch.arange(0.5, h, device=device, dtype=torch.float32) / h) - 1
        cx = 2 * (torch.arange(0.5, w, device=device, dtype=torch.float32) / w) - 1
        coords = torch.stack(torch.meshgrid(cy, cx, indexing="ij"), dim=-1).reshape(-1, 2)  # (N, 2) as (y, x)
        if self.training and self.rescale != 1.0:
            lo, hi = -math.log(self.rescale), math.log(self.rescale)
            coords = coords * torch.empty((), device=device).uniform_(lo, hi).exp()
        angles = 2 * math.pi * coords[:, :, None] * self.inv_freq.to(device)  # (N, 2, hd/4)
        angles = angles.flatten(1).repeat(1, 2)  # (N, hd): [y.., x.., y.., x..]
        angles = F.pad(angles, (0, 0, num_prefix, 0))  # angle 0 for the prefix tokens: no rotation
        half = self.head_dim // 2
        sin = angles.sin()
        # rotate_half(x) * sin == roll(x, half) * [-sin[:half], sin[half:]]: one roll instead of slices + cat
        sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        return angles.cos(), sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, hd) by the (T, hd) tables of Rope2D: x*cos + rotate_half(x)*sin."""
    half = x.shape[-1] // 2
    return x * cos.to(x.dtype) + x.roll(half, dims=-1) * sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention: fused QKV -> per-head QK-Norm -> RoPE -> SDPA (causal via is_causal)."""

    def __init__(self, cfg: NepaConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        if cfg.qk_norm:
            norm = lambda: nn.LayerNorm(  # noqa: E731 - one weight shared by all heads
                cfg.head_dim, eps=cfg.norm_eps, elementwise_affine=cfg.qk_norm_affine,
                bias=cfg.qk_norm_affine and cfg.qk_norm_bias)
            self.q_norm, self.k_norm = norm(), norm()
        else:
            self.q_norm = self.k_norm = nn.Identity()
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def _qkv(self, x: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, heads, T, head_dim); q and k normed, then rotated by RoPE."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope[0], rope[1]), apply_rope(k, rope[0], rope[1])
        return q, k, v

    def forward(self, x: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]], causal: bool) -> torch.Tensor:
        q, k, v = self._qkv(x, rope)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(x.transpose(1, 2).flatten(2))

    def attention_probs(self, x: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]],
                        causal: bool) -> torch.Tensor:
        """The (B, heads, T, T) attention matrix, for analysis only (the slow explicit path)."""
        q, k, _ = self._qkv(x, rope)
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if causal:
            T = x.shape[1]
            logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        return logits.softmax(-1)


class Mlp(nn.Module):
    """fc1 -> GeLU (exact erf) -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """Gated MLP: fc2(silu(gate) * up), gate and up computed by one fused projection `fc1` = [gate; up]."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale and drop path on both branches."""

    def __init__(self, cfg: NepaConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = (SwiGLU if cfg.mlp_type == "swiglu" else Mlp)(cfg.embed_dim, cfg.hidden_dim)
        ls = cfg.layerscale_init
        self.ls1 = LayerScale(cfg.embed_dim, ls) if ls is not None else nn.Identity()
        self.ls2 = LayerScale(cfg.embed_dim, ls) if ls is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]], causal: bool) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), rope, causal)))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
class NepaViT(nn.Module):
    """NEPA Vision Transformer: backbone (num_classes=0) or classifier with the release's head."""

    def __init__(self, cfg: Optional[NepaConfig] = None, device: Optional[torch.device | str] = None,
                 dtype: Optional[torch.dtype] = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = NepaConfig.from_dict(cfg.to_dict() if cfg else {}, **kwargs)
        self.cfg = cfg
        self.causal = cfg.causal
        self.num_prefix_tokens = 1 if cfg.class_token else 0
        self.embed_dim = self.num_features = self.head_hidden_size = cfg.embed_dim
        self.in_chans = cfg.in_chans
        self.patch_size = cfg.patch_size
        self.grad_checkpointing = False
        self.base_grid = (cfg.img_size // cfg.patch_size,) * 2
        self.global_pool = cfg.global_pool
        self.num_classes = cfg.num_classes
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=cfg.embed_dim, reduction=cfg.patch_size)
                             for i in range(cfg.depth)]
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()

        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim, pad=cfg.pad_to_patch)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.class_token else None
            self.pos_embed = (nn.Parameter(torch.zeros(1, self.base_grid[0] * self.base_grid[1], cfg.embed_dim))
                              if "abs" in cfg.pos_embed else None)
            self.rope = Rope2D(cfg.head_dim, cfg.rope_theta, cfg.rope_rescale) if "rope" in cfg.pos_embed else None
            self.blocks = nn.ModuleList([Block(cfg, dpr[i]) for i in range(cfg.depth)])
            self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.final_norm else nn.Identity()
            self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.num_classes > 0 else nn.Identity()
            self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
            self.init_weights()
        if dtype is not None:
            self.to(dtype)

    # -- init and weights ------------------------------------------------------------------------
    def init_weights(self) -> None:
        """The release's init: trunc-normal 0.02 for Linear/Conv/tokens, zero biases, zero-initialised head."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def load_pretrained(self, path: str | os.PathLike, ema: bool = False, strict: bool = True,
                        allow_new_head: bool = True) -> "LoadReport":
        """Load any checkpoint the weight door reads (timm's custom_load calls this); the report is kept on
        ``self.load_report``. Raises CheckpointError on any real mismatch (see ``checkpoint.load_weights``)."""
        from .checkpoint import load_weights  # imported here: the model file needs the door only to load

        self.load_report = load_weights(self, path, strict=strict, ema=ema, allow_new_head=allow_new_head)
        return self.load_report

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, ema: bool = False, num_classes: Optional[int] = None,
                        strict: bool = True, verbose: bool = True, checkpoint_reads: Optional["CheckpointReads"] = None,
                        **overrides: Any) -> "NepaViT":
        """Build the NEPA model a checkpoint describes and load it; eval mode, trained attention mode.

        `path`: any format the weight door reads (a file, a model directory, a Hugging Face id). `num_classes`
        replaces the head (0 drops it); `overrides` change any NepaConfig field (for example ``causal=False``
        or ``drop_path_rate=0.1``). The LoadReport is kept on ``model.load_report``. `checkpoint_reads`: the
        run's reads (`checkpoint.CheckpointReads`): the read its task already made is taken instead of a new one.
        """
        from .checkpoint import (CheckpointError, load_state_dict_into, resolve_config, take_checkpoint,
                                 to_nepa_state_dict)

        raw = take_checkpoint(path, ema, checkpoint_reads)
        sd, notes = to_nepa_state_dict(raw)
        arch = resolve_config(raw, sd, notes)
        if num_classes is not None:
            arch["num_classes"] = num_classes
        try:
            model = cls(NepaConfig.from_dict(arch, **overrides))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot build the model it describes: {e}") from e
        allow_head = num_classes is not None or arch.get("num_classes", 0) == 0
        report = load_state_dict_into(model, sd, str(path), raw.fmt, notes, strict, allow_new_head=allow_head)
        if num_classes is not None and num_classes != (sd["head.weight"].shape[0] if "head.weight" in sd else 0):
            report.notes.append(f"classifier head replaced for {num_classes} classes")
        model.load_report = report
        if verbose:
            print(f"[nepa] {report}")
        return model.eval()

    # -- pieces used by the pretraining objective and the dense adapters ---------------------------
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """z = [cls ; patchify(x)]: the NEPA targets (no position information). Returns (z, grid)."""
        z, grid = self.patch_embed(x)
        if self.cls_token is not None:
            z = torch.cat((self.cls_token.expand(z.shape[0], -1, -1).to(z.dtype), z), dim=1)
        return z, grid

    def _block_inputs(self, z: torch.Tensor, grid: tuple[int, int]
                      ) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor]]]:
        """The first block's input (z plus absolute positions, if any) and the RoPE tables of the grid."""
        x = z
        if self.pos_embed is not None:
            n = self.num_prefix_tokens
            x = torch.cat((x[:, :n], x[:, n:] + resample_abs_pos(self.pos_embed, self.base_grid, grid).to(x.dtype)),
                          dim=1)
        rope = self.rope(grid, x.device, self.num_prefix_tokens) if self.rope is not None else None
        return x, rope

    def _run_blocks(self, x: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]], causal: bool,
                    last: int, take: Optional[list[int]] = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Blocks 0..last over x: the output of block `last` and the outputs of the blocks in `take`."""
        taken: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            if i <= last:
                if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                    x = torch.utils.checkpoint.checkpoint(blk, x, rope, causal, use_reentrant=False)
                else:
                    x = blk(x, rope, causal)
                if take is not None and i in take:
                    taken.append(x)
        return x, taken

    def forward_tokens(self, z: torch.Tensor, grid: tuple[int, int], causal: Optional[bool] = None) -> torch.Tensor:
        """Transformer + final norm over input embeddings: h = norm(blocks(z)), (B, T, D)."""
        x, rope = self._block_inputs(z, grid)
        x, _ = self._run_blocks(x, rope, self.causal if causal is None else causal, len(self.blocks) - 1)
        return self.norm(x)

    # -- timm-style API --------------------------------------------------------------------------
    def set_causal(self, causal: bool) -> "NepaViT":
        """Switch the attention between causal (pretraining) and bidirectional (fine-tuning)."""
        self.causal = bool(causal)
        return self

    def forward_features(self, x: torch.Tensor, causal: Optional[bool] = None) -> torch.Tensor:
        """Final-normed tokens (B, prefix + N, D), cls first."""
        z, grid = self.embed(x)
        return self.forward_tokens(z, grid, causal)

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "avg":
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        if pool_type == "token":
            if not self.num_prefix_tokens:
                raise ValueError("global_pool='token' needs a class token")
            return x[:, 0]
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc_norm(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head (zero-initialised, on the model's device and dtype) for `num_classes`; 0 removes it."""
        if global_pool is not None:
            if global_pool not in POOL_CHOICES:
                raise ValueError(f"global_pool must be one of {POOL_CHOICES}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        w = self.patch_embed.proj.weight
        if num_classes > 0:
            if not isinstance(self.fc_norm, nn.LayerNorm):
                self.fc_norm = nn.LayerNorm(self.embed_dim, eps=self.cfg.norm_eps, device=w.device, dtype=w.dtype)
                self.fc_norm.train(self.training)
            self.head = nn.Linear(self.embed_dim, num_classes, device=w.device, dtype=w.dtype)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[int | Sequence[int]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        causal: Optional[bool] = None,
    ):
        """Outputs of chosen blocks as (B, D, h, w) maps (or NLC), with the final features unless asked not to.

        `indices` as timm's: None takes every block, an int n the last n, a sequence those (negative from the end).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError("output_fmt must be 'NCHW' or 'NLC'")
        take, last = block_indices(len(self.blocks), indices)
        if not (stop_early or intermediates_only):
            last = len(self.blocks) - 1
        z, grid = self.embed(x)
        h, rope = self._block_inputs(z, grid)
        h, taken = self._run_blocks(h, rope, self.causal if causal is None else causal, last, take)
        n = self.num_prefix_tokens
        outs, prefixes = [], []
        for y in taken:
            y = self.norm(y) if norm else y
            prefixes.append(y[:, :n])
            y = y[:, n:]
            if output_fmt == "NCHW":
                y = y.reshape(y.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
            outs.append(y)
        if return_prefix_tokens:
            outs = list(zip(outs, prefixes))
        if intermediates_only:
            return outs
        return self.norm(h), outs

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of `indices` (and the norm / head if asked); returns the indices."""
        take, last = block_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0)
        return take


def block_indices(depth: int, indices: Optional[int | Sequence[int]] = None) -> tuple[list[int], int]:
    """timm's feature_take_indices: None -> every block, int n -> the last n, a sequence -> those blocks
    (negative from the end). Returns (the indices, the largest)."""
    if indices is None:
        indices = depth
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"last-n ({indices}) is out of range (1 to {depth})")
        take = list(range(depth - indices, depth))
    else:
        take = [depth + i if i < 0 else i for i in indices]
        if not take or any(not 0 <= i < depth for i in take):
            raise ValueError(f"block indices {list(indices)} out of range for depth {depth}")
    return take, max(take)


def resample_abs_pos(pos: torch.Tensor, base_grid: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Learned absolute positions (1, N, D) of the base grid, bicubically resized to `grid` when it differs."""
    if grid == base_grid:
        return pos
    pos = pos.reshape(1, base_grid[0], base_grid[1], -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
    return pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)


SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}


def nepa_vit(size: str = "base", **kwargs: Any) -> NepaViT:
    """Build a NEPA ViT of a named size (tiny/small/base/large) with any config overrides."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    return NepaViT(NepaConfig(**{**SIZES[size], **kwargs}))
