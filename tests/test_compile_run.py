"""`--compile` (mmengine's `compile` key) on real runs: the engine keeps the optimizer update out of dynamo
(`keep_optimizer_eager`), so a compiled run trains like the uncompiled one, and its checkpoints are those of an
uncompiled model (no `_orig_mod.` keys; the weight door and --resume read them)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import needs_fashion, require

require("mmengine", "mmengine")

from nepa_eval.cli import main as cli  # noqa: E402

PRETRAIN = "cls_configs/pretrain/nepa_tiny_fmnist.py"
PRETRAIN_OPTS = ["model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2",
                 "model.backbone.mlp_hidden=64", "train_dataloader.batch_size=16", "train_dataloader.num_workers=0",
                 "train_dataloader.persistent_workers=False", "default_hooks.knn.enabled=False",
                 "default_hooks.logger.interval=1", "default_hooks.health.interval=1", "train_dataloader.sampler.seed=0"]
LOSS_TOL = dict(rel=1e-4, abs=1e-5)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def scalars(wd: Path) -> list[dict]:
    return [json.loads(x) for x in (wd / "scalars.jsonl").read_text().splitlines()]


def losses(wd: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in scalars(wd) if "loss" in r}


def assert_same_losses(off: Path, on: Path, steps: int) -> tuple[dict[int, float], dict[int, float]]:
    """Both runs logged a loss at steps 1..steps, equal within LOSS_TOL; returns (off's, on's)."""
    lo, lc = losses(off), losses(on)
    assert sorted(lc) == sorted(lo) == list(range(1, steps + 1))
    for s in lo:
        assert lc[s] == pytest.approx(lo[s], **LOSS_TOL), s
    return lo, lc


def state_dicts(a: Path, b: Path) -> tuple[dict, dict]:
    """Two checkpoints' state dicts, with the same keys and none of torch.compile's `_orig_mod.` in b's."""
    sa = torch.load(a, map_location="cpu", weights_only=False)["state_dict"]
    sb = torch.load(b, map_location="cpu", weights_only=False)["state_dict"]
    assert sorted(sb) == sorted(sa) and not [k for k in sb if "_orig_mod" in k]
    return sa, sb


def graphs_compiled() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def pretrain(wd: Path, *extra: str, iters: int = 3, compile_args: tuple = ()) -> None:
    rc = cli(["pretrain", "--config", PRETRAIN, "--work-dir", str(wd), *compile_args, "--cfg-options",
              *PRETRAIN_OPTS, f"train_cfg.max_iters={iters}", f"default_hooks.checkpoint.interval={iters}", *extra])
    assert rc == 0
    assert json.loads((wd / "final_metrics.json").read_text())["status"] == "ok"


def assert_same_checkpoint(a: Path, b: Path, atol: float = 1e-5) -> None:
    """The same keys (no `_orig_mod.`), close weights and EMA weights; b loads through the weight door."""
    from backbones.nepa import from_pretrained

    sa = torch.load(a, map_location="cpu", weights_only=False)
    sb = torch.load(b, map_location="cpu", weights_only=False)
    for part in ("state_dict", "ema_state_dict"):
        assert sorted(sb[part]) == sorted(sa[part]), part
        assert not [k for k in sb[part] if "_orig_mod" in k]
        for k, v in sa[part].items():
            if v.is_floating_point():
                torch.testing.assert_close(sb[part][k], v, atol=atol, rtol=1e-4, msg=f"{part} {k}")
    for ema in (False, True):  # strict loads into a plain, uncompiled NepaViT
        ref, got = from_pretrained(a, ema=ema, verbose=False), from_pretrained(b, ema=ema, verbose=False)
        assert "inferred" not in str(got.load_report) and got.cfg.embed_dim == 32
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(got.state_dict()[k], v, atol=atol, rtol=1e-4, msg=f"ema={ema} {k}")


