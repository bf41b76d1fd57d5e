"""Layer-wise LR decay: exponents, parameter groups, and the lr each group actually gets at each step."""
import math

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from conftest import ROOT, require, tiny_kwargs
from nepa_eval.layer_decay import LayerDecayLRHook, build_param_groups, decay_rate_at, layer_exponent
from nepa_eval.tasks.cls import NepaClassifier

L = 3  # depth of the test model


def _model(**kw):
    return NepaClassifier(num_classes=10, backbone=tiny_kwargs(depth=L, **kw), freeze_patch_embed=False)


def _expected_exponent(name: str) -> int:
    """The release's assignment, written out independently of the module under test."""
    local = name[len("backbone."):]
    if local.startswith("blocks."):
        return L - 1 - int(local.split(".")[1])
    if local.startswith(("cls_token", "pos_embed", "patch_embed")):
        return L
    assert local.startswith(("norm.", "fc_norm.", "head.")), name
    return 0


def test_exponents_follow_the_release():
    m = _model()
    names = [n for n, _ in m.named_parameters()]
    assert {layer_exponent(n, L) for n in names} == set(range(L + 1))
    for n in names:
        assert layer_exponent(n, L) == _expected_exponent(n), n
    assert layer_exponent("backbone.blocks.0.attn.qkv.weight", 12) == 11
    assert layer_exponent("backbone.blocks.11.mlp.fc1.weight", 12) == 0
    assert layer_exponent("decode_head.conv_seg.weight", 12) == 0  # outside the backbone (segmentation heads)


def test_groups_weight_decay_only_on_matrices_and_head_lr():
    m = _model()
    m.backbone.patch_embed.requires_grad_(False)
    groups = build_param_groups(m, base_lr=1e-2, weight_decay=0.05, num_layers=L, head_lr=1e-3, rate=0.5)
    seen = {}
    for g in groups:
        for n, p in zip(g["names"], g["params"]):
            seen[n] = g
            want_wd = 0.05 if (p.ndim >= 2 and "cls_token" not in n) else 0.0
            assert g["weight_decay"] == want_wd, n
    assert not any("patch_embed" in n for n in seen)  # frozen: not in the optimizer
    assert len(seen) == sum(p.requires_grad for p in m.parameters())
    for n in ("backbone.head.weight", "backbone.fc_norm.weight", "backbone.norm.bias"):
        assert seen[n]["base_lr"] == 1e-3 and seen[n]["layer_exponent"] == 0 and seen[n]["lr"] == 1e-3
    g = seen["backbone.blocks.0.attn.qkv.weight"]
    assert g["base_lr"] == 1e-2 and g["layer_exponent"] == L - 1 and g["lr"] == pytest.approx(1e-2 * 0.5 ** (L - 1))
    assert seen["backbone.cls_token"]["layer_exponent"] == L


def _sched(step, total, warmup):
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def _rate(step, total, r0, r1, ramp):
    t = step / (total - 1)
    return {"constant": r0, "linear": r0 + (r1 - r0) * t, "cosine": r0 + (r1 - r0) * (1 - math.cos(math.pi * t)) / 2}[ramp]


def test_decay_rate_endpoints():
    assert decay_rate_at(0.0, 0.35, 1.0, "linear") == pytest.approx(0.35)
    assert decay_rate_at(1.0, 0.35, 1.0, "cosine") == pytest.approx(1.0)
    assert decay_rate_at(0.5, 0.35, 1.0, "linear") == pytest.approx(0.675)
    assert decay_rate_at(0.25, 0.35, 1.0, "cosine") < decay_rate_at(0.25, 0.35, 1.0, "linear")
    with pytest.raises(ValueError):
        decay_rate_at(0.5, 0.35, 1.0, "exponential")


@HOOKS.register_module()
class _LrProbeHook(Hook):
    """Records every group's lr after the optimizer step of each iteration (what the step used)."""

    priority = "LOWEST"

    def __init__(self) -> None:
        self.rows = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        opt = runner.optim_wrapper.optimizer
        names = {id(p): n for n, p in runner.model.named_parameters()}
        self.rows.append((runner.iter, [(g["lr"], [names[id(p)] for p in g["params"]]) for g in opt.param_groups]))


