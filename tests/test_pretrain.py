"""nepa-eval pretrain: the model and its switches, parameter groups, recipe resolution, health metrics, the
collapse detector, and one tiny in-process run whose checkpoints load through the weight door."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import numpy as np
from PIL import Image

from conftest import mean_patch_features, needs_fashion, numpy_knn_top1, require, tiny_kwargs

require("mmengine", "mmengine")

from mmengine.config import Config  # noqa: E402

from nepa_eval.hooks import config_recipe  # noqa: E402
from nepa_eval.tasks.pretrain import NepaPretrainModel, health_metrics  # noqa: E402

TINY_CFG = "cls_configs/pretrain/nepa_tiny_fmnist.py"


def tiny_model(**kw) -> NepaPretrainModel:
    torch.manual_seed(0)
    return NepaPretrainModel(backbone=tiny_kwargs(), **kw)


def test_default_loss_is_the_release_loss():
    m = tiny_model().train()
    x = torch.randn(3, 3, 28, 28)
    loss = m(x)["loss"]
    bb = m.backbone
    z, grid = bb.embed(x)
    h = bb.forward_tokens(z, grid, causal=True)
    ref = -F.cosine_similarity(h[:, :-1], z.detach()[:, 1:], dim=-1).mean()
    assert torch.allclose(loss, ref, atol=1e-6)
    # stop-gradient: the target path carries no gradient, so the loss gradient equals the one through h only
    loss.backward()
    g_sg = bb.patch_embed.proj.weight.grad.clone()
    m2 = tiny_model(stop_grad=False).train()
    m2(x)["loss"].backward()
    assert not torch.allclose(g_sg, m2.backbone.patch_embed.proj.weight.grad, atol=1e-7)


@pytest.mark.parametrize("switch", ["shift", "causal"])
def test_switches_change_the_objective(switch):
    x = torch.randn(2, 3, 28, 28)
    m = tiny_model(**{switch: False}).eval()
    bb = m.backbone
    z, grid = bb.embed(x)
    if switch == "shift":  # predict the same position
        h = bb.forward_tokens(z, grid, causal=True)
        ref = -F.cosine_similarity(h, z, dim=-1).mean()
    else:  # bidirectional attention, still shifted
        assert bb.causal is False
        h = bb.forward_tokens(z, grid, causal=False)
        ref = -F.cosine_similarity(h[:, :-1], z[:, 1:], dim=-1).mean()
    assert torch.allclose(m(x)["loss"], ref, atol=1e-6)


def test_masking_replaces_inputs_not_targets():
    m = tiny_model(mask_ratio=0.5).train()
    assert m.model.mask_token is not None and m.model.mask_token.requires_grad
    x = torch.randn(2, 3, 28, 28)
    out = m(x)
    z, _ = m.backbone.embed(x)
    assert torch.allclose(m.last_outputs["z"], z.detach())  # targets are the clean embeddings
    masked = m.model.mask_inputs(z)
    replaced = (masked - z).abs().sum(-1) > 0
    assert replaced[:, 0].sum() == 0 and replaced.sum(1).tolist() == [8, 8]  # half of 16 patches, never cls
    out["loss"].backward()
    assert m.model.mask_token.grad is not None and m.model.mask_token.grad.abs().sum() > 0


def test_no_weight_decay_groups():
    """The recipe's paramwise_cfg, given to mmengine's own constructor, spares biases, norms, LayerScale, tokens."""
    from mmengine.optim import build_optim_wrapper

    m = tiny_model(mask_ratio=0.4)
    ow = Config.fromfile(TINY_CFG).optim_wrapper
    ow.optimizer.lr = 1e-3
    opt = build_optim_wrapper(m, ow).optimizer
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(m.named_parameters())
    assert len(wd_of) == len(names)
    for n, p in names.items():
        no_decay = (n.endswith(("bias", "gamma", "cls_token", "mask_token")) or "norm" in n)
        assert wd_of[id(p)] == (0.0 if no_decay else 0.05), n
    assert wd_of[id(names["model.backbone.blocks.0.attn.qkv.weight"])] == 0.05
    assert wd_of[id(names["model.backbone.blocks.0.ls1.gamma"])] == 0.0


def test_recipe_lr_and_schedule_follow_batch_and_iters():
    """What the configs' LrRecipeHook resolves, read from the config file after --cfg-options (the run itself is
    checked step by step in test_tools_train.py)."""
    cfg = Config.fromfile(TINY_CFG)
    assert cfg.param_scheduler == [] and cfg.default_hooks.lr_recipe.type == "LrRecipeHook"
    cfg.merge_from_dict({"train_dataloader.batch_size": 64, "optim_wrapper.accumulative_counts": 4,
                         "train_cfg.max_iters": 400, "optim_wrapper.optimizer.lr": 3e-4})
    info = config_recipe(cfg, world_size=2)
    assert info["effective_batch"] == 64 * 2 * 4 and info["updates"] == 100 and info["micro_iterations"] == 400
    assert info["lr"] == pytest.approx(3e-4 * 512 / 256)
    assert info["warmup_iters"] == 10  # 2.5 % of 400
    release = Config.fromfile("cls_configs/pretrain/nepa_b_release.py")
    assert release.optim_wrapper.optimizer.betas == (0.9, 0.95)
    info = config_recipe(release, world_size=8)
    assert info["effective_batch"] == 4096 and info["lr"] == pytest.approx(4.8e-3)
    assert info["warmup_iters"] == round(0.025 * release.train_cfg.max_iters)
    large = Config.fromfile("cls_configs/pretrain/nepa_l_release.py")
    assert large.model.backbone.depth == 24 and config_recipe(large, world_size=8)["effective_batch"] == 4096


def test_health_metrics_separate_collapse_from_spread():
    torch.manual_seed(0)
    spread = health_metrics(torch.randn(64, 17, 32))
    collapsed = health_metrics(torch.ones(64, 17, 32) + 1e-6 * torch.randn(64, 17, 32))
    assert 0.8 < spread["out_std"] < 1.2 and spread["eff_rank"] > 15
    assert collapsed["out_std"] < 0.01 and collapsed["eff_rank"] < spread["eff_rank"]


def test_collapse_detector_marks_and_stops(tmp_path):
    """A real run on a folder of one constant image: every output of a batch is the same vector (out_std 0),
    so the health hook marks the run collapsed after `patience` checks and the train loop stops there."""
    for c in ("a", "b"):
        (tmp_path / "data" / "train" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((28, 28, 3), 90, np.uint8)).save(tmp_path / "data" / "train" / c / f"{i}.png")
    wd = tmp_path / "run"
    rc = run_cli(["pretrain", "--config", TINY_CFG, "--work-dir", str(wd), "--cfg-options", *TINY_OPTS,
                  "train_cfg.max_iters=10", "train_dataloader.batch_size=4", "default_hooks.knn.enabled=False",
                  "default_hooks.logger.interval=1", "default_hooks.health.interval=1", "default_hooks.health.patience=3",
                  "train_dataloader.dataset.source=folder", f"train_dataloader.dataset.root={tmp_path / 'data'}"])
    assert rc == 0
    final = json.loads((wd / "final_metrics.json").read_text())
    assert final["status"] == "collapsed" and "collapse at step 3" in final["reason"] and final["collapse_step"] == 3
    assert final["steps"] == 3  # stopped at the third low check, not at max_iters
    rows = [json.loads(x) for x in (wd / "scalars.jsonl").read_text().splitlines()]
    train = [r for r in rows if "out_std" in r]
    assert [r["step"] for r in train] == [1, 2, 3] and all(r["out_std"] < 1e-3 for r in train)


def run_cli(argv: list[str]) -> int:
    from nepa_eval.cli import main

    return main(argv)


TINY_OPTS = ["model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2",
             "model.backbone.mlp_hidden=64", "train_dataloader.batch_size=16", "train_dataloader.num_workers=0",
             "train_dataloader.persistent_workers=False", "knn_train.limit=200", "knn_test.limit=100",
             "default_hooks.logger.interval=2", "default_hooks.health.interval=2"]


@needs_fashion
def test_tiny_run_is_self_describing_and_loads_through_the_door(tmp_path):
    from backbones.nepa import from_pretrained
    from safetensors.torch import load_file

    wd = tmp_path / "run"
    rc = run_cli(["pretrain", "--config", TINY_CFG, "--work-dir", str(wd), "--cfg-options", *TINY_OPTS,
                  "train_cfg.max_iters=8", "default_hooks.checkpoint.interval=4", "default_hooks.ema.momentum=0.2"])
    assert rc == 0
    final = json.loads((wd / "final_metrics.json").read_text())
    assert final["task"] == "pretrain" and final["status"] == "ok" and final["steps"] == 8
    rows = [json.loads(x) for x in (wd / "scalars.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert all(r["loss"] == pytest.approx(-r["cos"]) for r in train)  # the loss is the negative cosine
    assert final["final_loss"] == train[-1]["loss"] and "knn_top1_ema" in final
    assert all({"cos", "out_std", "eff_rank", "lr", "grad_norm"} <= set(r) for r in train)
    assert any("knn_top1" in r for r in rows)
    cfg = Config.fromfile(str(wd / "config.py"))
    assert cfg.model.type == "NepaPretrainModel" and cfg.model.stop_grad is True
    assert (wd / "last_checkpoint").read_text().strip().endswith("iter_8.pth")
    assert not list(wd.glob("*.tmp"))

    raw = from_pretrained(wd / "iter_8.pth", verbose=False)
    ema = from_pretrained(wd / "iter_8.pth", ema=True, verbose=False)
    assert "inferred" not in str(raw.load_report) and raw.cfg.embed_dim == 32 and raw.causal
    sd_raw, sd_ema = load_file(str(wd / "backbone.safetensors")), load_file(str(wd / "backbone_ema.safetensors"))
    for k, v in raw.state_dict().items():
        assert torch.equal(v, sd_raw[k]), k
    for k, v in ema.state_dict().items():
        assert torch.equal(v, sd_ema[k]), k
    assert not torch.equal(sd_raw["patch_embed.proj.weight"], sd_ema["patch_embed.proj.weight"])
    plain = from_pretrained(wd / "backbone.safetensors", verbose=False)
    assert torch.equal(plain.patch_embed.proj.weight, raw.patch_embed.proj.weight)

    # the monitor's k-NN is DINO's k-NN of these weights on knn_train / knn_test, recomputed here by hand
    from nepa_eval.data.sources import ImageDataset

    sets = [ImageDataset(source="fashion_mnist", split=split, limit=n, transform=dict(kind="resize", img_size=28))
            for split, n in (("train", 200), ("test", 100))]
    (ftr, ytr), (fte, yte) = (mean_patch_features(plain, d) for d in sets)
    assert len(set(ytr)) == 10  # labelled data, not the pretraining's unlabelled view
    assert final["knn_top1"] == pytest.approx(numpy_knn_top1(ftr, ytr, fte, yte), abs=1.0)  # one image of 100

    # the k-NN command on the same weights and data agrees with the run's own monitor
    out = tmp_path / "knn.json"
    assert run_cli(["knn", "--ckpt", str(wd / "backbone.safetensors"), "--train-limit", "200",
                    "--test-limit", "100", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["knn_top1"] == pytest.approx(final["knn_top1"])


def test_bench_pretrain_prints_a_table(capsys):
    from nepa_eval.bench import BENCHES

    args = argparse.Namespace(device="cpu", batch_size=2, img_size=28, depth=1, warmup=0, iters=1,
                              fp32_only=True, sizes=["tiny"])
    BENCHES["pretrain"](args)
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| tiny (")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")][1:-1]
    assert cells[:4] == ["tiny (D 192, depth 1)", "28px / p14", "2", "float32"]
    # the row is the model it names: its parameter count, counted here
    from backbones.nepa.model import SIZES

    n = sum(p.numel() for p in NepaPretrainModel(backbone={**SIZES["tiny"], "depth": 1, "img_size": 28,
                                                           "patch_size": 14}).parameters())
    assert float(cells[4]) == pytest.approx(n / 1e6, abs=0.005)
    # img/s and ms/step are one measurement: batch / (ms / 1000), within the printed rounding (ms to 1, img/s to 0.1)
    ips, ms, mem = float(cells[5]), float(cells[6]), float(cells[7])
    assert math.isfinite(ips) and abs(2 * 1000 / ips - ms) <= 0.5 + 2 * 1000 * 0.05 / ips ** 2 + 1e-9
    assert mem >= 0


@needs_fashion
def test_release_recipe_builds_and_steps_on_cpu(tmp_path):
    """nepa_b_release.py (bf16, EMA 0.9999, accumulation 4) shrunk to two steps on the CPU: the recipe's
    hooks, constructor and schedule are real; bf16 falls back to float32 without a GPU."""
    wd = tmp_path / "b"
    rc = run_cli(["pretrain", "--config", "cls_configs/pretrain/nepa_b_release.py", "--work-dir", str(wd),
                  "--cfg-options", "model.backbone.embed_dim=32", "model.backbone.depth=1",
                  "model.backbone.num_heads=2", "model.backbone.img_size=28", "model.backbone.patch_size=7",
                  "train_dataloader.dataset.source=fashion_mnist", "train_dataloader.dataset.root=None",
                  "train_dataloader.dataset.transform.img_size=28", "train_dataloader.batch_size=4",
                  "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
                  "train_dataloader.pin_memory=False", "train_cfg.max_iters=8", "default_hooks.knn.enabled=False",
                  "default_hooks.logger.interval=4", "default_hooks.health.interval=4"])
    assert rc == 0
    final = json.loads((wd / "final_metrics.json").read_text())
    assert final["status"] == "ok" and final["effective_batch"] == 16  # 4 x 1 process x 4 accumulation steps
    assert final["lr"] == pytest.approx(3e-4 * 16 / 256)
    cfg = Config.fromfile(str(wd / "config.py"))
    assert cfg.optim_wrapper.accumulative_counts == 4 and cfg.optim_wrapper.type == "OptimWrapper"
    assert cfg.default_hooks.ema.type == "EMAHook" and cfg.default_hooks.ema.momentum == 1e-4
