"""`NepaCheckpointHook` (``default_hooks.checkpoint`` in the pretraining configs): atomic, self-describing
checkpoints and the RNG states for an exact resume."""
from __future__ import annotations

import os
import random
from collections import deque
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from backbones.nepa import NepaViT, save_checkpoint
from nepa_eval.engine import update_final


def ema_backbone(runner) -> Optional[NepaViT]:
    """The backbone of the EMAHook's averaged model, if the run has one."""
    for hook in runner.hooks:
        ema = getattr(hook, "ema_model", None)
        if ema is not None:
            return ema.module.backbone
    return None


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
        ema = ema_backbone(runner)
        if ema is not None:
            save_checkpoint(ema, wd / "backbone_ema.safetensors")
            files["backbone_ema"] = "backbone_ema.safetensors"
        update_final(wd, nepa_config=model.nepa_config(), **files)
