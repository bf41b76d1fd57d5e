"""Image classification on mmengine: the NEPA classifier, top-1/top-5 metric, model + EMA validation.

`NepaClassifier` wraps a `NepaViT` (the release's head: final norm -> mean of patch tokens -> fc_norm ->
zero-initialised Linear) as ``self.backbone``, so the layer-decay constructor's ``backbone.`` prefix
applies. Training uses timm's Mixup/CutMix and losses. `ClsValLoop` evaluates the model and, when an
`EMAHook` is present, its EMA in the same validation, reporting ``top1/top5`` and ``ema_top1/ema_top5``.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.evaluator import BaseMetric
from mmengine.hooks import EMAHook, Hook
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.registry import DATASETS, HOOKS, LOOPS, METRICS, MODELS
from mmengine.runner import ValLoop, autocast

from backbones.nepa import CheckpointError, CheckpointReads, NepaConfig, NepaViT, SIZES, from_pretrained
from nepa_eval.data import DataError
from nepa_eval.data import sources as _sources  # noqa: F401  (registers the image datasets and nepa_collate)
from nepa_eval import layer_decay as _layer_decay  # noqa: F401  (registers the constructor and LR hook)
from nepa_eval.engine import update_final


# NepaConfig fields a fine-tuning config may change on top of a checkpoint's architecture: they carry no weights
RUNTIME_FIELDS = ("causal", "drop_path_rate", "rope_rescale", "pad_to_patch", "global_pool")


@contextmanager
def _named_checkpoint_errors(ckpt: str) -> Iterator[None]:
    """Errors of reading `ckpt` as a CheckpointError naming the file (and what a mangled one is not)."""
    try:
        yield
    except CheckpointError as e:
        if str(ckpt) in str(e):
            raise
        raise CheckpointError(f"{ckpt}: {e}") from e
    except (KeyError, IndexError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{ckpt}: not a NEPA backbone checkpoint (no ViT blocks / patch embedding found: "
                              f"{type(e).__name__} {e}). Give a NEPA pretraining or fine-tuning checkpoint, or a "
                              "release model directory.") from e


def build_backbone(backbone: Optional[dict] = None, ckpt: Optional[str] = None, num_classes: Optional[int] = 0,
                   verbose: bool = True, ema: bool = False, checkpoint_reads: Optional[CheckpointReads] = None
                   ) -> NepaViT:
    """A NepaViT with a `num_classes` head: from a checkpoint (its architecture, config run-time fields on top;
    the read the run's task made is taken from `checkpoint_reads`) or randomly initialised from `backbone`:
    ``model_name`` (a timm name, e.g. nepa_base_patch14_224) or ``size``, plus any NepaConfig fields."""
    kw = dict(backbone or {})
    size, model_name = kw.pop("size", None), kw.pop("model_name", None)
    if ckpt:
        overrides = {k: kw[k] for k in RUNTIME_FIELDS if k in kw}
        with _named_checkpoint_errors(ckpt):
            model = from_pretrained(ckpt, ema=ema, num_classes=num_classes, verbose=verbose,
                                    checkpoint_reads=checkpoint_reads, **overrides)
        return model.train()
    if model_name is not None:  # the timm-registered model (importing backbones registers nepa_*)
        import timm

        return timm.create_model(model_name, pretrained=False, num_classes=num_classes, **kw)
    if size is not None:
        if size not in SIZES:
            raise ValueError(f"backbone size {size!r} unknown; choose from {sorted(SIZES)}")
        kw = {**SIZES[size], **kw}
    return NepaViT(NepaConfig.from_dict({}, **kw, num_classes=num_classes))


@MODELS.register_module()
class NepaClassifier(BaseModel):
    """NEPA ViT + the release's head, trained with timm's Mixup/CutMix, label smoothing and soft-target CE.

    backbone: ``model_name`` (timm) or ``size``, and NepaConfig fields (``causal``, ``drop_path_rate``, ...);
    with `ckpt` the architecture comes from the checkpoint and only run-time fields apply; `ckpt_ema` takes the
    checkpoint's EMA weights where it holds both.
    freeze_patch_embed: freeze the patch projection (the release does). linear_probe: freeze the whole
    backbone and train a plain Linear on the pooled features (no fc_norm, no BatchNorm).
    checkpoint_reads: the run's `CheckpointReads` (the engine passes it when building the model; never in a config).
    """

    def __init__(self, num_classes: int, backbone: Optional[dict] = None, ckpt: Optional[str] = None,
                 ckpt_ema: bool = False, freeze_patch_embed: bool = False, linear_probe: bool = False,
                 mixup: Optional[dict] = None, label_smoothing: float = 0.0, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None, checkpoint_reads: Optional[CheckpointReads] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.backbone = build_backbone(backbone, ckpt, num_classes, ema=ckpt_ema, checkpoint_reads=checkpoint_reads)
        self.linear_probe = linear_probe
        if linear_probe:
            self.backbone.requires_grad_(False)
            self.backbone.fc_norm = nn.Identity()
            self.backbone.head = nn.Linear(self.backbone.embed_dim, num_classes)
            nn.init.trunc_normal_(self.backbone.head.weight, std=0.01)
            nn.init.zeros_(self.backbone.head.bias)
        elif freeze_patch_embed:
            self.backbone.patch_embed.requires_grad_(False)
        self.mixup = None
        if mixup and (mixup.get("mixup_alpha", 0) > 0 or mixup.get("cutmix_alpha", 0) > 0
                      or mixup.get("cutmix_minmax") is not None):
            from timm.data import Mixup

            self.mixup = Mixup(**{"label_smoothing": label_smoothing, **mixup}, num_classes=num_classes)
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        if self.mixup is not None:
            self.criterion = SoftTargetCrossEntropy()
        elif label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def init_weights(self) -> None:
        """Weights come from the checkpoint or NepaViT's own init; nothing for mmengine to re-initialise."""

    def train(self, mode: bool = True) -> "NepaClassifier":
        super().train(mode)
        if self.linear_probe:  # a frozen backbone stays in eval mode (no drop path, no RoPE jitter)
            self.backbone.eval()
            self.backbone.head.train(mode)
        return self

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class scores (B, C)."""
        if self.linear_probe:
            with torch.no_grad():
                feats = self.backbone.forward_head(self.backbone.forward_features(inputs), pre_logits=True)
            return self.backbone.head(feats)
        return self.backbone(inputs)

    def forward(self, inputs: torch.Tensor, labels: Optional[torch.Tensor] = None, mode: str = "tensor"):
        if mode == "tensor":
            return self.logits(inputs)
        if mode == "loss":
            if self.mixup is not None:
                if inputs.shape[0] % 2:
                    raise ValueError(f"Mixup/CutMix needs an even batch, got {inputs.shape[0]} images; use an even "
                                     "batch_size and train_dataloader.drop_last=True, or switch mixup off")
                inputs, labels = self.mixup(inputs, labels)
            return dict(loss=self.criterion(self.logits(inputs), labels))
        if mode == "predict":
            logits = self.logits(inputs).float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu()
            lab = labels.cpu() if labels is not None else [None] * len(top)
            return [dict(topk=t, label=None if y is None else int(y)) for t, y in zip(top, lab)]
        raise ValueError(f"unknown mode {mode!r}: tensor, loss or predict")


@METRICS.register_module()
class TopKAccuracy(BaseMetric):
    """Top-1 and top-5 accuracy in percent (per-sample results, so distributed padding is dropped exactly)."""

    default_prefix: Optional[str] = None

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for s in data_samples:
            t, y = s["topk"], s["label"]
            self.results.append((float(t[0] == y), float((t == y).any())))

    def compute_metrics(self, results: list) -> dict[str, float]:
        n = max(1, len(results))
        return dict(top1=100.0 * sum(r[0] for r in results) / n, top5=100.0 * sum(r[1] for r in results) / n)


def align_save_best(cfg: Any) -> None:
    """Keep the best checkpoint by EMA accuracy when the run has an EMA, by plain accuracy when it has none."""
    ck = cfg.get("default_hooks", {}).get("checkpoint") or {}
    has_ema = any(h.get("type") == "EMAHook" for h in cfg.get("custom_hooks", []))
    if ck.get("save_best") in ("ema_top1", "top1"):
        ck["save_best"] = "ema_top1" if has_ema else "top1"


def find_ema_hook(runner) -> Optional[EMAHook]:
    """The runner's EMAHook, if any."""
    return next((h for h in runner.hooks if isinstance(h, EMAHook)), None)


@LOOPS.register_module()
class ClsValLoop(ValLoop):
    """Validation of the model and its EMA in one pass over the hooks: metrics ``top1`` ... and ``ema_top1`` ...

    EMAHook swaps the EMA weights into the model in ``before_val_epoch``; while swapped, the EMA wrapper's
    module holds the raw weights, so both are evaluated without copying anything.
    """

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        for idx, batch in enumerate(self.dataloader):
            self.runner.call_hook("before_val_iter", batch_idx=idx, data_batch=batch)
            with torch.no_grad(), autocast(enabled=self.fp16):
                outputs = model.val_step(batch)
            self.evaluator.process(data_samples=outputs, data_batch=batch)
            self.runner.call_hook("after_val_iter", batch_idx=idx, data_batch=batch, outputs=outputs)
        return self.evaluator.evaluate(len(self.dataloader.dataset))

    def run(self) -> dict:
        self.runner.call_hook("before_val")
        self.runner.call_hook("before_val_epoch")
        ema = find_ema_hook(self.runner)
        if ema is not None and hasattr(ema, "ema_model"):
            metrics = self._evaluate(ema.ema_model.module)  # raw weights while swapped
            metrics.update({f"ema_{k}": v for k, v in self._evaluate(self.runner.model).items()})
        else:
            metrics = self._evaluate(self.runner.model)
        self.runner.model.eval()
        self.runner.call_hook("after_val_epoch", metrics=metrics)
        self.runner.call_hook("after_val")
        return metrics


@HOOKS.register_module()
class ClsRecordHook(Hook):
    """final_metrics.json for classification: top1/top5, ema_top1/ema_top5, best_ema_top1 (percent), protocol;
    and the NEPA config in every checkpoint's meta, so the weight door rebuilds the exact model from it.

    `init_knn=True`: before the first step, also the k-NN top-1 of the backbone the run starts from (pretrained or
    random), on the run's own data (train split votes, val split is classified, both through the val transform):
    `init_knn_top1`, the frozen-feature column of the ablation tables, measured on exactly the fine-tune's data."""

    priority = "LOW"

    def __init__(self, protocol: str = "finetune", init_knn: bool = False) -> None:
        self.protocol = protocol
        self.init_knn = init_knn
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None

    def before_run(self, runner) -> None:
        update_final(runner.work_dir, task="cls", protocol=self.protocol)

    def before_train(self, runner) -> None:
        if not self.init_knn or runner.iter > 0 or not is_main_process():  # a resumed run keeps its number
            return
        from nepa_eval.knn import knn_eval
        from nepa_eval.tasks.knn import knn_inputs

        bb = self._model(runner).backbone
        train_data, test_data, knn = knn_inputs(runner.cfg)  # (knn_eval puts the backbone back in train mode)
        res = knn_eval(bb, train_data, test_data, k=knn["k"], temperature=knn["temperature"],
                       batch_size=knn["batch_size"], pool=knn["pool"], device=next(bb.parameters()).device,
                       num_classes=int(runner.cfg.model.num_classes))
        update_final(runner.work_dir, init_knn_top1=res["knn_top1"])
        runner.logger.info(f"[nepa] k-NN top-1 of the starting backbone on this run's data: {res['knn_top1']:.2f}%")

    def _model(self, runner) -> nn.Module:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        bb = getattr(self._model(runner), "backbone", None)
        if isinstance(bb, NepaViT):
            cfg = bb.cfg.to_dict()
            cfg.update(num_classes=bb.num_classes, causal=bb.causal, global_pool=bb.global_pool)
            checkpoint.setdefault("meta", {})["nepa_config"] = cfg
            if getattr(self._model(runner), "linear_probe", False):
                checkpoint["meta"]["nepa_linear_probe"] = True
        checkpoint.setdefault("meta", {})["cls_best_ema_top1"] = self.best

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.best = checkpoint.get("meta", {}).get("cls_best_ema_top1", self.best)

    def _record(self, runner, metrics: Optional[dict], step: int) -> None:
        if not metrics or "top1" not in metrics:
            return
        key = "ema_top1" if "ema_top1" in metrics else "top1"
        if self.best is None or metrics[key] > self.best:
            self.best, self.best_step = metrics[key], step
        vals = {k: metrics[k] for k in ("top1", "top5", "ema_top1", "ema_top5") if k in metrics}
        update_final(runner.work_dir, **vals, best_ema_top1=self.best, best_metric=key, best_step=self.best_step)

    def after_val_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        self._record(runner, metrics, runner.iter)

    def after_test_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        if metrics:
            update_final(runner.work_dir, **{k: metrics[k] for k in ("top1", "top5") if k in metrics})


# ----------------------------------------------------------------------------------------------
# the task: `nepa-eval cls`
# ----------------------------------------------------------------------------------------------
DEFAULT_CONFIGS = {
    "finetune": "cls_configs/finetune/nepa-b_in1k.py",
    "linear": "cls_configs/linear/nepa-b_in1k.py",
    "knn": "cls_configs/linear/knn_in1k.py",
}


def set_data(cfg: Any, value: str) -> None:
    """`--data`: every loader's dataset on the resolved data, each split named as the data names it."""
    from nepa_eval.data.resolve import resolve_data

    spec = resolve_data(value, labelled=True)
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(key):
            ds = cfg[key].dataset
            ds.update(spec.dataset(ds.get("split", "train")))


def _check_data(cfg: Any, need_train: bool = True) -> int:
    """Open the train and val datasets (first image of each) and return their common class count."""
    counts = {}
    for name in (["train_dataloader"] if need_train else []) + ["val_dataloader"]:
        ds_cfg = {k: v for k, v in cfg[name].dataset.items() if k != "transform"}
        try:
            ds = DATASETS.build(ds_cfg)
            problems = []
            for i in range(min(len(ds), 20)):  # a bad first file is skipped at run time, not a reason to stop
                problem = ds.check_item(i)
                if problem is None:
                    break
                problems.append(problem)
            else:
                raise DataError(f"unreadable images: none of the first {len(problems)} decodes: "
                                + "; ".join(f"{f} ({r})" for f, r in problems[:3]))
            if ds.num_classes == 0:
                raise DataError(f"{ds_cfg.get('source')}:{ds_cfg.get('root') or ''}:{ds_cfg.get('split')} has no "
                                "labels (classification needs class folders, or a ClassLabel / integer label column)")
        except DataError as e:
            raise DataError(f"{name.split('_')[0]} data: {e}") from None
        counts[name.split("_")[0]] = (ds.num_classes, len(ds))
    classes = {c for c, _ in counts.values()}
    if len(classes) > 1:
        raise ValueError(f"class count mismatch between splits: {counts} (classes, images); the train and val "
                         "splits must hold the same classes")
    return classes.pop()


def _checkpoint_head(ckpt: str, ema: bool, reads: Optional[CheckpointReads] = None) -> tuple[int, list[str]]:
    """(classes of the checkpoint's head (0: none), head parts missing) from ONE read of the file; the read stays
    in the run's `reads` for the model the Runner builds, so the run reads the file once."""
    from backbones.nepa.checkpoint import read_checkpoint, resolve_config, to_nepa_state_dict

    with _named_checkpoint_errors(ckpt):
        raw = reads.read(ckpt, ema=ema) if reads is not None else read_checkpoint(ckpt, ema=ema)
        sd, notes = to_nepa_state_dict(raw)
        arch = resolve_config(raw, sd, notes)
    classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else int(arch.get("num_classes") or 0)
    missing = [k for k in ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias") if k not in sd] if classes else []
    return classes, missing


def _mixup_active(model_cfg: Any) -> bool:
    m = model_cfg.get("mixup") or {}
    return bool(m) and (m.get("mixup_alpha", 0) > 0 or m.get("cutmix_alpha", 0) > 0
                        or m.get("cutmix_minmax") is not None)


def build_cfg(args: Any, reads: Optional[CheckpointReads] = None) -> Any:
    """The resolved config of a classification run: protocol, checkpoint (read once, checked; the read stays in
    the run's `reads` for the model), data and class count, best-checkpoint rule, and for eval-only a test-only
    config (no training parts)."""
    from nepa_eval.engine import checkpoint_or_scratch, load_config

    if not args.config:
        args.config = DEFAULT_CONFIGS[args.protocol or "finetune"]
    cfg = load_config(args, "cls")
    cfg_protocol = cfg.get("protocol", "finetune")
    protocol = args.protocol or cfg_protocol
    if protocol != "knn" and cfg_protocol != protocol:
        raise ValueError(f"--protocol {protocol} with {args.config}, a {cfg_protocol} config; give a "
                         f"cls_configs/{'linear' if protocol == 'linear' else 'finetune'}/ config")
    if not args.work_dir and cfg_protocol != protocol:
        cfg.work_dir = str(Path(cfg.work_dir).with_name(Path(cfg.work_dir).name + f"_{protocol}"))
    ckpt = args.ckpt if args.ckpt is not None else cfg.model.get("ckpt")
    if ckpt is None:
        raise ValueError("give --ckpt PATH (a NEPA checkpoint), or --ckpt none to train from random initialisation")
    ckpt = checkpoint_or_scratch(ckpt)
    eval_only = bool(getattr(args, "eval_only", False))
    if ckpt is None and (protocol != "finetune" or eval_only):
        raise ValueError(f"{'--eval-only' if eval_only else '--protocol ' + protocol} needs a checkpoint "
                         "(--ckpt PATH), not random initialisation")
    if getattr(args, "data", None):
        set_data(cfg, args.data)
    num_classes = _check_data(cfg, need_train=not eval_only)
    want = cfg.model.get("num_classes")
    # the config's count is that of its own data: --data brings its own, unless --cfg-options states one
    stated = "model.num_classes" in (args.cfg_options or {}) or not getattr(args, "data", None)
    if want is not None and want != num_classes and stated:
        raise ValueError(f"class count mismatch: the config says model.num_classes={want}, the data has "
                         f"{num_classes} classes")
    if ckpt is not None:
        head, missing = _checkpoint_head(ckpt, bool(args.ema), reads)
        if eval_only:
            if head == 0:
                raise ValueError(f"--eval-only: {ckpt} is a backbone without a classifier head; fine-tune it "
                                 "first, or use --protocol linear / knn")
            if head != num_classes:
                raise ValueError(f"class count mismatch: {ckpt} has a {head}-class head, the data has "
                                 f"{num_classes} classes")
            if missing:
                raise ValueError(f"--eval-only: {ckpt} lacks parts of its classifier ({', '.join(missing)}); "
                                 "cannot evaluate it as is")
    cfg.protocol = "eval-only" if eval_only else protocol
    cfg.model.ckpt, cfg.model.ckpt_ema, cfg.model.num_classes = ckpt, bool(args.ema), num_classes
    if protocol == "knn":
        return cfg
    for h in cfg.get("custom_hooks", []):
        if h.get("type") == "ClsRecordHook":
            h["protocol"] = cfg.protocol
    align_save_best(cfg)
    if eval_only:
        _to_eval_only(cfg)
    elif _mixup_active(cfg.model):
        bs, drop = cfg.train_dataloader.batch_size, cfg.train_dataloader.get("drop_last", False)
        if bs % 2 or not drop:
            raise ValueError(f"Mixup/CutMix needs even batches: train_dataloader.batch_size={bs}, drop_last={drop}; "
                             "use an even batch size with drop_last=True, or set model.mixup=None")
    return cfg


def _to_eval_only(cfg: Any) -> None:
    """A test-only config: architecture, attention mode and head all from the checkpoint, no training parts."""
    cfg.model.backbone = {}
    cfg.model.mixup = None
    cfg.model.freeze_patch_embed = False
    cfg.model.linear_probe = False
    cfg.custom_hooks = [h for h in cfg.get("custom_hooks", []) if h.get("type") not in ("EMAHook", "LayerDecayLRHook")]
    for key in ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler"):
        cfg.pop(key, None)
    cfg.test_dataloader = cfg.val_dataloader


def knn_cfg(cls_cfg: Any) -> Any:
    """The k-NN config (nepa_eval/tasks/knn.py) of a resolved `nepa-eval cls --protocol knn` config."""
    from mmengine.config import Config

    from nepa_eval.tasks.knn import knn_inputs

    train_data, test_data, knn = knn_inputs(cls_cfg)
    return Config(dict(
        task="knn", ckpt=cls_cfg.model.ckpt, ema=bool(cls_cfg.model.get("ckpt_ema")), random_init=False, seed=0,
        device="auto", data=None, json=None, work_dir=cls_cfg.work_dir, record=dict(task="cls", protocol="knn"),
        num_classes=int(cls_cfg.model.num_classes), config_dump=cls_cfg.pretty_text,
        backbone={k: v for k, v in (cls_cfg.model.get("backbone") or {}).items() if k in RUNTIME_FIELDS},
        train_data=train_data, test_data=test_data, knn=knn))


def run(cfg: Any, reads: Optional[CheckpointReads] = None) -> int:
    """Fine-tune / linear probe (train), evaluate only (test), or k-NN, as cfg.protocol says; `reads`: the
    checkpoint `build_cfg` read, for the model."""
    from nepa_eval.engine import build_runner, train

    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    if cfg.protocol == "knn":
        from nepa_eval.tasks import knn

        if cfg.get("check_data"):
            from nepa_eval.engine import stop_on_bad_data

            stop_on_bad_data(cfg)
        return knn.run(knn_cfg(cfg), reads)
    base = dict(task="cls", protocol=cfg.protocol, ckpt=cfg.model.ckpt or "random-init")
    if cfg.protocol != "eval-only":
        update_final(cfg.work_dir, **base, num_classes=cfg.model.num_classes)
        train(cfg, reads)
        return 0
    update_final(cfg.work_dir, **base, ema=cfg.model.ckpt_ema, steps=0)
    metrics = build_runner(cfg, reads).test()
    update_final(cfg.work_dir, status="ok", top1=metrics.get("top1"), top5=metrics.get("top5"), steps=0)
    print(f"[nepa] eval-only {cfg.model.ckpt}: top-1 {metrics.get('top1'):.2f}  top-5 {metrics.get('top5'):.2f}")
    return 0


__all__ = ["build_cfg", "run", "NepaClassifier", "TopKAccuracy", "ClsValLoop", "ClsRecordHook", "build_backbone", "find_ema_hook",
           "align_save_best"]
