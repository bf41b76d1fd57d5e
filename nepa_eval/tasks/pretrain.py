"""NEPA pretraining on mmengine's Runner: the model, its parameter groups and the hooks that keep a run honest.

- `NepaPretrainModel`: an mmengine BaseModel around `backbones.nepa.NepaObjective` (every switch of the
  paper's ablations: shift, causal, stop_grad, mask_ratio, and the backbone's architecture fields).
- `NepaHealthHook`: loss, cosine, output std, effective rank; the collapse detector; non-finite grad norms.
- `KnnMonitorHook`: DINO-style k-NN accuracy of the frozen backbone during and after training.
- `NepaCheckpointHook`: mmengine checkpoints written atomically (a half-written file never replaces the
  last good one), with the backbone's NepaConfig and the RNG states stored for exact resume.
- `bench_pretrain` (`nepa-eval bench pretrain`): images/s and peak memory of one pretraining step.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.dist import all_reduce, get_world_size, is_distributed, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import MessageHub, print_log
from mmengine.model import BaseModel
from mmengine.registry import HOOKS, MODELS

from backbones.nepa import NepaConfig, NepaObjective, NepaViT, save_checkpoint
from nepa_eval.engine import append_scalars, update_final
from nepa_eval.knn import knn_eval

class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN/inf; the message has the step, learning rate and grad norm."""


def _hub_state() -> str:
    """'step N, lr X, last grad norm Y' from mmengine's message hub (what the runner last logged)."""
    hub = MessageHub.get_current_instance()
    step = hub.get_info("iter")
    parts = [f"step {step + 1 if step is not None else '?'}"]
    for key, name in (("train/lr", "lr"), ("train/grad_norm", "last grad norm")):
        buf = hub.log_scalars.get(key)
        parts.append(f"{name} {buf.current():.4g}" if buf is not None else f"{name} n/a")
    return ", ".join(parts)


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
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at {_hub_state()}; the run was stopped "
                                     "before this step's update, so the last checkpoint holds good weights")
        return loss, log_vars


# ----------------------------------------------------------------------------------------------
# parameter groups, learning rate and schedule
# ----------------------------------------------------------------------------------------------
def effective_batch(cfg: Any, world_size: Optional[int] = None) -> int:
    """Images per optimizer update: per-process batch x processes x gradient-accumulation steps."""
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    accum = cfg.optim_wrapper.get("accumulative_counts", 1)
    return int(cfg.train_dataloader.batch_size) * world * int(accum)


