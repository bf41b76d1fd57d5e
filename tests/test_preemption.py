"""Preemption: SIGTERM / SIGUSR1 mid-run stop pretrain and cls after the current step with a complete checkpoint,
status `preempted` and exit code 75; `--resume` then gives the loss curve of an uninterrupted run, also when the
last checkpoint is damaged (the one before it is taken). The signal is real (os.kill of this process, raised by the
dataset at a chosen read, so the step is known); the Runner, checkpoints, hooks and image folders are real."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, needs_fashion

pytest.importorskip("mmengine")

from mmengine.hooks import Hook  # noqa: E402
from mmengine.registry import DATASETS, HOOKS  # noqa: E402

from nepa_eval.data.sources import ImageDataset  # noqa: E402
from nepa_eval.preemption import EXIT_PREEMPTED, checkpoint_problem, resume_target  # noqa: E402

PRETRAIN = "cls_configs/pretrain/nepa_tiny_fmnist.py"
CLS = "cls_configs/finetune/nepa-t_fmnist.py"
TINY = ["model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2",
        "model.backbone.mlp_hidden=64"]


class SignalAtRead(ImageDataset):
    """A dataset that sends `signum` to its own process at read number `at` (1-based): the signal arrives
    while a batch is being loaded, in the main process (num_workers=0), so the run stops after that batch's step."""

    def __init__(self, at: int = 0, signum: str = "SIGTERM", **kw) -> None:
        super().__init__(**kw)
        self.at, self.signum, self.reads = at, signum, 0

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.at:
            os.kill(os.getpid(), getattr(signal, self.signum))
        return super().__getitem__(i)


