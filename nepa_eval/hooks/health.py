"""The pretraining run's health: the NaN/inf stop, output spread and effective rank, the collapse detector and the
trivial-solution detector (`NepaHealthHook`, ``default_hooks.health`` in the pretraining configs)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook
from mmengine.logging import MessageHub, print_log
from mmengine.registry import HOOKS

from nepa_eval.engine import update_final


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN/inf; the message has the step, learning rate and grad norm."""


def hub_state() -> str:
    """'step N, lr X, last grad norm Y' from mmengine's message hub (what the runner last logged)."""
    hub = MessageHub.get_current_instance()
    step = hub.get_info("iter")
    parts = [f"step {step + 1 if step is not None else '?'}"]
    for key, name in (("train/lr", "lr"), ("train/grad_norm", "last grad norm")):
        buf = hub.log_scalars.get(key)
        parts.append(f"{name} {buf.current():.4g}" if buf is not None else f"{name} n/a")
    return ", ".join(parts)


@torch.no_grad()
def health_metrics(h: torch.Tensor, num_prefix: int = 1) -> dict[str, float]:
    """out_std: per-dimension std across the batch of the L2-normalised outputs, averaged over positions and
    dimensions, times sqrt(D) (about 1 for well-spread outputs, 0 when collapsed); eff_rank: the effective rank
    (exp of the entropy of the normalised singular values) of the mean-pooled outputs of the batch."""
    h = F.normalize(h.float(), dim=-1)
    D = h.shape[-1]
    out_std = h.std(dim=0, unbiased=False).mean().item() * math.sqrt(D) if h.shape[0] > 1 else float("nan")
    pooled = h[:, num_prefix:].mean(1) if h.shape[1] > num_prefix else h.mean(1)
    pooled = pooled - pooled.mean(0, keepdim=True)
    s = torch.linalg.svdvals(pooled)
    if s.sum() <= 1e-12:
        eff_rank = 1.0
    else:
        p = s / s.sum()
        eff_rank = math.exp(-(p * torch.log(p.clamp_min(1e-12))).sum().item())
    return {"out_std": out_std, "eff_rank": eff_rank}