def apply_recipe(cfg: Any, world_size: Optional[int] = None) -> dict[str, Any]:
    """Resolve the recipe's derived values after --cfg-options: lr = base_lr x batch / 256 and the
    warm-up + cosine schedule as fractions of max_iters. Returns what was resolved (for the run record)."""
    accum = int(cfg.optim_wrapper.get("accumulative_counts", 1))
    info: dict[str, Any] = {"effective_batch": effective_batch(cfg, world_size),
                            # the budget both ways: the paper counts optimizer updates, the loop micro-iterations
                            "micro_iterations": int(cfg.train_cfg.max_iters),
                            "updates": int(cfg.train_cfg.max_iters) // accum}
    if cfg.get("base_lr") is not None:
        lr = float(cfg.base_lr) * info["effective_batch"] / float(cfg.get("base_batch_size", 256))
        cfg.optim_wrapper.optimizer.lr = lr
    info["lr"] = cfg.optim_wrapper.optimizer.lr
    sched = cfg.get("lr_schedule")
    if sched is not None:
        total = int(cfg.train_cfg.max_iters)
        warmup = int(round(sched.get("warmup_ratio", 0.025) * total))
        warmup = warmup if warmup >= 2 else 0  # mmengine's LinearLR needs two steps to ramp
        min_lr = sched.get("min_lr_ratio", 0.0) * info["lr"]
        ps = []
        if warmup:
            ps.append(dict(type="LinearLR", start_factor=sched.get("warmup_start_factor", 1e-3), by_epoch=False,
                           begin=0, end=warmup))
        ps.append(dict(type="CosineAnnealingLR", T_max=total - warmup, eta_min=min_lr, by_epoch=False,
                       begin=warmup, end=total))
        cfg.param_scheduler = ps
        info["warmup_iters"] = warmup
    return info


# ----------------------------------------------------------------------------------------------
# health: cosine, output std, effective rank, collapse, non-finite gradients
# ----------------------------------------------------------------------------------------------
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
            raise NonFiniteLossError(f"non-finite gradient norm ({gn.current()}) at {_hub_state()}; no checkpoint "
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


# ----------------------------------------------------------------------------------------------
# k-NN monitor
# ----------------------------------------------------------------------------------------------
def _ema_backbone(runner) -> Optional[NepaViT]:
    for hook in runner.hooks:
        ema = getattr(hook, "ema_model", None)
        if ema is not None:
            return ema.module.backbone
    return None


@HOOKS.register_module()
class KnnMonitorHook(Hook):
    """k-NN accuracy (DINO style: cosine, k=20, T=0.07) of the frozen backbone every `interval` steps
    (0: only at the end) and after training; the final numbers go into final_metrics.json as knn_top1
    (the raw weights, what `from_pretrained(ckpt)` returns) and knn_top1_ema when an EMAHook runs and `ema`.

    train_data / test_data: ImageDataset arguments; None takes the config's top-level ``knn_train`` /
    ``knn_test`` (the data ``_base_`` files define them beside the training data). `layers`: None = the final
    features, an int k adds block k's output (knn_top1_block{k}). `enabled` False: the hook does nothing."""

    priority = "LOW"

    def __init__(self, train_data: Optional[dict] = None, test_data: Optional[dict] = None, interval: int = 0,
                 k: int = 20, temperature: float = 0.07, batch_size: int = 256, pool: str = "avg",
                 layers: Sequence[Optional[int]] = (None,), ema: bool = True, enabled: bool = True) -> None:
        self.train_data, self.test_data, self.interval = train_data, test_data, interval
        self.k, self.temperature, self.batch_size, self.pool = k, temperature, batch_size, pool
        self.layers, self.ema, self.enabled = list(layers), ema, enabled

    def before_run(self, runner) -> None:
        for attr, key in (("train_data", "knn_train"), ("test_data", "knn_test")):
            if getattr(self, attr) is None:
                setattr(self, attr, runner.cfg.get(key))
        if self.enabled and (self.train_data is None or self.test_data is None):
            raise ValueError("KnnMonitorHook needs train_data and test_data (or the config's knn_train / knn_test); "
                             "set enabled=False to run without the k-NN monitor")

    def _eval(self, runner, backbone: NepaViT) -> dict[str, float]:
        t = time.time()
        res = knn_eval(backbone, self.train_data, self.test_data, self.k, self.temperature, self.batch_size,
                       pool=self.pool, layers=self.layers)
        tops = ", ".join(f"{k[len('knn_'):]} {v:.2f}%" for k, v in res.items() if k.startswith("knn_top1"))
        print_log(f"[nepa] k-NN (k={self.k}, T={self.temperature}): {tops} ({time.time() - t:.1f}s)",
                  logger="current")
        return res

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if (not self.enabled or not self.interval or not self.every_n_train_iters(runner, self.interval)
                or self.is_last_train_iter(runner)):
            return
        if is_main_process():
            res = self._eval(runner, getattr(runner.model, "module", runner.model).backbone)
            append_scalars(runner.work_dir, {"step": runner.iter + 1, **res})
            runner.visualizer.add_scalars({f"knn/{k}": v for k, v in res.items()}, step=runner.iter + 1)

    def after_train(self, runner) -> None:
        if not self.enabled or not is_main_process():
            return
        res = self._eval(runner, getattr(runner.model, "module", runner.model).backbone)
        final = dict(res)
        ema = _ema_backbone(runner) if self.ema else None
        if ema is not None:
            final.update({f"{k}_ema": v for k, v in self._eval(runner, ema).items()})
        append_scalars(runner.work_dir, {"step": runner.iter, **final})
        runner.visualizer.add_scalars({f"knn/{k}": v for k, v in final.items()}, step=runner.iter)
        update_final(runner.work_dir, knn_k=self.k, knn_temperature=self.temperature, **final)


# ----------------------------------------------------------------------------------------------
# checkpoints: atomic, self-describing, exact resume
# ----------------------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    """The process's RNG states in weights_only-loadable form (tensors, ints, strings)."""
    np_state = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *[float(x) for x in np_state[2:]]]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


@HOOKS.register_module()
class NepaCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook, made crash-safe: the file is written under a temporary name and renamed,
    `last_checkpoint` is replaced atomically, and old checkpoints are deleted only after the new one exists.
    Each checkpoint carries meta.nepa_config (so the weight door never guesses the architecture) and the
    RNG states (so a resumed run continues the same random stream). At the end of training the backbone is
    also written as work_dir/backbone.safetensors (and backbone_ema.safetensors with EMA)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("by_epoch", False)
        super().__init__(*args, **kwargs)
        self._resume_rng: Optional[dict[str, Any]] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = getattr(runner.model, "module", runner.model)
        checkpoint.setdefault("meta", {})["nepa_config"] = model.nepa_config()
        checkpoint["meta"]["rng"] = _rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._resume_rng = checkpoint.get("meta", {}).get("rng")

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._resume_rng is not None:  # first step after a resume: continue the saved random stream
            _set_rng_state(self._resume_rng)
            self._resume_rng = None

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        name = self.filename_tmpl.format(step)
        final = os.path.join(self.out_dir, name)
        tmp = name + ".tmp"
        runner.save_checkpoint(self.out_dir, tmp, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        self.last_ckpt = final
        runner.message_hub.update_info("last_ckpt", final)
        if self.max_keep_ckpts > 0 and (not self.keep_ckpt_ids or self.keep_ckpt_ids[-1] != step):
            self.keep_ckpt_ids.append(step)
        old: list[int] = []
        while self.max_keep_ckpts > 0 and len(self.keep_ckpt_ids) > self.max_keep_ckpts:
            old.append(self.keep_ckpt_ids.popleft())
        runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        if not is_main_process():
            return
        with open(os.path.join(self.out_dir, tmp), "rb") as f:
            os.fsync(f.fileno())
        os.replace(os.path.join(self.out_dir, tmp), final)
        last = os.path.join(runner.work_dir, "last_checkpoint")
        with open(last + ".tmp", "w") as f:
            f.write(final)
            f.flush()
            os.fsync(f.fileno())
        os.replace(last + ".tmp", last)
        for s in old:
            p = os.path.join(self.out_dir, self.filename_tmpl.format(s))
            if os.path.isfile(p) and p != final:
                os.remove(p)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        # mmengine's deque has maxlen=max_keep_ckpts: its append would evict the oldest id silently, and the file
        # with it would never be deleted; an unbounded deque lets the pruning below see (and remove) it
        self.keep_ckpt_ids = deque(self.keep_ckpt_ids)

    def after_train(self, runner) -> None:
        if not is_main_process():
            return
        model = getattr(runner.model, "module", runner.model)
        wd = Path(runner.work_dir)
        save_checkpoint(model.backbone, wd / "backbone.safetensors")
        files = {"backbone": "backbone.safetensors"}
        ema = _ema_backbone(runner)
        if ema is not None:
            save_checkpoint(ema, wd / "backbone_ema.safetensors")
            files["backbone_ema"] = "backbone_ema.safetensors"
        update_final(wd, nepa_config=model.nepa_config(), **files)


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
    monitors = [h for h in cfg.get("custom_hooks", []) if h.get("type") == "KnnMonitorHook" and h.get("enabled", True)]
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
    """The pretraining config with --data, --cfg-options and the recipe's derived values (lr from the effective
    batch, warm-up + cosine from max_iters) resolved; everything else, hooks included, is the config file's."""
    from nepa_eval.engine import load_config

    cfg = load_config(args, "pretrain")
    if getattr(args, "data", None):
        set_data(cfg, args.data)
    cfg.recipe_resolved = apply_recipe(cfg)  # recorded in config.py and final_metrics.json
    return cfg


def run(cfg: Any) -> int:
    """Pretrain; 0 when the run ends ok (or collapsed: marked in final_metrics.json), 3 when it diverged."""
    from nepa_eval.engine import train

    info = dict(cfg.get("recipe_resolved") or {"effective_batch": effective_batch(cfg),
                                                "lr": cfg.optim_wrapper.optimizer.lr})
    batch, lr = info["effective_batch"], info["lr"]
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[nepa] pretrain: work_dir {cfg.work_dir}, effective batch {batch} "
              f"({os.environ.get('WORLD_SIZE', '1')} process(es)), lr {lr:.3g}")
    try:
        train(cfg)
    except NonFiniteLossError as e:
        last = os.path.join(cfg.work_dir, "last_checkpoint")
        good = open(last).read().strip() if os.path.exists(last) else "none yet"
        msg = f"{e}; last good checkpoint: {good}"
        update_final(cfg.work_dir, status="diverged", reason=msg)
        print(f"nepa-eval pretrain: diverged: {msg}", file=sys.stderr)
        return 3
    update_final(cfg.work_dir, task="pretrain", **info)
    return 0


# ----------------------------------------------------------------------------------------------
# benchmark
# ----------------------------------------------------------------------------------------------
def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_peak_memory(fn: Any) -> Optional[float]:
    """Peak growth of the process's resident memory (MiB) during one call, sampled every millisecond (Linux)."""
    import threading

    if not os.path.exists("/proc/self/statm"):
        return None
    base, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    fn()
    done.set()
    t.join()
    return max(peak[0], _rss_mib()) - base


TINY_RECIPE = dict(embed_dim=128, depth=4, num_heads=4, mlp_hidden=256, patch_size=7, img_size=28,  # the CPU config
                   layerscale_init=1e-5, rope_rescale=None)


def bench_pretrain(args: Any) -> None:
    """Images/s and peak memory of one NEPA pretraining step (forward, NEPA loss, backward, clip, AdamW): the
    tiny CPU recipe (28x28, patch 7, batch 128) and the named sizes at --img-size / --batch-size, patch 14."""
    from backbones.nepa.model import SIZES
    from nepa_eval.timing import device_of, peak_memory, time_fn

    dev = device_of(args.device)
    res, bs = args.img_size, args.batch_size
    sizes = getattr(args, "sizes", None) or ["tiny-recipe", "tiny", "small", "base"]
    dtypes = {"float32": None} if (dev.type == "cpu" and args.fp32_only) else {"float32": None, "bf16": torch.bfloat16}
    print(f"# NEPA pretraining step (forward, loss, backward, grad clip, AdamW), {dev.type}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; peak memory: CUDA allocator on GPU, resident-set "
          "growth during the first step (weights, activations, AdamW state) on CPU")
    print("| model | input | batch | dtype | params (M) | img/s | ms/step | peak mem (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        if size == "tiny-recipe":
            bcfg, batch = dict(TINY_RECIPE), 128
        else:
            bcfg, batch = {**SIZES[size], "img_size": res, "patch_size": 14}, bs
            bcfg["depth"] = min(bcfg["depth"], args.depth)
        for dname, dt in dtypes.items():
            torch.manual_seed(0)
            model = NepaPretrainModel(backbone=bcfg).to(dev).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
            x = torch.randn(batch, 3, bcfg["img_size"], bcfg["img_size"], device=dev)

            def step() -> None:
                with torch.autocast(dev.type, dtype=dt, enabled=dt is not None):
                    loss = model(x)["loss"]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

            # CPU: the first step's resident-set growth (allocator caches hide later steps' peaks); it also warms up
            mem = cpu_peak_memory(step) if dev.type != "cuda" else None
            sec = time_fn(step, dev, args.warmup, args.iters)
            if dev.type == "cuda":
                mem = peak_memory(step, dev)
            n = sum(p.numel() for p in model.parameters()) / 1e6
            name = f"{size} (D {bcfg['embed_dim']}, depth {bcfg['depth']})"
            print(f"| {name} | {bcfg['img_size']}px / p{bcfg['patch_size']} | {batch} | {dname} | {n:.2f} | "
                  f"{batch / sec:.1f} | {1000 * sec:.0f} | {'n/a' if mem is None else f'{mem:.0f}'} |")
            del model, opt
