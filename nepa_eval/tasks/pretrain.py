"""NEPA pretraining on mmengine's Runner: the model and the task (`nepa-eval pretrain`).

- `NepaPretrainModel`: an mmengine BaseModel around `backbones.nepa.NepaObjective` (every switch of the
  paper's ablations: shift, causal, stop_grad, mask_ratio, and the backbone's architecture fields).
- `build_cfg` / `run`: the config with --data and --cfg-options applied, trained on mmengine's Runner.

The hooks a pretraining run declares (lr recipe, health and collapse, k-NN monitor, atomic checkpoints) live in
`nepa_eval.hooks`, one module each; they are imported here so that this module registers everything a
pretraining config names (and re-exported for the users of the old names).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

import torch
from mmengine.dist import all_reduce, get_world_size, is_distributed
from mmengine.model import BaseModel
from mmengine.registry import MODELS

from backbones.nepa import NepaConfig, NepaObjective, NepaViT
from nepa_eval.engine import update_final
from nepa_eval.hooks import (KnnMonitorHook, LrRecipeHook, NepaCheckpointHook, NepaHealthHook,  # noqa: F401
                             NonFiniteLossError, config_hooks, health_metrics)
from nepa_eval.hooks.health import hub_state


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
@MODELS.register_module()
class NepaPretrainModel(BaseModel):
    """Backbone + NEPA loss as an mmengine model; the defaults are exactly the release's objective.

    State-dict keys are ``model.backbone.*`` (+ ``model.mask_token``), which the weight door strips.
    """

    def __init__(self, backbone: Optional[dict] = None, shift: bool = True, causal: bool = True,
                 stop_grad: bool = True, mask_ratio: float = 0.0, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        bcfg = NepaConfig.from_dict(dict(backbone or {}), causal=causal, num_classes=0)
        self.model = NepaObjective(NepaViT(bcfg), shift=shift, causal=causal, stop_grad=stop_grad,
                                   mask_ratio=mask_ratio)
        self.last_outputs: Optional[dict[str, torch.Tensor]] = None

    @property
    def backbone(self) -> NepaViT:
        return self.model.backbone

    def nepa_config(self) -> dict[str, Any]:
        """The backbone's NepaConfig as stored beside every checkpoint."""
        return self.backbone.cfg.to_dict()

    def forward(self, inputs: torch.Tensor, labels: Optional[torch.Tensor] = None, data_samples: Any = None,
                mode: str = "loss") -> Any:
        out = self.model(inputs)
        if mode == "loss":
            self.last_outputs = {"h": out["h"].detach(), "z": out["z"].detach()}
            return {"loss": out["loss"], "cos": -out["loss"].detach()}
        if mode in ("tensor", "predict"):
            return out["h"]
        raise ValueError(f"unknown mode {mode!r}")

    def parse_losses(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """mmengine's parse_losses, plus: logged values averaged over ranks, and a NaN/inf loss stops the run
        before the backward pass (so the weights and the last checkpoint stay good)."""
        loss, log_vars = super().parse_losses(losses)
        bad = torch.tensor(float(not torch.isfinite(loss.detach()).item()), device=loss.device)
        if is_distributed():
            names = list(log_vars)
            packed = torch.stack([log_vars[k].detach().float() for k in names] + [bad])
            all_reduce(packed, op="sum")
            bad = packed[-1]
            log_vars = type(log_vars)((k, packed[i] / get_world_size()) for i, k in enumerate(names))
        if bad.item() > 0:
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at {hub_state()}; the run was stopped "
                                     "before this step's update, so the last checkpoint holds good weights")
        return loss, log_vars


# ----------------------------------------------------------------------------------------------
# the task: `nepa-eval pretrain`
# ----------------------------------------------------------------------------------------------
def set_data(cfg: Any, value: str) -> None:
    """`--data`: the training data (any folder as unlabelled images, no label column read), keeping the
    config's transform, limit and seed; the k-NN monitor follows it when the data has labels and a held-out
    split (train votes, val/validation/test is classified), and is switched off otherwise."""
    from nepa_eval.data import DataError
    from nepa_eval.data.resolve import resolve_data

    spec = resolve_data(value, labelled=False)
    old = cfg.train_dataloader.dataset
    keep = {k: old[k] for k in ("transform", "limit", "seed") if k in old}
    cfg.train_dataloader.dataset = dict(type="ImageDataset", **spec.dataset("train"), **keep)
    monitors = [h for h in config_hooks(cfg, "KnnMonitorHook") if h.get("enabled", True)]
    if not monitors:
        return
    try:
        labelled = resolve_data(value, labelled=True)
    except DataError:
        labelled = None
    if labelled is None or not (labelled.has_split("train") and labelled.has_split("val")):
        for h in monitors:
            h["enabled"] = False
        for key in ("knn_train", "knn_test"):
            cfg.pop(key, None)
        print(f"[nepa] pretrain --data {value}: no labels or no held-out split to classify, so the k-NN monitor "
              "is off", file=sys.stderr)
        return
    for key, split, arg in (("knn_train", "train", "train_data"), ("knn_test", "val", "test_data")):
        prev = cfg.get(key) or {}
        cfg[key] = labelled.dataset(split, **{k: prev[k] for k in ("transform", "limit") if k in prev})
        for h in monitors:
            h[arg] = None  # the hook takes the config's knn_train / knn_test


def build_cfg(args: Any) -> Any:
    """The pretraining config with --data and --cfg-options applied; everything else, hooks included, is the config
    file's (the lr recipe too: `LrRecipeHook` resolves it from the run, as under mmengine's own tools)."""
    from nepa_eval.engine import load_config

    cfg = load_config(args, "pretrain")
    if getattr(args, "data", None):
        set_data(cfg, args.data)
    return cfg


def run(cfg: Any) -> int:
    """Pretrain; 0 when the run ends ok (or collapsed: marked in final_metrics.json), 3 when it diverged."""
    from nepa_eval.engine import train

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[nepa] pretrain: work_dir {cfg.work_dir}")
    try:
        train(cfg)
    except NonFiniteLossError as e:
        last = os.path.join(cfg.work_dir, "last_checkpoint")
        good = open(last).read().strip() if os.path.exists(last) else "none yet"
        msg = f"{e}; last good checkpoint: {good}"
        update_final(cfg.work_dir, status="diverged", reason=msg)
        print(f"nepa-eval pretrain: diverged: {msg}", file=sys.stderr)
        return 3
    return 0
