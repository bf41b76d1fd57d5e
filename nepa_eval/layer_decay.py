"""Layer-wise learning-rate decay whose RATE can ramp during training, shared by cls and seg.

Exponents (L blocks), in two conventions (``paramwise_cfg.layer_decay_exponents``):
                                                          'release' (classification)   'mmseg' (segmentation)
    head, fc_norm, final norm, anything outside the
    backbone (necks, decode heads)                        0                            0
    block i                                               L - 1 - i                    L - i
    embeddings (cls token, positions, patch projection)   L                            L + 1
'release' is the public release's fine-tuning code; 'mmseg' is mmseg's LearningRateDecayOptimizerConstructor
(the MAE / BEiT UPerNet recipe), where every block sits one step deeper than in the release's.
A group's learning rate at step t is the truth this module guarantees:

    lr(t) = base_lr * schedule(t) * rate(t) ** exponent     (head groups: head_lr * schedule(t))

with schedule = linear warm-up then cosine (or poly) decay to min_lr, and rate(t) constant (0.65),
a linear ramp r0 -> r1 (the paper: 0.35 -> 1.00) or a cosine ramp (the release's code). The rate and
its ramp are stated once, in the constructor's ``paramwise_cfg``, which records them on the parameter
groups; `LayerDecayLRHook` reads them there and applies the lr in closed form every iteration, so
mmengine's chainable param schedulers are not used (they would compound with a moving rate) and resume
is exact.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = ("cls_token", "pos_embed", "patch_embed", "mask_token")


EXPONENT_CONVENTIONS = {"release": 0, "mmseg": 1}  # how much deeper every block and the embeddings sit


def layer_exponent(name: str, num_layers: int, backbone_prefix: str = "backbone.", convention: str = "release") -> int:
    """The decay exponent of one parameter (see the module docstring)."""
    if convention not in EXPONENT_CONVENTIONS:
        raise ValueError(f"unknown layer_decay_exponents {convention!r}; choose from {sorted(EXPONENT_CONVENTIONS)}")
    shift = EXPONENT_CONVENTIONS[convention]
    if backbone_prefix and not name.startswith(backbone_prefix):
        return 0
    local = name[len(backbone_prefix):] if backbone_prefix else name
    m = _BLOCK.search("." + local)
    if m:
        return num_layers - 1 - int(m.group(1)) + shift
    if local.split(".")[0] in _EMBED:
        return num_layers + shift
    return 0


def decay_rate_at(t: float, rate: float, rate_end: Optional[float] = None, ramp: str = "constant") -> float:
    """The decay rate at training progress t in [0, 1]: constant, linear or cosine ramp rate -> rate_end."""
    if ramp == "constant" or rate_end is None:
        return rate
    t = min(max(t, 0.0), 1.0)
    if ramp == "linear":
        return rate + (rate_end - rate) * t
    if ramp == "cosine":
        return rate + (rate_end - rate) * (1 - math.cos(math.pi * t)) / 2
    raise ValueError(f"unknown ramp {ramp!r}: constant, linear or cosine")


def schedule_at(step: int, total: int, warmup: int, schedule: str = "cosine", min_ratio: float = 0.0,
                power: float = 1.0, warmup_start_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at `step` (0-based): linear warm-up, then cosine / poly / constant decay."""
    if warmup > 0 and step < warmup:
        return warmup_start_ratio + (1 - warmup_start_ratio) * step / warmup
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    t = min(max(t, 0.0), 1.0)
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "poly":
        return min_ratio + (1 - min_ratio) * (1 - t) ** power
    raise ValueError(f"unknown schedule {schedule!r}: cosine, poly or constant")


