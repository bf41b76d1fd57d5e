"""k-NN of frozen features (DINO style: cosine, k = 20, temperature 0.07): `nepa-eval knn` and `cls --protocol knn`.

One config shape for both: ``ckpt`` (any format the weight door reads), ``ema``, ``random_init`` (the same
architecture with fresh weights: the baseline a pretraining must beat), ``train_data`` / ``test_data``
(ImageDataset arguments: the train split's features vote for each test image), ``knn`` (k, temperature, pool,
blocks, batch_size), ``backbone`` (run-time NepaConfig fields on top of the checkpoint's), and where the result
goes (``work_dir`` -> final_metrics.json, ``json``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmengine.config import Config

KNN_DEFAULTS = dict(k=20, temperature=0.07, pool="avg", blocks=[], batch_size=256)


def knn_inputs(cls_cfg: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(train_data, test_data, knn settings) of k-NN on a classification config's data: its train split as the
    memory bank (encoded like the queries: the eval transform, no augmentation), its val split as the queries."""
    eval_tf = cls_cfg.val_dataloader.dataset.get("transform")
    knn = dict(KNN_DEFAULTS, **(cls_cfg.get("knn") or {}), batch_size=cls_cfg.val_dataloader.get("batch_size", 256))
    return ({**cls_cfg.train_dataloader.dataset, "transform": eval_tf},
            {**cls_cfg.val_dataloader.dataset, "transform": eval_tf}, knn)


def build_cfg(args: Any) -> Config:
    """The k-NN config of `nepa-eval knn` arguments (the input size defaults to the checkpoint's, at run time);
    --data resolved by `nepa_eval.data.resolve` (fashion_mnist, folder:ROOT and hf:ROOT as before)."""
    from nepa_eval.data.resolve import resolve_data

    tf = dict(kind="resize", img_size=args.img_size) if args.img_size else None
    spec = resolve_data(args.data, labelled=True)
    return Config(dict(
        task="knn", ckpt=str(args.ckpt), ema=bool(args.ema), random_init=bool(args.random_init), seed=args.seed,
        device=args.device, data=args.data, json=args.json, work_dir=getattr(args, "work_dir", None), backbone={},
        train_data=spec.dataset(args.train_split, limit=args.train_limit, transform=tf),
        test_data=spec.dataset(args.test_split, limit=args.test_limit, transform=tf),
        knn=dict(KNN_DEFAULTS, k=args.k, temperature=args.temperature, pool=args.pool, blocks=list(args.block),
                 batch_size=args.batch_size)))


def run(cfg: Config, reads: Any = None) -> int:
    """Extract features, vote, report: stdout, and final_metrics.json / a JSON file where the config says.
    `reads`: the run's `CheckpointReads` when its task already read the checkpoint (`cls --protocol knn`)."""
    import torch
    from mmengine.dist import is_main_process

    from backbones.nepa import NepaViT, from_pretrained
    from nepa_eval.data.bad_files import (LOG_NAME, bad_file_limit, read_records, start_collecting,
                                          stop_collecting, summary)
    from nepa_eval.timing import device_of
    from nepa_eval.engine import update_final
    from nepa_eval.knn import knn_eval

    if not is_main_process():
        return 0
    wd = Path(cfg.work_dir) if cfg.get("work_dir") else None
    record = dict(cfg.get("record") or {"task": "knn"})
    knn = dict(KNN_DEFAULTS, **cfg.knn)
    if wd is not None:
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "config.py").write_text(cfg.get("config_dump") or cfg.pretty_text)
        from nepa_eval.records import code_commit, new_run_id, started_from

        update_final(wd, **record, status="running", ckpt=cfg.ckpt, k=knn["k"], temperature=knn["temperature"],
                     run_id=new_run_id(), code_commit=code_commit(),
                     started_from=None if cfg.random_init else started_from(cfg.ckpt, cfg.ema))
    model = from_pretrained(cfg.ckpt, ema=cfg.ema, num_classes=0, verbose=not cfg.random_init,
                            checkpoint_reads=reads, **cfg.backbone)
    if cfg.random_init:
        torch.manual_seed(cfg.seed)
        model = NepaViT(model.cfg)
    dev = device_of(cfg.get("device", "auto"))
    model.eval().to(dev)
    size_tf = dict(kind="resize", img_size=model.cfg.img_size)
    train, test = ({**d, "transform": d.get("transform") or size_tf} for d in (cfg.train_data, cfg.test_data))
    log = wd / LOG_NAME if wd is not None else None
    previous = start_collecting(log) if log is not None else None
    if log is not None:
        log.unlink(missing_ok=True)
    try:
        res = knn_eval(model, train, test, k=knn["k"], temperature=knn["temperature"], batch_size=knn["batch_size"],
                       pool=knn["pool"], device=dev, layers=[None, *knn["blocks"]],
                       num_classes=cfg.get("num_classes"), with_counts=True)
    finally:
        if log is not None:
            stop_collecting(previous)
    n_train, n_test = res.pop("train_images"), res.pop("test_images")
    weights = "random init" if cfg.random_init else ("ema" if cfg.ema else "raw")
    blocks = "".join(f", block {b} top-1 {res[f'knn_top1_block{b}']:.2f}%" for b in knn["blocks"])
    print(f"k-NN top-1 {res['knn_top1']:.2f}%" + (f", top-5 {res['knn_top5']:.2f}%" if "knn_top5" in res else "")
          + f"{blocks} ({weights}, {cfg.ckpt}, k={knn['k']}, T={knn['temperature']})")
    if wd is not None:
        bad = summary(read_records(log)[0], bad_file_limit(n_train + n_test))
        for r in bad["files"]:
            print(f"[nepa] bad file skipped: {r['file']}: {r['reason']}")
        update_final(wd, status="ok", reason="", steps=0, top1=res["knn_top1"], top5=res.get("knn_top5"), **res,
                     train_images=n_train, val_images=n_test, bad_files=bad)
    if cfg.get("json"):
        out = dict(res, ckpt=str(cfg.ckpt), weights=weights, k=knn["k"], temperature=knn["temperature"],
                   data=cfg.get("data"), train_images=n_train, test_images=n_test)
        Path(cfg.json).write_text(json.dumps(out, indent=2))
    return 0
