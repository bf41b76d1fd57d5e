"""`KnnMonitorHook` (``default_hooks.knn`` in the pretraining configs): k-NN accuracy of the frozen backbone during
and after pretraining."""
from __future__ import annotations

import time
from typing import Optional, Sequence

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from backbones.nepa import NepaViT
from nepa_eval.engine import append_scalars, update_final
from nepa_eval.hooks.checkpoint import ema_backbone
from nepa_eval.knn import knn_eval


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
        ema = ema_backbone(runner) if self.ema else None
        if ema is not None:
            final.update({f"{k}_ema": v for k, v in self._eval(runner, ema).items()})
        append_scalars(runner.work_dir, {"step": runner.iter, **final})
        runner.visualizer.add_scalars({f"knn/{k}": v for k, v in final.items()}, step=runner.iter)
        update_final(runner.work_dir, knn_k=self.k, knn_temperature=self.temperature, **final)