def build_param_groups(model: nn.Module, base_lr: float, weight_decay: float, num_layers: int,
                       backbone_prefix: str = "backbone.", head_lr: Optional[float] = None,
                       rate: float = 0.65, convention: str = "release") -> list[dict[str, Any]]:
    """One group per (exponent, decay/no-decay, head) with the bookkeeping the LR hook needs.

    Weight decay only on matrices (ndim >= 2, not tokens/embeddings); frozen parameters are left out.
    Params outside the backbone, and the head, fc_norm and final norm, get `head_lr` (absolute, no decay
    exponent) when it is given (the release: 1e-3 for head and final LN).
    """
    groups: dict[tuple, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exp = layer_exponent(name, num_layers, backbone_prefix, convention)
        local = name[len(backbone_prefix):] if backbone_prefix and name.startswith(backbone_prefix) else name
        is_head = (backbone_prefix and not name.startswith(backbone_prefix)) or local.startswith(("head.", "fc_norm.", "norm."))
        use_head_lr = head_lr is not None and is_head
        decay = p.ndim >= 2 and not any(local.startswith(e) for e in _EMBED[:2]) and local != "mask_token"
        key = (exp, decay, use_head_lr)
        if key not in groups:
            lr0 = head_lr if use_head_lr else base_lr
            groups[key] = dict(params=[], names=[], layer_exponent=0 if use_head_lr else exp,
                               base_lr=lr0, lr=lr0 * (1.0 if use_head_lr else rate ** exp),
                               weight_decay=weight_decay if decay else 0.0)
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], k[1], k[2]))]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's constructor with `add_params` overridden to build the layer-decay groups.

    The whole layer-decay schedule is stated here, once, in ``paramwise_cfg``: ``layer_decay_rate`` (the rate,
    or the ramp's start), ``layer_decay_rate_end`` and ``layer_decay_ramp`` ('constant', 'linear', 'cosine'),
    ``head_lr`` (absolute lr outside the backbone / for head and fc_norm; None = base lr with exponent 0),
    ``num_layers`` (default: len(model.backbone.blocks)), ``backbone_prefix`` ('backbone.'),
    ``layer_decay_exponents`` ('release', the default, or 'mmseg': see the module docstring). Every group records
    its ``layer_exponent``, ``base_lr`` and the schedule, where `LayerDecayLRHook` reads them.
    """

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = "", **kwargs: Any) -> None:
        cfg = dict(self.paramwise_cfg or {})
        backbone = cfg.get("backbone_prefix", "backbone.")
        schedule = dict(rate=cfg.get("layer_decay_rate", 0.65), rate_end=cfg.get("layer_decay_rate_end"),
                        ramp=cfg.get("layer_decay_ramp", "constant"))
        decay_rate_at(0.5, **schedule)  # validate early, with a clear message
        groups = build_param_groups(module, base_lr=self.base_lr, weight_decay=self.base_wd or 0.0,
                                    num_layers=cfg.get("num_layers") or len(_get(module, backbone).blocks),
                                    backbone_prefix=backbone, head_lr=cfg.get("head_lr"), rate=schedule["rate"],
                                    convention=cfg.get("layer_decay_exponents", "release"))
        for g in groups:
            g.pop("names")
            g.update(layer_decay_rate=schedule["rate"], layer_decay_rate_end=schedule["rate_end"],
                     layer_decay_ramp=schedule["ramp"])
        params.extend(groups)


def _get(model: nn.Module, prefix: str) -> nn.Module:
    for part in prefix.strip(".").split("."):
        if part:
            model = getattr(model, part)
    return model


def group_schedule(optimizer: Any) -> dict[str, Any]:
    """The layer-decay schedule the constructor recorded on the optimizer's parameter groups."""
    g = next((g for g in optimizer.param_groups if "layer_decay_rate" in g), None)
    if g is None:
        raise ValueError("LayerDecayLRHook needs the optimizer built by LayerDecayOptimWrapperConstructor "
                         "(optim_wrapper.constructor='LayerDecayOptimWrapperConstructor')")
    return dict(rate=g["layer_decay_rate"], rate_end=g["layer_decay_rate_end"], ramp=g["layer_decay_ramp"])


@HOOKS.register_module()
class LayerDecayLRHook(Hook):
    """Sets every group's lr each iteration: base_lr * schedule(t) * rate(t) ** exponent (closed form).

    The decay rate and its ramp come from the parameter groups (the constructor's ``paramwise_cfg`` states them);
    this hook holds the lr schedule: warmup / total in iterations; `warmup_epochs` (converted with the train
    loader's length) or `warmup_ratio` (fraction of total) are used when warmup is None. total defaults to the
    run's max_iters. Use with `param_scheduler = []`. Gradient accumulation: the schedule runs in iterations
    (as mmengine's ParamSchedulerHook does), the lr of an accumulated step is that of its last iteration.
    """

    priority = "HIGH"  # before the optimizer step of the same iteration

    def __init__(self, warmup: Optional[int] = None, warmup_ratio: float = 0.0, total: Optional[int] = None,
                 schedule: str = "cosine", min_lr_ratio: float = 0.0, power: float = 1.0,
                 warmup_start_ratio: float = 0.0, warmup_epochs: Optional[float] = None) -> None:
        schedule_at(1, 2, 0, schedule)  # validate early
        self.warmup, self.warmup_ratio, self.total = warmup, warmup_ratio, total
        self.warmup_epochs = warmup_epochs
        self.schedule, self.min_lr_ratio, self.power, self.warmup_start_ratio = (
            schedule, min_lr_ratio, power, warmup_start_ratio)

    def lr_factors(self, step: int, total: int, decay: dict[str, Any]) -> tuple[float, float]:
        """(schedule multiplier, decay rate) at iteration `step` of `total` for the groups' decay schedule."""
        warmup = self.warmup if self.warmup is not None else int(round(self.warmup_ratio * total))
        s = schedule_at(step, total, warmup, self.schedule, self.min_lr_ratio, self.power, self.warmup_start_ratio)
        return s, decay_rate_at(step / max(1, total - 1), **decay)

    def apply(self, optimizer, step: int, total: int) -> None:
        s, r = self.lr_factors(step, total, group_schedule(optimizer))
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * s * r ** g.get("layer_exponent", 0)
        self.current_rate = r

    def before_train(self, runner) -> None:
        if self.warmup is None and self.warmup_epochs is not None:
            self.warmup = int(round(self.warmup_epochs * len(runner.train_dataloader)))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        total = self.total or runner.max_iters
        self.apply(runner.optim_wrapper.optimizer, runner.iter, total)
        runner.message_hub.update_scalar("train/layer_decay_rate", self.current_rate)


def layer_decay_of(cfg: Any) -> dict[str, Any]:
    """A config's layer-decay schedule (rate, rate_end, ramp) as its constructor states it; {} without one."""
    ow = cfg.get("optim_wrapper") or {}
    if ow.get("constructor") != "LayerDecayOptimWrapperConstructor":
        return {}
    pw = ow.get("paramwise_cfg") or {}
    return dict(rate=pw.get("layer_decay_rate", 0.65), rate_end=pw.get("layer_decay_rate_end"),
                ramp=pw.get("layer_decay_ramp", "constant"), exponents=pw.get("layer_decay_exponents", "release"))
