"""A config is the whole run: mmseg's own tools/train.py (what its dist_train.sh / slurm_train.sh launch; the mmseg
wheel ships it as mmseg/.mim/tools/train.py) trains the tiny pretraining and fine-tune configs step for step as
`nepa-eval pretrain` / `nepa-eval cls` do: the same lr and loss at every logged step and the same final metrics. And
a switch reaches its hook by name, however the config orders its hooks."""
import runpy
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, needs_fashion, require

mmseg = require("mmseg", "mmsegmentation")

from mmengine.config import Config  # noqa: E402
from mmengine.optim import CosineAnnealingLR, LinearLR  # noqa: E402

from nepa_eval.cli import main as cli  # noqa: E402
from nepa_eval.engine import read_final, read_scalars  # noqa: E402

TOOLS_TRAIN = Path(mmseg.__file__).parent / ".mim" / "tools" / "train.py"
PRETRAIN = "cls_configs/pretrain/nepa_tiny_fmnist.py"
FINETUNE = "cls_configs/finetune/nepa-t_fmnist.py"
SMALL = ["model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2",
         "model.backbone.mlp_hidden=64", "train_dataloader.batch_size=16", "train_dataloader.num_workers=0",
         "train_dataloader.persistent_workers=False", "default_hooks.logger.interval=1"]
# 6 steps: half of them warm-up (the recipe's 2.5 % of 6 rounds to none), the rest cosine; k-NN at the end
PRETRAIN_OPTS = SMALL + ["train_cfg.max_iters=6", "default_hooks.lr_recipe.warmup_ratio=0.5",
                         "default_hooks.health.interval=2", "knn_train.limit=100", "knn_test.limit=50",
                         "default_hooks.checkpoint.interval=6"]
# 2 epochs of 4 steps (the config's 1-epoch warm-up, then cosine), validated (raw and EMA) after each
FINETUNE_OPTS = SMALL + ["train_dataloader.dataset.limit=64", "val_dataloader.dataset.limit=40",
                         "val_dataloader.batch_size=20", "train_cfg.max_epochs=2", "train_cfg.val_interval=1"]


def tools_train(config: str, work_dir: Path, opts: list[str]) -> None:
    """mmseg's tools/train.py, as `python tools/train.py CONFIG --work-dir DIR --cfg-options ...` runs it."""
    if not TOOLS_TRAIN.is_file():
        pytest.fail(f"mmseg's tools/train.py is missing: no {TOOLS_TRAIN} (the mmsegmentation wheel ships it)")
    argv = sys.argv
    sys.argv = [str(TOOLS_TRAIN), str(ROOT / config), "--work-dir", str(work_dir), "--cfg-options", *opts,
                f"experiment_name=tools_{work_dir.name}"]
    try:
        runpy.run_path(str(TOOLS_TRAIN), run_name="__main__")
    finally:
        sys.argv = argv


def train_rows(work_dir: Path) -> list[tuple[int, float, float]]:
    """(step, lr, loss) of every logged training step."""
    return [(r["step"], r["lr"], r["loss"]) for r in read_scalars(work_dir) if "loss" in r]


def val_rows(work_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k.startswith("val/")} for r in read_scalars(work_dir) if "val/top1" in r]