def test_cli_compile_flag_sets_mmengine_compile_key(tmp_path):
    import argparse

    from nepa_eval.commands import pretrain as cmd
    from nepa_eval.engine import add_compile_hook
    from nepa_eval.tasks.pretrain import build_cfg

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    cfg = build_cfg(p.parse_args(["--work-dir", str(tmp_path), "--compile"]))
    assert cfg.compile is True
    cfg = build_cfg(p.parse_args(["--work-dir", str(tmp_path), "--compile", "--cfg-options", "compile.backend=eager"]))
    assert cfg.compile == dict(backend="eager")  # the config's options are kept
    assert not build_cfg(p.parse_args(["--work-dir", str(tmp_path)])).get("compile")
    add_compile_hook(cfg)
    add_compile_hook(cfg)
    assert [h["type"] for h in cfg.custom_hooks].count("CompileHook") == 1


def test_keep_optimizer_eager_leaves_the_update_out_of_the_graphs():
    """A train_step as mmengine's BaseModel has it, compiled whole: the loss is traced, the AdamW update is not
    (no graph holds an optimizer op), and the update still happens, once per step."""
    from mmengine.optim import OptimWrapper, OptimWrapperDict

    from nepa_eval.engine import keep_optimizer_eager

    def run(eager_update: bool) -> list[str]:
        torch._dynamo.reset()
        lin = torch.nn.Linear(3, 1)
        ow = OptimWrapper(torch.optim.AdamW(lin.parameters(), lr=0.1), clip_grad=dict(max_norm=1.0))
        if eager_update:
            assert keep_optimizer_eager(OptimWrapperDict(a=ow)) == 1
            assert keep_optimizer_eager(ow) == 0  # idempotent
        graphs: list[str] = []

        def backend(gm, example_inputs):
            graphs.append(str(gm.graph))
            return gm.forward

        def loss_fn(x):
            return lin(x).pow(2).mean()

        @torch.compile(backend=backend)
        def train_step(x):
            with ow.optim_context(lin):
                loss = loss_fn(x)
            ow.update_params(loss)
            return loss.detach()

        before = lin.weight.detach().clone()
        for _ in range(2):
            train_step(torch.randn(4, 3))
        assert not torch.equal(lin.weight, before) and ow._inner_count == 2
        return graphs

    traced = run(eager_update=False)  # plain dynamo traces into the update (here it can; on the runs' AdamW it fails)
    assert any("lerp" in g or "addcdiv" in g or "_foreach" in g for g in traced)
    graphs = run(eager_update=True)
    assert graphs and any("pow" in g for g in graphs)
    assert not any("lerp" in g or "addcdiv" in g or "_foreach" in g or "sqrt" in g for g in graphs)


@needs_fashion
def test_compiled_pretraining_matches_eager(tmp_path):
    """3 steps with and without `--compile` (dynamo with its eager backend: the tracing that used to fail inside
    AdamW.step, no inductor build time): the same losses and checkpoint, and dynamo did compile graphs."""
    off, on = tmp_path / "off", tmp_path / "on"
    pretrain(off)
    assert graphs_compiled() == 0
    pretrain(on, "compile.backend=eager", compile_args=("--compile",))
    assert graphs_compiled() >= 1
    lo, _ = assert_same_losses(off, on, 3)
    assert lo[3] != pytest.approx(lo[1], abs=1e-3)  # it trained
    assert_same_checkpoint(off / "iter_3.pth", on / "iter_3.pth")


