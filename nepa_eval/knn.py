"""k-NN classification of frozen features (DINO style: cosine similarity, k = 20, temperature 0.07)."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader: Iterable, device: Optional[torch.device] = None,
                     pool: str = "avg", progress: bool = False,
                     layer: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised pooled features (mean of patch tokens, or cls with pool='token') and labels.

    `layer`: read the output of that block (mean of its patch tokens, before any norm) instead of the final
    features; autoregressive models often hold their most linearly separable features mid-depth (iGPT)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    feats, labels = [], []
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="features", leave=False)
    for batch in it:
        x, y = (batch["inputs"], batch["labels"]) if isinstance(batch, dict) else batch
        if layer is not None:
            f = model.forward_intermediates(x.to(device), indices=[layer], output_fmt="NLC",
                                            intermediates_only=True)[0].mean(1)
        else:
            tokens = model.forward_features(x.to(device))
            f = model.pool(tokens, pool) if hasattr(model, "pool") else tokens[:, 1:].mean(1)
        feats.append(F.normalize(f.float(), dim=-1).cpu())
        labels.append(torch.as_tensor(y).cpu())
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores (N_test, C): the k nearest training features vote with weight exp(cos / T)."""
    k = min(k, len(train_feats))
    scores = []
    for i in range(0, len(test_feats), chunk):
        sim = test_feats[i:i + chunk] @ train_feats.T
        top, idx = sim.topk(k, dim=1)
        w = (top / temperature).exp()
        votes = torch.zeros(len(top), num_classes)
        votes.scatter_add_(1, train_labels[idx], w)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 20, temperature: float = 0.07) -> dict[str, float]:
    """Top-1 (and top-5 when there are at least 5 classes) k-NN accuracy in percent."""
    scores = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature)
    out = {"knn_top1": 100.0 * (scores.argmax(1) == test_labels).float().mean().item()}
    if num_classes >= 5:
        top5 = scores.topk(5, dim=1).indices
        out["knn_top5"] = 100.0 * (top5 == test_labels[:, None]).any(1).float().mean().item()
    return out


def knn_eval(backbone: torch.nn.Module, train_data: dict, test_data: dict, k: int = 20, temperature: float = 0.07,
             batch_size: int = 256, num_workers: int = 0, pool: str = "avg",
             device: Optional[torch.device] = None, layers: Sequence[Optional[int]] = (None,),
             num_classes: Optional[int] = None, with_counts: bool = False) -> dict[str, float]:
    """k-NN top-1/top-5 (percent) of a frozen backbone: features of `train_data` (ImageDataset arguments) vote
    for `test_data`.

    `layers`: None = the final features (knn_top1); an int k adds knn_top1_block{k} from block k's output.
    `num_classes`: None = from the data. `with_counts`: also train_images / test_images."""
    from torch.utils.data import DataLoader

    from nepa_eval.data.sources import build_image_dataset
    from nepa_eval.data.transforms import collate

    def loader(spec: dict) -> DataLoader:
        spec = dict(spec)
        spec.setdefault("transform", dict(kind="resize", img_size=backbone.cfg.img_size))
        return DataLoader(build_image_dataset(spec), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          collate_fn=collate)

    train_loader, test_loader = loader(train_data), loader(test_data)
    out: dict[str, float] = {}
    for layer in layers:
        ftr, ltr = extract_features(backbone, train_loader, device=device, pool=pool, layer=layer)
        fte, lte = extract_features(backbone, test_loader, device=device, pool=pool, layer=layer)
        n = num_classes or max(len(train_loader.dataset.classes), int(ltr.max()) + 1, int(lte.max()) + 1)
        res = knn_accuracy(ftr, ltr, fte, lte, n, k=k, temperature=temperature)
        suffix = "" if layer is None else f"_block{layer}"
        out.update({f"{key}{suffix}": v for key, v in res.items()})
    if with_counts:
        out.update(train_images=len(train_loader.dataset), test_images=len(test_loader.dataset))
    return out