def recipe_lrs(lr: float, warmup: int, total: int) -> list[float]:
    """The lr before each step as the recipe has always built it (before it became LrRecipeHook: lr resolved in front
    of the Runner, then mmengine's LinearLR over `warmup` steps and CosineAnnealingLR to 0), stepped as mmengine's
    ParamSchedulerHook steps it."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheds = [LinearLR(opt, start_factor=1e-3, by_epoch=False, begin=0, end=warmup),
              CosineAnnealingLR(opt, T_max=total - warmup, eta_min=0.0, by_epoch=False, begin=warmup, end=total)]
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        for s in scheds:
            s.step()
    return out


@needs_fashion
def test_mmseg_tools_train_pretrains_step_for_step_as_nepa_eval(tmp_path):
    ours, tools = tmp_path / "nepa_eval", tmp_path / "tools"
    assert cli(["pretrain", "--config", PRETRAIN, "--work-dir", str(ours), "--cfg-options", *PRETRAIN_OPTS]) == 0
    tools_train(PRETRAIN, tools, PRETRAIN_OPTS)
    rows = train_rows(ours)
    assert [r[0] for r in rows] == list(range(1, 7))
    assert train_rows(tools) == rows  # lr and loss, exactly, at every step
    # the lr the recipe gives: 1.5e-3 per 256 images x the batch of 16, warm-up over 3 of the 6 steps, then cosine
    assert [r[1] for r in rows] == recipe_lrs(1.5e-3 * 16 / 256, 3, 6)
    f_ours, f_tools = read_final(ours), read_final(tools)
    assert f_ours["status"] == f_tools["status"] == "ok"
    assert f_ours["effective_batch"] == 16 and f_ours["warmup_iters"] == 3 and f_ours["lr"] == 1.5e-3 * 16 / 256
    for key in ("effective_batch", "lr", "warmup_iters", "updates", "final_loss", "knn_top1", "knn_top1_ema",
                "knn_top1_block1", "steps"):
        assert f_tools[key] == f_ours[key], key


@needs_fashion
def test_mmseg_tools_train_fine_tunes_step_for_step_as_nepa_eval(tmp_path):
    ours, tools = tmp_path / "nepa_eval", tmp_path / "tools"
    assert Config.fromfile(str(ROOT / FINETUNE)).model.num_classes == 10  # the config carries it
    assert cli(["cls", "--config", FINETUNE, "--ckpt", "none", "--work-dir", str(ours),
                "--cfg-options", *FINETUNE_OPTS]) == 0
    tools_train(FINETUNE, tools, FINETUNE_OPTS)
    rows = train_rows(ours)
    assert [r[0] for r in rows] == list(range(1, 9)) and len({r[1] for r in rows}) == 8  # the lr moves every step
    assert train_rows(tools) == rows
    assert len(val_rows(ours)) == 2 and val_rows(tools) == val_rows(ours)
    f_ours, f_tools = read_final(ours), read_final(tools)
    assert f_ours["status"] == f_tools["status"] == "ok"
    for key in ("top1", "top5", "ema_top1", "ema_top5", "best_ema_top1", "init_knn_top1", "final_loss", "steps"):
        assert f_tools[key] == f_ours[key], key


# ----------------------------------------------------------------------------------------------
# switches reach their hooks by name
# ----------------------------------------------------------------------------------------------
# every switch the project's commands, tables and tests give the pretraining hooks, and where it must land
SWITCHES = {"default_hooks.knn.enabled": (False, "KnnMonitorHook", lambda h: h.enabled),
            "default_hooks.knn.batch_size": (8, "KnnMonitorHook", lambda h: h.batch_size),
            "default_hooks.health.interval": (2, "NepaHealthHook", lambda h: h.interval),
            "default_hooks.health.patience": (5, "NepaHealthHook", lambda h: h.patience),
            "default_hooks.ema.momentum": (0.2, "EMAHook", lambda h: h.ema_cfg["momentum"]),
            "default_hooks.lr_recipe.warmup_ratio": (0.5, "LrRecipeHook", lambda h: h.warmup_ratio),
            "default_hooks.checkpoint.interval": (3, "NepaCheckpointHook", lambda h: h.interval)}


def hooks_of(config: str, tmp_path: Path) -> dict[str, object]:
    """mmengine's own Runner.from_cfg (as tools/train.py builds it) on `config` with every switch: its hooks by type."""
    from mmengine.runner import Runner

    cfg = Config.fromfile(config)
    cfg.merge_from_dict({k: v for k, (v, _, _) in SWITCHES.items()})
    cfg.work_dir = str(tmp_path / Path(config).stem)
    cfg.experiment_name = f"hooks_{Path(config).stem}"
    cfg.visualizer.vis_backends = [dict(type="LocalVisBackend")]
    runner = Runner.from_cfg(cfg)
    types = [type(h).__name__ for h in runner.hooks]
    assert len(types) == len(set(types)), types  # one hook of each type: a switch cannot land on a twin
    return {type(h).__name__: h for h in runner.hooks}