@pytest.mark.parametrize("ramp", ["constant", "linear", "cosine"])
def test_lr_each_group_gets_is_the_formula(tmp_path, ramp):
    """A real Runner, 12 iterations (3 of warm-up, then cosine): the optimizer's lr per group and step must be
    base_lr * schedule(t) * rate(t) ** exponent, and head_lr * schedule(t) for head / fc_norm / final norm."""
    from mmengine.runner import Runner

    cfg = Config.fromfile(str(ROOT / "cls_configs/finetune/nepa-t_fmnist.py"))
    r0, r1 = (0.65, None) if ramp == "constant" else (0.35, 1.0)
    cfg.merge_from_dict({
        "model.backbone": dict(tiny_kwargs(depth=L)), "model.num_classes": 10, "model.ckpt": None,
        "optim_wrapper.paramwise_cfg.layer_decay_rate": r0, "optim_wrapper.paramwise_cfg.layer_decay_rate_end": r1,
        "optim_wrapper.paramwise_cfg.layer_decay_ramp": ramp,
        "train_dataloader.batch_size": 8, "train_dataloader.dataset.limit": 32,
        "train_cfg": dict(by_epoch=True, max_epochs=3, val_interval=100),
        "optim_wrapper.optimizer.lr": 1e-2, "optim_wrapper.paramwise_cfg.head_lr": 3e-3,
        "default_hooks.checkpoint": dict(type="CheckpointHook", interval=100),
    })
    cfg.model.backbone.pop("size", None)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.custom_hooks = [h for h in cfg.custom_hooks if h["type"] == "LayerDecayLRHook"] + [dict(type="_LrProbeHook")]
    cfg.custom_hooks[0]["warmup_epochs"] = 0.75  # 3 of 4 iterations per epoch
    cfg.work_dir = str(tmp_path)
    cfg.experiment_name = f"lr_{ramp}"
    runner = Runner.from_cfg(cfg)
    runner.train()
    probe = next(h for h in runner.hooks if isinstance(h, _LrProbeHook))
    total, warmup = 12, 3
    assert [r[0] for r in probe.rows] == list(range(total))
    checked = set()
    for step, groups in probe.rows:
        s, r = _sched(step, total, warmup), _rate(step, total, r0, r1 or r0, ramp)
        for lr, names in groups:
            for n in names:
                local = n[len("backbone."):]
                want = 3e-3 * s if local.startswith(("head.", "fc_norm.", "norm.")) else 1e-2 * s * r ** _expected_exponent(n)
                assert lr == pytest.approx(want, rel=1e-9, abs=1e-15), (step, n)
                checked.add(n)
    assert checked == {n for n, p in runner.model.named_parameters() if p.requires_grad}
    # the ramp really moved: the lowest block's lr relative to the top block's follows rate(t) ** (L - 1)
    lo = {s_: lr for s_, gs in probe.rows for lr, ns in gs if "backbone.blocks.0.attn.qkv.weight" in ns}
    hi = {s_: lr for s_, gs in probe.rows for lr, ns in gs if f"backbone.blocks.{L - 1}.attn.qkv.weight" in ns}
    ratios = [lo[t] / hi[t] for t in (warmup, total - 2)]
    assert ratios == pytest.approx([_rate(t, total, r0, r1 or r0, ramp) ** (L - 1) for t in (warmup, total - 2)])
    assert (ratios[0] == pytest.approx(ratios[1])) == (ramp == "constant")