DATASETS.register_module(name="SignalAtRead", module=SignalAtRead, force=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """An ImageFolder: train/{a,b}/ 24 images each, val/{a,b}/ 6 each, 28 px noise whose mean differs by class."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 6)):
        for c, base in (("a", 60), ("b", 160)):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(base - 60, base + 60, (28, 28, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def run_cli(argv: list[str]) -> int:
    from nepa_eval.cli import main

    return main(argv)


def losses(wd: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (wd / "scalars.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), "a step was recorded twice"
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def final(wd: Path) -> dict:
    return json.loads((wd / "final_metrics.json").read_text())


def assert_same_curve(ref: Path, cut: Path, steps: list[int]) -> None:
    a, b = losses(ref), losses(cut)
    assert sorted(a) == sorted(b) == steps
    for s in a:
        assert b[s] == pytest.approx(a[s], abs=1e-5), (s, a[s], b[s])


# pretraining: random crops and flips (decoded in this process: num_workers=0), random masking, RoPE rescaling and
# EMA all draw random numbers, so the resumed run must continue the saved RNG streams from the first batch it draws
PRE_OPTS = [*TINY, "default_hooks.knn.enabled=False", "default_hooks.logger.interval=1", "default_hooks.health.interval=1",
            "train_cfg.max_iters=8", "default_hooks.checkpoint.interval=3", "default_hooks.checkpoint.max_keep_ckpts=3",
            "train_dataloader.batch_size=4", "train_dataloader.num_workers=0",
            "train_dataloader.persistent_workers=False", "train_dataloader.dataset.transform.kind=pretrain",
            "model.backbone.rope_rescale=2.0", "model.mask_ratio=0.25", "default_hooks.ema.momentum=0.1",
            "train_dataloader.dataset.type=SignalAtRead", "train_dataloader.dataset.source=folder"]


def pretrain(wd: Path, root: Path, signal_at: int = 0, signum: str = "SIGTERM", resume: bool = False) -> int:
    return run_cli(["pretrain", "--config", PRETRAIN, "--work-dir", str(wd), "--cfg-options", *PRE_OPTS,
                    f"train_dataloader.dataset.root={root}",
                    f"train_dataloader.dataset.at={signal_at}", f"train_dataloader.dataset.signum={signum}",
                    *(["--resume"] if resume else [])])


# read 18 is in the 5th batch of 4: step 5 finishes, is checkpointed (iter_5.pth, between the scheduled iter_3 and
# iter_6) and the run stops; read 10 is in the 3rd batch: step 3 has its scheduled checkpoint, which is not rewritten
@pytest.mark.parametrize("signum,signal_at,step", [("SIGTERM", 18, 5), ("SIGUSR1", 10, 3)])
def test_pretrain_signal_then_resume_matches_uninterrupted(tmp_path, images, signum, signal_at, step, capsys):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert pretrain(ref, images) == 0
    assert pretrain(cut, images, signal_at=signal_at, signum=signum) == EXIT_PREEMPTED
    f = final(cut)
    ckpt = cut / f"iter_{step}.pth"
    assert f["status"] == "preempted" and f["steps"] == step and f["signal"] == signum
    assert "--resume" in f["reason"] and f["checkpoint"] == str(ckpt)
    assert (cut / "last_checkpoint").read_text() == str(ckpt)
    assert checkpoint_problem(ckpt) is None and not list(cut.glob("*.tmp"))
    meta = torch.load(ckpt, map_location="cpu", weights_only=False)["meta"]
    assert meta["iter"] == step and meta.get("preempted", False) == (step == 5) and "rng" in meta
    assert not (cut / "backbone.safetensors").exists()  # no end-of-training work on a preempted run
    assert sorted(losses(cut)) == list(range(1, step + 1))
    assert "preempted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers were given back

    assert pretrain(cut, images, resume=True) == 0
    assert final(cut)["status"] == "ok" and final(cut)["steps"] == 8
    assert_same_curve(ref, cut, list(range(1, 9)))
    from safetensors.torch import load_file

    wa, wb = load_file(str(ref / "backbone.safetensors")), load_file(str(cut / "backbone.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_resume_skips_a_damaged_last_checkpoint_for_the_one_before(tmp_path, images, capsys):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert pretrain(ref, images) == 0
    assert pretrain(cut, images, signal_at=18) == EXIT_PREEMPTED  # iter_3 (scheduled) and iter_5 (preemption)
    last = cut / "iter_5.pth"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # cut short, as by a kill during the write of a non-atomic writer
    assert "incomplete" in checkpoint_problem(last)
    assert resume_target(cut) == (cut / "iter_3.pth", [f"{last}: {checkpoint_problem(last)}"])

    assert pretrain(cut, images, resume=True) == 0
    out = capsys.readouterr()
    assert "skipping damaged checkpoint" in out.out + out.err and str(last) in out.out + out.err
    f = final(cut)
    assert f["status"] == "ok" and f["steps"] == 8
    assert f["resumed_from"] == str(cut / "iter_3.pth") and f["skipped_checkpoints"][0].startswith(str(last))
    assert_same_curve(ref, cut, list(range(1, 9)))  # steps 4 and 5 trained again from iter_3, to the same values


def test_a_flipped_byte_is_found_and_nothing_complete_is_an_error(tmp_path):
    wd = tmp_path / "run"
    wd.mkdir()
    good = wd / "iter_2.pth"
    torch.save({"meta": {"iter": 2}, "state_dict": {"w": torch.arange(1000.0)}}, good)
    assert checkpoint_problem(good) is None
    bad = wd / "iter_4.pth"
    data = bytearray(good.read_bytes())
    at = data.find(torch.arange(1000.0).numpy().tobytes()[:64])  # inside the tensor's bytes
    data[at + 10] ^= 0xFF
    bad.write_bytes(bytes(data))
    os.utime(bad, (time.time() + 5, time.time() + 5))
    (wd / "last_checkpoint").write_text(str(bad))
    assert "CRC" in checkpoint_problem(bad)
    assert resume_target(wd)[0] == good
    good.write_bytes(b"")
    target, notes = resume_target(wd)
    assert target is None and len(notes) == 2


# classification (epoch-based): stopped inside an epoch, resumed inside it; random flips (in this process) and drop
# path draw random numbers
CLS_OPTS = ["--ckpt", "none", "--cfg-options", *TINY, "model.backbone.drop_path_rate=0.1",
            "train_dataloader.batch_size=8", "train_dataloader.num_workers=0",
            "train_dataloader.persistent_workers=False", "train_dataloader.dataset.limit=None",
            "train_dataloader.dataset.type=SignalAtRead",
            "val_dataloader.dataset.limit=None", "train_cfg.max_epochs=2", "train_cfg.val_interval=1",
            "default_hooks.logger.interval=1"]


def no_init_knn(cfg_file: str, out: Path) -> str:
    """The config with ClsRecordHook's starting k-NN off (found by type; its reads would shift the signalled read)."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(ROOT / cfg_file))
    hooks = [h for h in cfg.custom_hooks if h["type"] == "ClsRecordHook"]
    assert len(hooks) == 1
    hooks[0]["init_knn"] = False
    cfg.dump(str(out))
    return str(out)


def cls(wd: Path, root: Path, signal_at: int = 0, resume: bool = False) -> int:
    config = no_init_knn(CLS, wd.parent / f"{wd.name}_cls.py")
    return run_cli(["cls", "--config", config, "--work-dir", str(wd), "--data", f"folder:{root}", *CLS_OPTS,
                    f"train_dataloader.dataset.at={signal_at}", *(["--resume"] if resume else [])])


# 48 images, batch 8: 6 steps per epoch; read 67 is in the 9th batch, the 3rd step of epoch 2; read 45 in the 6th,
# the last of epoch 1 (stopped before its validation and epoch checkpoint, which the resumed run then makes)
@pytest.mark.parametrize("signal_at,step", [(67, 9), (45, 6)])
def test_cls_sigterm_inside_an_epoch_then_resume_matches_uninterrupted(tmp_path, images, signal_at, step):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert cls(ref, images) == 0
    assert cls(cut, images, signal_at=signal_at) == EXIT_PREEMPTED
    f = final(cut)
    assert f["status"] == "preempted" and f["steps"] == step and f["checkpoint"] == str(cut / f"iter_{step}.pth")
    assert cls(cut, images, resume=True) == 0
    f = final(cut)
    assert f["status"] == "ok" and f["steps"] == 12
    assert_same_curve(ref, cut, list(range(1, 13)))
    assert f["val/top1"] == pytest.approx(final(ref)["val/top1"])


@pytest.mark.slow
@needs_fashion
def test_pretrain_sigterm_from_outside_with_a_data_worker(tmp_path):
    """As a scheduler does it: SIGTERM from another process at an arbitrary step, random crops in a DataLoader
    worker (which inherits the handler and keeps serving batches), then --resume."""
    opts = [*TINY, "default_hooks.knn.enabled=False", "default_hooks.logger.interval=2", "default_hooks.health.interval=2",
            "train_dataloader.sampler.seed=0", "train_cfg.max_iters=24", "default_hooks.checkpoint.interval=8",
            "train_dataloader.batch_size=16", "train_dataloader.num_workers=1", "model.backbone.rope_rescale=2.0",
            "model.mask_ratio=0.25", "default_hooks.ema.momentum=0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    cmd = lambda wd: [sys.executable, "-m", "nepa_eval.cli", "pretrain", "--config", PRETRAIN, "--work-dir", str(wd),
                      "--cfg-options", *opts]
    subprocess.run(cmd(ref), cwd=ROOT, env=env, check=True, capture_output=True)
    p = subprocess.Popen(cmd(cut), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if (cut / "scalars.jsonl").exists() and any(r >= 10 for r in losses(cut)):
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=300)[1]
    assert p.returncode == EXIT_PREEMPTED, err[-2000:]
    f = final(cut)
    assert f["status"] == "preempted" and 10 <= f["steps"] < 24
    assert (cut / "last_checkpoint").read_text() == str(cut / f"iter_{f['steps']}.pth")
    r = subprocess.run([*cmd(cut), "--resume"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_curve(ref, cut, list(range(2, 25, 2)))
    assert final(cut)["status"] == "ok"


@pytest.mark.slow
def test_torchrun_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, images):
    """Two gloo processes under torchrun; SIGTERM reaches one worker only: both stop after the same step (the flag
    is all-reduced), rank 0 writes the checkpoint, both exit 75; --resume under torchrun gives the uninterrupted
    curve."""
    import shutil

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    opts = [*TINY, "default_hooks.knn.enabled=False", "default_hooks.logger.interval=1", "default_hooks.health.interval=1",
            "train_cfg.max_iters=30", "default_hooks.checkpoint.interval=100", "train_dataloader.batch_size=4",
            "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
            "train_dataloader.dataset.transform.kind=resize", "model.backbone.rope_rescale=2.0",
            "model.mask_ratio=0.25", "train_dataloader.dataset.source=folder",
            f"train_dataloader.dataset.root={images}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = lambda wd, port: [torchrun, "--nproc_per_node", "2", "--master_port", str(port), "-m", "nepa_eval.cli",
                            "pretrain", "--config", PRETRAIN, "--work-dir", str(wd), "--launcher", "pytorch",
                            "--cfg-options", *opts]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    r = subprocess.run(cmd(ref, 29531), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    p = subprocess.Popen(cmd(cut, 29532), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if (cut / "scalars.jsonl").exists() and any(s >= 5 for s in losses(cut)):
            break
        time.sleep(0.05)
    workers = [int(x) for x in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGTERM)
    err = p.communicate(timeout=300)[1]
    assert p.returncode != 0 and "exitcode  : 75" in err, err[-3000:]
    f = final(cut)
    assert f["status"] == "preempted" and 5 <= f["steps"] < 30
    assert (cut / "last_checkpoint").read_text() == str(cut / f"iter_{f['steps']}.pth")
    assert checkpoint_problem(cut / f"iter_{f['steps']}.pth") is None
    r = subprocess.run([*cmd(cut, 29533), "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_curve(ref, cut, list(range(1, 31)))


@HOOKS.register_module()
class SignalAt(Hook):
    """Sends SIGTERM to this process during iteration `at` (after its step, before the PreemptionHook looks)."""

    priority = "NORMAL"

    def __init__(self, at: int = 0) -> None:
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
@needs_fashion
def test_seg_sigterm_then_resume_matches_uninterrupted(tiny_mosaic, tiny_seg_backbone, tmp_path):
    """mmseg's UPerNet (dropout in its heads draws random numbers) on the mosaic set: SIGTERM after iteration 5,
    then --resume: the same losses and the same mIoU as the run that was never stopped."""
    seg_cfg = "seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py"
    def signalled(at: int) -> Path:  # the config with a hook that sends SIGTERM after iteration `at` (0: never)
        config = tmp_path / f"signalled_{at}.py"
        config.write_text(f"_base_ = ['{ROOT / seg_cfg}']\ncustom_hooks = [dict(type='LayerDecayLRHook', warmup=2, "
                          f"schedule='poly'), dict(type='SignalAt', at={at})]\n")
        return config

    opts = ["train_cfg.max_iters=8", "train_cfg.val_interval=8", "default_hooks.checkpoint.interval=3",
            "default_hooks.logger.interval=1", "train_dataloader.batch_size=4", "val_dataloader.batch_size=8",
            "test_dataloader.batch_size=8", "model.decode_head.channels=16", "model.auxiliary_head.channels=8"]
    common = lambda wd, at=0: ["seg", "--config", str(signalled(at)), "--ckpt", tiny_seg_backbone, "--data-root",
                               str(tiny_mosaic), "--work-dir", str(wd)]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert run_cli([*common(ref), "--cfg-options", *opts]) == 0
    assert run_cli([*common(cut, at=5), "--cfg-options", *opts]) == EXIT_PREEMPTED
    f = final(cut)
    assert f["status"] == "preempted" and f["steps"] == 5 and f["checkpoint"] == str(cut / "iter_5.pth")
    assert run_cli([*common(cut), "--resume", "--cfg-options", *opts]) == 0
    assert final(cut)["status"] == "ok" and final(cut)["steps"] == 8
    assert_same_curve(ref, cut, list(range(1, 9)))
    assert final(cut)["mIoU"] == pytest.approx(final(ref)["mIoU"])


def test_after_the_last_step_a_signal_is_not_held_back():
    """Once no training step is left, the hook gives the signal back to the handler it replaced (here a recorder
    standing in for the default action, which would end the process) instead of waiting for a step."""
    from nepa_eval.preemption import PreemptionHook

    seen = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    try:
        hook = PreemptionHook()
        hook.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert hook.received == "SIGUSR1" and seen == []  # held back: the run stops after its current step
        hook.received, hook.steps_over = None, True
        os.kill(os.getpid(), signal.SIGUSR1)
        assert hook.received is None and seen == [signal.SIGUSR1]  # passed on at once
        hook.uninstall()
    finally:
        signal.signal(signal.SIGUSR1, old)
