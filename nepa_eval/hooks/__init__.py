"""The pretraining hooks, one module each, registered in mmengine's HOOKS on import:

- `LrRecipeHook` (lr_recipe.py): lr scaled by the effective batch, warm-up + cosine as fractions of the budget.
- `NepaHealthHook` (health.py): out_std, eff_rank, the collapse and trivial-solution detectors, NaN/inf stops.
- `KnnMonitorHook` (knn_monitor.py): k-NN accuracy of the frozen backbone during and after training.
- `NepaCheckpointHook` (checkpoint.py): atomic, self-describing checkpoints with the RNG states.

The configs declare every hook a switch may reach in ``default_hooks``, keyed by name (``lr_recipe``, ``health``,
``knn``, ``ema``, ``checkpoint``, ...), never in a list: ``--cfg-options default_hooks.knn.enabled=False`` reaches
the k-NN monitor whatever else the config holds, with `nepa-eval` and with mmengine's and mmseg's own tools alike.
"""
from __future__ import annotations

from typing import Any

from nepa_eval.hooks.checkpoint import NepaCheckpointHook, ema_backbone
from nepa_eval.hooks.health import NepaHealthHook, NonFiniteLossError, health_metrics
from nepa_eval.hooks.knn_monitor import KnnMonitorHook
from nepa_eval.hooks.lr_recipe import LrRecipeHook, config_recipe, recipe_values


def config_hooks(cfg: Any, type_name: str) -> list[dict]:
    """The hook configs of type `type_name` a config declares (``default_hooks`` values and ``custom_hooks``)."""
    hooks = [h for h in (cfg.get("default_hooks") or {}).values() if h]
    hooks += list(cfg.get("custom_hooks") or [])
    return [h for h in hooks if h.get("type") == type_name
            or getattr(h.get("type"), "__name__", None) == type_name]


__all__ = ["LrRecipeHook", "NepaHealthHook", "KnnMonitorHook", "NepaCheckpointHook", "NonFiniteLossError",
           "health_metrics", "ema_backbone", "config_recipe", "recipe_values", "config_hooks"]