def test_a_reordered_config_switches_every_hook_by_name(tmp_path):
    hooks = hooks_of(str(ROOT / PRETRAIN), tmp_path)
    cfg = Config.fromfile(str(ROOT / PRETRAIN))
    # the same hooks declared the other way round, with another hook in custom_hooks in front of them
    names = list(cfg.default_hooks)[::-1]
    reordered = tmp_path / "reordered.py"
    reordered.write_text(
        f"_base_ = [{str(ROOT / PRETRAIN)!r}]\n"
        f"default_hooks = dict(_delete_=True, **{ {n: cfg.default_hooks[n].to_dict() for n in names}!r})\n"
        "custom_hooks = [dict(type='EmptyCacheHook', after_iter=True)]\n")
    moved = hooks_of(str(reordered), tmp_path)
    assert list(Config.fromfile(str(reordered)).default_hooks) == names
    assert set(moved) == set(hooks) | {"EmptyCacheHook"}
    for key, (value, kind, read) in SWITCHES.items():
        for found in (hooks, moved):
            assert read(found[kind]) == value, (key, kind)
    # and nothing else was switched: the other hooks keep the config's values
    assert moved["LoggerHook"].interval == hooks["LoggerHook"].interval == 20
    assert moved["KnnMonitorHook"].layers == [None, 1] and moved["NepaHealthHook"].collapse_ratio == 0.6


def test_position_switches_are_gone_from_commands_and_tables():
    """No --cfg-options of the project (tables, benchmarks, tests) addresses a hook by its place in a list."""
    import re

    offenders = []
    for path in [*(ROOT / "nepa_eval").rglob("*.py"), *(ROOT / "reports").glob("*.yaml"),
                 *(ROOT / "tests").glob("*.py"),
                 *(ROOT / "cls_configs").rglob("*.py"), ROOT / "README.md"]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"custom_hooks\.\d", line) and path.name != Path(__file__).name:
                offenders.append(f"{path.relative_to(ROOT)}:{i}")
    assert not offenders, offenders


def test_release_recipe_hook_resolves_its_lr_at_its_batch(tmp_path):
    """nepa_b_release.py's LrRecipeHook on 8 processes of 128 images x 4 accumulation steps (the release's 4096):
    lr 3e-4 x 4096 / 256 = 4.8e-3, reached after the warm-up (2.5 % of the budget) and annealed to 0 at its end."""
    from types import SimpleNamespace

    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import HOOKS, PARAM_SCHEDULERS

    cfg = Config.fromfile(str(ROOT / "cls_configs/pretrain/nepa_b_release.py"))
    cfg.optim_wrapper.type = "OptimWrapper"  # bf16 AMP needs a GPU; the lr does not
    cfg.optim_wrapper.pop("dtype")
    wrapper = build_optim_wrapper(torch.nn.Linear(4, 4), cfg.optim_wrapper)
    total = 400
    def build(scheds):  # what Runner.build_param_scheduler does with one optimizer
        return [PARAM_SCHEDULERS.build(s, default_args=dict(optimizer=wrapper)) for s in scheds]

    runner = SimpleNamespace(optim_wrapper=wrapper, param_schedulers=[], cfg=cfg, world_size=8, max_iters=total,
                             train_dataloader=SimpleNamespace(batch_size=128), work_dir=str(tmp_path),
                             build_param_scheduler=build)
    hook = HOOKS.build(cfg.default_hooks.lr_recipe)
    hook.before_run(runner)
    assert hook.resolved["effective_batch"] == 4096 and hook.resolved["lr"] == pytest.approx(4.8e-3)
    assert hook.resolved["warmup_iters"] == 10 and hook.resolved["updates"] == 100
    lrs = []
    for _ in range(total):
        lrs.append(wrapper.get_lr()["lr"][0])
        for s in runner.param_schedulers:
            s.step()
    assert lrs[0] == pytest.approx(4.8e-6) and lrs[10] == pytest.approx(4.8e-3)  # warm-up from 1e-3 x lr
    assert max(lrs) == pytest.approx(4.8e-3) and lrs[-1] < 1e-6
    assert read_final(tmp_path)["lr"] == pytest.approx(4.8e-3)
