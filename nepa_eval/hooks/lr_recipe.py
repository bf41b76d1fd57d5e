"""`LrRecipeHook` (``default_hooks.lr_recipe`` in the pretraining configs): the learning rate scaled by the effective
batch, and the warm-up + cosine schedule as fractions of the budget, resolved by the Runner from what it runs.

Declared in the config, so `nepa-eval pretrain`, mmengine's and mmseg's own ``tools/train.py`` train at the same lr
at every step, and ``--cfg-options train_cfg.max_iters=N`` / ``train_dataloader.batch_size=B`` /
``optim_wrapper.accumulative_counts=A`` / a launch on more processes all move it as the recipe says.
"""
from __future__ import annotations

from typing import Any, Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from nepa_eval.engine import update_final


def recipe_values(batch_size: int, world_size: int, accumulative_counts: int, max_iters: int, lr: float,
                  base_batch_size: Optional[float] = 256, warmup_ratio: Optional[float] = 0.025) -> dict[str, Any]:
    """What the recipe resolves to: effective batch (per-process batch x processes x accumulation steps), the lr
    (`lr` stated for `base_batch_size` images per update, scaled linearly; `base_batch_size` None: not scaled), the
    budget both ways (the paper counts optimizer updates, the loop micro-iterations) and the warm-up iterations
    (round(warmup_ratio x max_iters); none below 2, as mmengine's LinearLR needs two steps to ramp)."""
    eff = int(batch_size) * int(world_size) * int(accumulative_counts)
    info: dict[str, Any] = {"effective_batch": eff, "micro_iterations": int(max_iters),
                            "updates": int(max_iters) // int(accumulative_counts)}
    info["lr"] = float(lr) * eff / float(base_batch_size) if base_batch_size else lr
    if warmup_ratio is not None:
        warmup = int(round(warmup_ratio * int(max_iters)))
        info["warmup_iters"] = warmup if warmup >= 2 else 0
    return info


def config_recipe(cfg: Any, world_size: int = 1) -> dict[str, Any]:
    """`recipe_values` of a pretraining config (its ``default_hooks.lr_recipe``) run on `world_size` processes:
    what the hook will resolve, read without building a Runner (budgets in ablate's tables, tests)."""
    hook = dict((cfg.get("default_hooks") or {}).get("lr_recipe") or {})
    if hook.get("type") not in ("LrRecipeHook", LrRecipeHook):
        raise ValueError("the config has no default_hooks.lr_recipe (LrRecipeHook)")
    defaults = LrRecipeHook()
    return recipe_values(cfg.train_dataloader.batch_size, world_size, cfg.optim_wrapper.get("accumulative_counts", 1),
                         cfg.train_cfg.max_iters, cfg.optim_wrapper.optimizer.lr,
                         hook.get("base_batch_size", defaults.base_batch_size),
                         hook.get("warmup_ratio", defaults.warmup_ratio))


@HOOKS.register_module()
class LrRecipeHook(Hook):
    """The pretraining recipe's lr and schedule, resolved before training from the run itself.

    lr = the optimizer's configured lr (stated for `base_batch_size` images per update) x effective batch /
    `base_batch_size`, the effective batch being the per-process batch x processes x ``accumulative_counts``
    (`base_batch_size` None: the configured lr as is). Then mmengine's own LinearLR warm-up (from
    `warmup_start_factor` x lr over round(`warmup_ratio` x max_iters) iterations; none below 2) and
    CosineAnnealingLR down to `min_lr_ratio` x lr at max_iters (`warmup_ratio` None: no schedule, a constant lr).

    It works in ``before_run``, after the Runner has built the optimizer and before it resumes: the schedulers it
    builds are the Runner's ``param_schedulers`` (stepped by ParamSchedulerHook, saved in every checkpoint, their
    state restored by a resume), so the config's own ``param_scheduler`` must be empty. The resolved values go
    into final_metrics.json (effective_batch, lr, micro_iterations, updates, warmup_iters)."""

    priority = "VERY_HIGH"

    def __init__(self, base_batch_size: Optional[int] = 256, warmup_ratio: Optional[float] = 0.025,
                 warmup_start_factor: float = 1e-3, min_lr_ratio: float = 0.0) -> None:
        self.base_batch_size, self.warmup_ratio = base_batch_size, warmup_ratio
        self.warmup_start_factor, self.min_lr_ratio = warmup_start_factor, min_lr_ratio
        self.resolved: dict[str, Any] = {}

    def before_run(self, runner) -> None:
        from mmengine.optim import OptimWrapper

        wrapper = runner.optim_wrapper
        if not isinstance(wrapper, OptimWrapper):  # test / val only: nothing to train
            return
        if runner.param_schedulers:
            raise ValueError("LrRecipeHook builds the lr schedule itself: the config's param_scheduler must be [] "
                             f"(it holds {len(runner.param_schedulers)} scheduler(s))")
        groups = wrapper.optimizer.param_groups
        lr = float(groups[0]["lr"])
        batch = runner.train_dataloader.batch_size or runner.cfg.train_dataloader.batch_size
        accum = int(getattr(wrapper, "_accumulative_counts", 1))
        info = recipe_values(batch, runner.world_size, accum, runner.max_iters, lr, self.base_batch_size,
                             self.warmup_ratio)
        for g in groups:  # a group with its own lr multiplier keeps its ratio to the first group
            g["lr"] = info["lr"] if g["lr"] == lr else info["lr"] * (g["lr"] / lr)
        if self.warmup_ratio is not None:
            total, warmup = runner.max_iters, info["warmup_iters"]
            scheds = [dict(type="LinearLR", start_factor=self.warmup_start_factor, by_epoch=False, begin=0,
                           end=warmup)] if warmup else []
            scheds.append(dict(type="CosineAnnealingLR", T_max=total - warmup, eta_min=self.min_lr_ratio * info["lr"],
                               by_epoch=False, begin=warmup, end=total))
            runner.param_schedulers = runner.build_param_scheduler(scheds)
        self.resolved = info
        sched = (f"warm-up {info['warmup_iters']} then cosine to {self.min_lr_ratio:g} x lr over {runner.max_iters} "
                 "iterations" if self.warmup_ratio is not None else "constant")
        print_log(f"[nepa] lr recipe: effective batch {info['effective_batch']} ({batch} x {runner.world_size} "
                  f"process(es) x {accum} accumulation step(s)), lr {info['lr']:.4g}, {sched}", logger="current")
        update_final(runner.work_dir, **info)