@pytest.mark.slow
@needs_fashion
def test_compiled_pretraining_with_inductor_and_resume(tmp_path):
    """The default backend (inductor): 4 compiled steps against 4 eager ones, then a compiled --resume from the
    compiled run's step-2 checkpoint (in a new directory), which continues as the uninterrupted run did."""
    import shutil

    off, on, res = tmp_path / "off", tmp_path / "on", tmp_path / "resumed"
    # deterministic inputs: with num_workers=0 the resumed run's first batch is drawn before the RNG is restored
    opts = ["default_hooks.checkpoint.interval=2", "train_dataloader.dataset.transform.kind=resize"]
    pretrain(off, *opts, iters=4)
    pretrain(on, *opts, iters=4, compile_args=("--compile",))
    assert graphs_compiled() >= 1
    _, lc = assert_same_losses(off, on, 4)
    assert_same_checkpoint(off / "iter_4.pth", on / "iter_4.pth", atol=1e-4)
    # the state a run stopped after step 2 leaves behind
    res.mkdir()
    shutil.copy(on / "iter_2.pth", res / "iter_2.pth")
    (res / "last_checkpoint").write_text(str(res / "iter_2.pth"))
    (res / "scalars.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scalars(on) if r["step"] <= 2))
    rc = cli(["pretrain", "--config", PRETRAIN, "--work-dir", str(res), "--resume", "--compile", "--cfg-options",
              *PRETRAIN_OPTS, "train_cfg.max_iters=4", *opts])
    assert rc == 0
    lr = losses(res)
    assert sorted(lr) == [1, 2, 3, 4]
    for s in (3, 4):
        assert lr[s] == pytest.approx(lc[s], **LOSS_TOL), s
    assert_same_checkpoint(on / "iter_4.pth", res / "iter_4.pth", atol=1e-5)


@pytest.mark.slow
@needs_fashion
def test_compiled_finetune_matches_eager(tmp_path):
    """A tiny cls fine-tune (deterministic: no augmentation, drop path or RoPE jitter), inductor: the same losses,
    and the saved classifier checkpoint evaluates with --eval-only (an uncompiled model)."""
    from test_cls import final, tiny_config

    off, on = tmp_path / "off", tmp_path / "on"
    cfg = tiny_config(tmp_path, train=24, val=20, bs=8, epochs=1, deterministic=True)
    assert cli(["cls", "--ckpt", "none", "--config", cfg, "--work-dir", str(off)]) == 0
    assert graphs_compiled() == 0
    cfg = tiny_config(tmp_path, train=24, val=20, bs=8, epochs=1, deterministic=True)
    assert cli(["cls", "--ckpt", "none", "--config", cfg, "--work-dir", str(on), "--compile"]) == 0
    assert graphs_compiled() >= 1
    assert_same_losses(off, on, 3)
    state_dicts(off / "epoch_1.pth", on / "epoch_1.pth")
    assert final(on)["top1"] == pytest.approx(final(off)["top1"])
    ev = tmp_path / "ev"
    assert cli(["cls", "--eval-only", "--ckpt", str(on / "epoch_1.pth"), "--config", cfg, "--work-dir", str(ev)]) == 0
    assert final(ev)["top1"] == pytest.approx(final(on)["top1"])


@pytest.mark.slow
def test_compiled_seg_run_matches_eager(tiny_mosaic, tiny_seg_backbone, tmp_path):
    """An mmseg segmentor (we do not own its train_step) under `--compile`, with dynamo's eager backend (inductor
    takes minutes to build UPerNet on 2 cores): the same losses and checkpoint keys as the uncompiled run."""
    require("mmseg.models", "mmsegmentation with compiled mmcv ops")
    cfg = "seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py"
    opts = ["train_cfg.max_iters=3", "train_cfg.val_interval=3", "default_hooks.logger.interval=1",
            "train_dataloader.batch_size=4", "val_dataloader.batch_size=8", "test_dataloader.batch_size=8",
            "model.decode_head.channels=16", "model.auxiliary_head.channels=8"]
    off, on = tmp_path / "off", tmp_path / "on"
    base = ["seg", "--config", cfg, "--ckpt", tiny_seg_backbone, "--data-root", str(tiny_mosaic)]
    assert cli([*base, "--work-dir", str(off), "--cfg-options", *opts]) == 0
    assert graphs_compiled() == 0
    assert cli([*base, "--work-dir", str(on), "--compile", "--cfg-options", *opts, "compile.backend=eager"]) == 0
    assert graphs_compiled() >= 1
    assert_same_losses(off, on, 3)
    so, sc = state_dicts(off / "iter_3.pth", on / "iter_3.pth")
    for k, v in so.items():
        if v.is_floating_point():
            torch.testing.assert_close(sc[k], v, atol=1e-5, rtol=1e-4, msg=k)