def test_the_hook_reads_the_schedule_the_constructor_recorded():
    """The decay schedule is stated once (paramwise_cfg): the constructor records it on every parameter group and
    the hook applies exactly that, so a variant or --cfg-options changes one place; the hook holds no rate."""
    from mmengine.optim import build_optim_wrapper

    cfg = Config.fromfile(str(ROOT / "cls_configs/finetune/nepa-b_in1k_constant-0.65.py"))
    assert not {"rate", "rate_end", "ramp"} & set(next(h for h in cfg.custom_hooks if h["type"] == "LayerDecayLRHook"))
    model = NepaClassifier(num_classes=3, backbone=dict(tiny_kwargs(depth=L)))
    for (rate, end, ramp), want_mid in (((0.65, None, "constant"), 0.65), ((0.35, 1.0, "cosine"), 0.675)):
        cfg.merge_from_dict({"optim_wrapper.paramwise_cfg.layer_decay_rate": rate,
                             "optim_wrapper.paramwise_cfg.layer_decay_rate_end": end,
                             "optim_wrapper.paramwise_cfg.layer_decay_ramp": ramp})
        opt = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
        assert {(g["layer_decay_rate"], g["layer_decay_rate_end"], g["layer_decay_ramp"]) for g in opt.param_groups} \
            == {(rate, end, ramp)}
        hook = LayerDecayLRHook(warmup=0, schedule="constant")
        hook.apply(opt, step=50, total=101)  # half-way: the ramp's middle
        assert hook.current_rate == pytest.approx(want_mid)
        g0 = next(g for g in opt.param_groups if g["layer_exponent"] == L - 1)  # block 0
        assert g0["lr"] == pytest.approx(g0["base_lr"] * want_mid ** (L - 1))


def test_seg_exponents_are_mmsegs_own_layer_for_layer():
    """Our seg recipe's lr scales equal those of mmseg's own LearningRateDecayOptimizerConstructor on mmseg's own MAE
    backbone (the anchor's recipe), mapped layer for layer: MAE layers.i <-> our blocks.i, patch_embed.projection
    and cls_token <-> ours, the final norm and everything outside the backbone at scale 1. The release's convention is one step lower."""
    require("mmseg.models", "mmsegmentation with compiled mmcv ops")
    import torch.nn as nn
    from mmengine.optim import build_optim_wrapper
    from mmseg.engine.optimizers import LearningRateDecayOptimizerConstructor
    from mmseg.models.backbones import MAE

    from backbones.nepa.mmseg_backbone import NepaBackbone

    depth, rate = 3, 0.65
    theirs = nn.Module()
    theirs.backbone = MAE(img_size=28, patch_size=7, embed_dims=32, num_layers=depth, num_heads=2, mlp_ratio=2)
    theirs.decode_head = nn.Conv2d(32, 4, 1)
    ow = LearningRateDecayOptimizerConstructor(
        dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05)),
        dict(num_layers=depth, decay_rate=rate, decay_type="layer_wise"))(theirs)
    mmseg_scale = {n: g["lr_scale"] for g in ow.optimizer.param_groups for n in g["param_names"]}

    def layer_of(name: str) -> str:  # the role of a parameter, in either naming
        local = name.split(".", 1)[1] if name.startswith("backbone.") else None
        if local is None:
            return "top"
        if local.startswith(("layers.", "blocks.")):
            return f"block {local.split('.')[1]}"
        if local.split(".")[0] in ("cls_token", "pos_embed", "patch_embed", "mask_token"):
            return "embeddings"
        return "top"  # the backbone's final norm: mmseg's "everything else", as outside the backbone

    want = {}
    for n, s in mmseg_scale.items():
        assert want.setdefault(layer_of(n), s) == pytest.approx(s), n  # one scale per role in mmseg's groups
    cfg = Config.fromfile(str(ROOT / "seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py"))
    ours = nn.Module()
    ours.backbone = NepaBackbone(arch=dict(tiny_kwargs(depth=depth)), out_indices=[depth - 1], out_norm=True)
    ours.decode_head = nn.Conv2d(32, 4, 1)
    cfg.optim_wrapper.paramwise_cfg.layer_decay_rate = rate
    groups = build_optim_wrapper(ours, cfg.optim_wrapper).optimizer.param_groups
    names = {id(p): n for n, p in ours.named_parameters()}
    got = {names[id(p)]: rate ** g["layer_exponent"] for g in groups for p in g["params"]}
    assert {layer_of(n) for n in got} == set(want)  # the same roles: embeddings, every block, the top
    for n, s in got.items():
        assert s == pytest.approx(want[layer_of(n)]), n
    # the release's convention (classification) sits one step lower: block 0 at rate ** (L - 1), not rate ** L
    assert layer_exponent("backbone.blocks.0.attn.qkv.weight", depth) == depth - 1
    assert layer_exponent("backbone.blocks.0.attn.qkv.weight", depth, convention="mmseg") == depth