@HOOKS.register_module()
class NepaHealthHook(Hook):
    """Logs out_std and eff_rank every `interval` steps and watches for representation collapse.

    A check is "low" when out_std is below `collapse_std` (absolute), or below `collapse_ratio` times the
    highest out_std seen so far in the run (the spread fell by that much: the signature of the no-stop-gradient
    collapse, where outputs and targets drift together towards one vector and the cosine towards 1), or when
    eff_rank is below `collapse_rank`. After `patience` low checks past `min_steps` the run is marked
    'collapsed' in final_metrics.json and, when `stop_on_collapse`, stopped. A non-finite gradient norm stops
    the run before that step's checkpoint is written.

    The trivial-solution detector: a run that sits at its loss floor from the start, with the prediction's cosine
    to its target at least `trivial_cos` on average over its first `trivial_checks` checks, has found a shortcut,
    not a representation: without the one-step shift the model copies its input (LayerScale 1e-5 makes every
    block nearly the identity at init, so the output is the normed input itself). Measured on the tiny recipe
    (600 steps, checks every 20): no shift 0.999 / 0.935 / 0.946 at steps 20 / 40 / 60; the paper's recipe
    0.40 / 0.46 / 0.59; its no-causal row 0.41 / 0.51 / 0.67 (which climbs to 0.89 by step 200, so only the start
    tells the copy apart). It is marked 'trivial' (a failed row, like 'collapsed') and, when `stop_on_trivial`,
    stopped. `trivial_cos` None switches the detector off."""

    priority = "NORMAL"  # after the runtime info, before the logger and the checkpoint hook

    def __init__(self, interval: int = 10, collapse_std: float = 0.05, collapse_ratio: Optional[float] = 0.6,
                 collapse_rank: Optional[float] = None, patience: int = 3, min_steps: int = 0,
                 stop_on_collapse: bool = True, trivial_cos: Optional[float] = 0.9, trivial_checks: int = 3,
                 stop_on_trivial: bool = True) -> None:
        self.interval, self.collapse_std, self.collapse_rank = interval, collapse_std, collapse_rank
        self.collapse_ratio = collapse_ratio
        self.patience, self.min_steps, self.stop_on_collapse = patience, min_steps, stop_on_collapse
        self.trivial_cos, self.trivial_checks, self.stop_on_trivial = trivial_cos, trivial_checks, stop_on_trivial
        self._bad = 0
        self._early: list[float] = []  # the cosine at each of the first checks
        self.collapsed = False

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        gn = runner.message_hub.log_scalars.get("train/grad_norm")
        if gn is not None and not math.isfinite(gn.current()):
            raise NonFiniteLossError(f"non-finite gradient norm ({gn.current()}) at {hub_state()}; no checkpoint "
                                     "was written for this step")
        if not (self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner)):
            return
        model = getattr(runner.model, "module", runner.model)
        if model.last_outputs is None:
            return
        m = health_metrics(model.last_outputs["h"], model.backbone.num_prefix_tokens)
        if is_distributed():
            t = torch.tensor([m["out_std"], m["eff_rank"]], dtype=torch.float64)
            all_reduce(t, op="mean")
            m = {"out_std": t[0].item(), "eff_rank": t[1].item()}
        for k, v in m.items():
            runner.message_hub.update_scalar(f"train/{k}", v)
        step = runner.iter + 1
        ref = max(runner.message_hub.get_info("health/out_std_max", 0.0) or 0.0, m["out_std"])
        runner.message_hub.update_info("health/out_std_max", ref)  # saved in checkpoints, so resume keeps it
        low = (m["out_std"] < self.collapse_std
               or (self.collapse_ratio is not None and m["out_std"] < self.collapse_ratio * ref)
               or (self.collapse_rank is not None and m["eff_rank"] < self.collapse_rank))
        self._bad = self._bad + 1 if (low and step >= self.min_steps) else 0
        if self._bad >= self.patience and not self.collapsed:
            self.collapsed = True
            reason = (f"representation collapse at step {step}: output std {m['out_std']:.4g} (highest seen "
                      f"{ref:.4g}; thresholds {self.collapse_std} absolute, {self.collapse_ratio} x highest), "
                      f"effective rank {m['eff_rank']:.3g}, for {self.patience} checks")
            print_log(f"[nepa] {reason}" + ("; stopping" if self.stop_on_collapse else ""), logger="current")
            update_final(runner.work_dir, status="collapsed", reason=reason, collapse_step=step)
            if self.stop_on_collapse:
                runner.train_loop.stop_training = True
        self._check_trivial(runner, step)

    def _check_trivial(self, runner, step: int) -> None:
        """After the first `trivial_checks` checks: at the loss floor on average -> the run is trivial (see the class)."""
        cos = runner.message_hub.log_scalars.get("train/cos")
        if self.trivial_cos is None or cos is None or self.collapsed or step > self.interval * self.trivial_checks:
            return  # a run already marked collapsed keeps that reason
        self._early.append(float(cos.current()))
        mean = sum(self._early) / len(self._early)
        if len(self._early) < self.trivial_checks or mean < self.trivial_cos:
            return
        reason = (f"trivial: the model copies its input (cosine to the target {', '.join(f'{c:.3f}' for c in self._early)} "
                  f"at the first {self.trivial_checks} checks, mean {mean:.3f} >= {self.trivial_cos}: the loss sat at "
                  "its floor from the start)")
        print_log(f"[nepa] {reason}" + ("; stopping" if self.stop_on_trivial else ""), logger="current")
        update_final(runner.work_dir, status="trivial", reason=reason, trivial_step=step)
        if self.stop_on_trivial:
            runner.train_loop.stop_training = True
