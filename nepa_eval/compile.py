"""torch.compile through mmengine's own `compile` key: the optimizer wrapper's update kept out of dynamo
(`keep_optimizer_eager`), by the CompileHook that `prepare_env` adds where a config compiles."""
from __future__ import annotations

from typing import Any

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


# what a model's train_step may call on its optimizer wrapper: the update (never worth tracing) and should_sync,
# which reads the wrapper's step counter (traced, it would be a guard that recompiles the step every iteration)
EAGER_OPTIM_METHODS = ("update_params", "backward", "step", "zero_grad", "should_sync")


def keep_optimizer_eager(optim_wrapper: Any) -> int:
    """Make the optimizer wrapper's update methods (backward, clip, optimizer step, zero_grad; those of every
    wrapper in an OptimWrapperDict) and its should_sync run outside dynamo, on this instance only. Returns how
    many wrappers changed; idempotent.

    mmengine's Runner with ``compile`` set wraps the model's whole ``train_step`` in torch.compile, the
    ``optim_wrapper.update_params(loss)`` call inside it included; dynamo then traces into AdamW.step and fails
    there on recent torch ("UserDefinedDictVariable has no attribute items"). With these methods disabled,
    dynamo runs the ``train_step`` frame itself eagerly (should_sync is called inside mmengine's ``optim_context``)
    and compiles the frames it calls: the data preprocessor, the forward and loss (their backward too, by
    AOTAutograd), parse_losses. The backward call, gradient clipping and optimizer step run as without compile,
    and the step counter never enters a guard, so no recompilation from one iteration to the next."""
    import torch
    from mmengine.optim import OptimWrapper, OptimWrapperDict

    wrappers = list(optim_wrapper.values()) if isinstance(optim_wrapper, OptimWrapperDict) else [optim_wrapper]
    changed = 0
    for w in wrappers:
        if not isinstance(w, OptimWrapper) or getattr(w, "_nepa_eager_update", False):
            continue
        for name in EAGER_OPTIM_METHODS:
            setattr(w, name, torch._dynamo.disable(getattr(w, name)))
        w._nepa_eager_update = True
        changed += 1
    return changed


@HOOKS.register_module()
class CompileHook(Hook):
    """Makes mmengine's ``compile`` key (``cfg.compile = True`` or a dict of torch.compile options, ``--compile``
    on the command line) work for any model, ours or mmseg's: before the first training step it keeps the
    optimizer wrapper's update out of dynamo (`keep_optimizer_eager`). Nothing else changes: mmengine compiles
    the bound ``train_step`` (not the module), so state_dict keys, checkpoints, resume, the EMA copy and the
    hooks that call the model are those of an uncompiled run. `prepare_env` adds it when the config compiles."""

    priority = "VERY_HIGH"

    def before_train(self, runner) -> None:
        if runner.cfg.get("compile"):
            keep_optimizer_eager(runner.optim_wrapper)


def add_compile_hook(cfg: Config) -> None:
    """Declare the CompileHook in a config that sets `compile` (once)."""
    if not cfg.get("compile"):
        return
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(h.get("type") in ("CompileHook", CompileHook) for h in hooks):
        hooks.append(dict(type="CompileHook"))
    cfg.custom_hooks = hooks
