"""Raw-pixel references (`nepa-eval pixels --config CLS_CONFIG`): what a classifier gets from the pixels alone.

On exactly the data of a classification config (its train split as training set, its val split as test set,
both through the val transform, so no augmentation), two references that every network row must beat:
- k-NN on the pixel vectors with the k-NN protocol of `nepa-eval knn` (cosine, k = 20, temperature 0.07);
- a linear classifier (softmax regression on standardised pixels, L-BFGS), its L2 weight chosen on a 10 % hold-out
  of the train split from WEIGHT_DECAYS, then refit on the whole split.
Grey images stored as RGB (Fashion-MNIST: three equal channels) are read as one channel: the same k-NN, a third of
the linear classifier's work.
Writes config.py and final_metrics.json (task 'pixels': knn_top1, linear_top1, linear_wd) in --work-dir.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.config import Config

WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1)
HOLD_OUT = 0.1


def build_cfg(args: Any) -> Config:
    """The classification config, with --cfg-options, and where the result goes."""
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file; give a classification config, e.g. "
                                "cls_configs/finetune/nepa-t_fmnist.py")
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir
    cfg.task = "pixels"
    return cfg


def _pixels(spec: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a dataset spec as flat float vectors (N, C*H*W) and their labels."""
    from torch.utils.data import DataLoader

    from nepa_eval.data.sources import build_image_dataset
    from nepa_eval.data.transforms import collate

    ds = build_image_dataset(spec)
    xs, ys = [], []
    grey = True
    for batch in DataLoader(ds, batch_size=500, shuffle=False, collate_fn=collate):
        x = batch["inputs"].float()
        grey = grey and x.shape[1] == 3 and bool((x[:, :1] == x[:, 1:]).all())
        xs.append(x)
        ys.append(batch["labels"])
    x = torch.cat(xs)
    return (x[:, :1] if grey else x).flatten(1), torch.cat(ys)


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
               max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax regression with an L2 penalty on the weights, solved with L-BFGS (strong Wolfe line search)."""
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def linear_top1(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], num_classes: int,
                seed: int = 0) -> tuple[float, float]:
    """(top-1 %, chosen weight decay) of the linear classifier; the weight decay is chosen on a hold-out of train."""
    (xtr, ytr), (xte, yte) = train, test
    mean, std = xtr.mean(0), xtr.std(0) + 1e-3  # constant pixels (borders) stay finite

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x - mean) / std

    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))
    n_hold = max(1, int(HOLD_OUT * len(xtr)))
    hold, fit = perm[:n_hold], perm[n_hold:]

    def acc(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
        return 100.0 * ((norm(x) @ w + b).argmax(1) == y).float().mean().item()

    scores = {wd: acc(*fit_linear(norm(xtr[fit]), ytr[fit], num_classes, wd), xtr[hold], ytr[hold])
              for wd in WEIGHT_DECAYS}
    best = max(scores, key=lambda wd: (scores[wd], wd))  # ties: the stronger penalty
    return acc(*fit_linear(norm(xtr), ytr, num_classes, best), xte, yte), best


def run(cfg: Config) -> int:
    from nepa_eval.engine import update_final
    from nepa_eval.knn import knn_accuracy
    from nepa_eval.records import code_commit, new_run_id
    from nepa_eval.tasks.knn import knn_inputs

    wd = Path(cfg.work_dir)
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "config.py").write_text(cfg.pretty_text)
    update_final(wd, task="pixels", status="running", run_id=new_run_id(), code_commit=code_commit(),
                 started_from=None)  # raw pixels: no network, no checkpoint
    train_data, test_data, knn = knn_inputs(cfg)  # the data and k-NN settings of the config's own k-NN
    train, test = _pixels(train_data), _pixels(test_data)
    n_cls = int(max(train[1].max(), test[1].max())) + 1
    res = knn_accuracy(F.normalize(train[0], dim=1), train[1], F.normalize(test[0], dim=1), test[1], n_cls,
                       k=knn["k"], temperature=knn["temperature"])
    top1, weight_decay = linear_top1(train, test, n_cls, seed=int((cfg.get("randomness") or {}).get("seed", 0)))
    update_final(wd, status="ok", knn_top1=res["knn_top1"], knn_top5=res.get("knn_top5"), linear_top1=top1,
                 linear_wd=weight_decay, train_images=len(train[0]), test_images=len(test[0]), num_classes=n_cls)
    print(f"[nepa] raw pixels ({len(train[0])} train / {len(test[0])} test images): k-NN top-1 {res['knn_top1']:.2f}%, "
          f"linear classifier top-1 {top1:.2f}% (L2 {weight_decay:g}, chosen on a {HOLD_OUT:.0%} hold-out)")
    return 0
