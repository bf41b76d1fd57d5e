"""End-to-end pretraining runs in subprocesses: SIGKILL + --resume reproduces the uninterrupted loss curve,
and two gloo processes match one process with the same global batch."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, needs_fashion

pytestmark = [pytest.mark.slow, needs_fashion]

TINY_CFG = "cls_configs/pretrain/nepa_tiny_fmnist.py"
BASE_OPTS = ["model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2",
             "model.backbone.mlp_hidden=64", "default_hooks.knn.enabled=False", "default_hooks.logger.interval=2",
             "default_hooks.health.interval=2", "train_dataloader.sampler.seed=0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def nepa_eval() -> list[str]:
    return [sys.executable, "-m", "nepa_eval.cli"]


def losses(wd: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (wd / "scalars.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), "a step was recorded twice"
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    # random crops, RoPE rescaling, input masking and EMA all draw random numbers: the resumed run must
    # continue the same streams (data workers reseeded, sampler replayed, process RNG restored)
    opts = BASE_OPTS + ["train_cfg.max_iters=24", "default_hooks.checkpoint.interval=8",
                        "train_dataloader.batch_size=16", "train_dataloader.num_workers=1",
                        "model.backbone.rope_rescale=2.0", "model.mask_ratio=0.25", "default_hooks.ema.momentum=0.1"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    cmd = lambda wd: [*nepa_eval(), "pretrain", "--config", TINY_CFG, "--work-dir", str(wd), "--cfg-options", *opts]
    subprocess.run(cmd(ref), cwd=ROOT, env=ENV, check=True, capture_output=True)

    p = subprocess.Popen(cmd(cut), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (cut / "iter_8.pth").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)  # at once: possibly while iter_16 is being written
    p.wait()
    assert (cut / "last_checkpoint").exists()
    killed_at = int(Path((cut / "last_checkpoint").read_text().strip()).stem.split("_")[1])
    assert killed_at < 24
    r = subprocess.run([*cmd(cut), "--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

    a, b = losses(ref), losses(cut)
    assert sorted(a) == sorted(b) == list(range(2, 25, 2))
    for s in a:
        assert b[s] == pytest.approx(a[s], abs=1e-5), (s, a[s], b[s], killed_at)
    from safetensors.torch import load_file

    wa, wb = load_file(str(ref / "backbone.safetensors")), load_file(str(cut / "backbone.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert json.loads((cut / "final_metrics.json").read_text())["status"] == "ok"


def test_two_gloo_processes_match_one_with_the_same_global_batch(tmp_path):
    # deterministic inputs (resize, no RoPE rescale, no masking), so only the data split differs
    opts = BASE_OPTS + ["train_cfg.max_iters=6", "default_hooks.checkpoint.interval=6",
                        "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
                        "train_dataloader.dataset.transform.kind=resize", "model.backbone.rope_rescale=None"]
    one, two = tmp_path / "one", tmp_path / "two"
    r = subprocess.run([*nepa_eval(), "pretrain", "--config", TINY_CFG, "--work-dir", str(one), "--cfg-options",
                        *opts, "train_dataloader.batch_size=16"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    script = str(Path(sys.executable).parent / "nepa-eval")  # as users run it: torchrun ... $(which nepa-eval)
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", script, "pretrain", "--config", TINY_CFG, "--work-dir", str(two), "--launcher", "pytorch",
                        "--cfg-options", *opts, "train_dataloader.batch_size=8"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    f1 = json.loads((one / "final_metrics.json").read_text())
    f2 = json.loads((two / "final_metrics.json").read_text())
    assert f1["effective_batch"] == f2["effective_batch"] == 16 and f2["status"] == "ok"
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b)
    for s in a:
        assert b[s] == pytest.approx(a[s], abs=1e-5), (s, a[s], b[s])
    from safetensors.torch import load_file

    wa, wb = load_file(str(one / "backbone.safetensors")), load_file(str(two / "backbone.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
