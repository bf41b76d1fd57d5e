"""The NEPA pretraining objective: predict the next patch embedding, negative cosine, stop-gradient on targets.

    z = [cls ; patchify(x)]            (targets: no positions, no masking)
    h = norm(transformer(z))           (causal attention)
    loss = -mean cos(h[:, :-1], sg(z)[:, 1:])

Each ablation of the paper's first tables is a switch: shift, causal, stop-gradient, input masking.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import NepaConfig, NepaViT


def nepa_loss(h: torch.Tensor, z: torch.Tensor, shift: bool = True, stop_grad: bool = True) -> torch.Tensor:
    """-mean cosine between outputs h and (next, if shift) input embeddings z, over batch and positions."""
    target = z.detach() if stop_grad else z
    if shift:
        h, target = h[:, :-1], target[:, 1:]
    return -F.cosine_similarity(h.float(), target.float(), dim=-1).mean()


class NepaObjective(nn.Module):
    """Backbone + NEPA loss. Defaults are exactly the release's objective."""

    def __init__(self, backbone: Optional[NepaViT] = None, shift: bool = True, causal: bool = True,
                 stop_grad: bool = True, mask_ratio: float = 0.0, **backbone_kwargs: Any) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else NepaViT(NepaConfig(**backbone_kwargs))
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.shift, self.causal, self.stop_grad, self.mask_ratio = shift, causal, stop_grad, mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.backbone.embed_dim)) if mask_ratio > 0 else None
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def mask_inputs(self, z: torch.Tensor) -> torch.Tensor:
        """Replace a random `mask_ratio` of the patch embeddings (never the prefix) by the mask token."""
        n = self.backbone.num_prefix_tokens
        B, T, _ = z.shape
        num = int(round(self.mask_ratio * (T - n)))
        if num == 0:
            return z
        idx = torch.rand(B, T - n, device=z.device).argsort(dim=1)[:, :num]
        mask = torch.zeros(B, T - n, dtype=torch.bool, device=z.device).scatter_(1, idx, True)
        mask = F.pad(mask, (n, 0), value=False)[..., None]
        return torch.where(mask, self.mask_token.to(z.dtype), z)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss and the tensors the health monitors look at: h (outputs) and z (input embeddings)."""
        z, grid = self.backbone.embed(x)
        inp = self.mask_inputs(z) if (self.training and self.mask_token is not None) else z
        h = self.backbone.forward_tokens(inp, grid, causal=self.causal)
        loss = nepa_loss(h, z, shift=self.shift, stop_grad=self.stop_grad)
        return dict(loss=loss, h=h, z=z)
