"""`nepa-eval cls`: the classifier, configs, eval-only of the release's format, bad input, resume, linear/k-NN."""
import json
import shutil

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from conftest import ROOT, require, tiny_kwargs
from backbones.nepa import NepaViT, save_checkpoint
from nepa_eval.cli import main as cli
from nepa_eval.tasks.cls import NepaClassifier

TINY = ROOT / "cls_configs/finetune/nepa-t_fmnist.py"
TINY_LINEAR = ROOT / "cls_configs/linear/nepa-t_fmnist.py"
_counter = [0]


def tiny_config(tmp_path, base=TINY, train=32, val=40, bs=8, epochs=1, extra="", deterministic=False, val_size=28):
    """A config over `base` with a very small model and data subset (a few seconds per run); `deterministic`:
    no random augmentation, drop path or RoPE jitter (for exact resume comparisons)."""
    _counter[0] += 1
    p = tmp_path / f"cfg{_counter[0]}.py"
    bb = dict(tiny_kwargs(), causal=False, drop_path_rate=0.0)
    tt = "transform=dict(_delete_=True, kind='resize', img_size=28), " if deterministic else ""
    p.write_text(
        f"_base_ = [{str(base)!r}]\n"
        f"model = dict(backbone=dict(_delete_=True, **{bb!r}))\n"
        f"train_dataloader = dict(batch_size={bs}, dataset=dict({tt}limit={train}))\n"
        f"val_dataloader = dict(batch_size=20, dataset=dict(limit={val}, transform=dict(img_size={val_size})))\n"
        "test_dataloader = val_dataloader\n"
        f"train_cfg = dict(max_epochs={epochs}, val_interval=1)\n"
        "default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=3))\n"
        f"experiment_name = 'cls_test_{_counter[0]}'\n" + extra)
    return str(p)


def final(work_dir):
    return json.loads((work_dir / "final_metrics.json").read_text())


def scalars(work_dir):
    return [json.loads(x) for x in (work_dir / "scalars.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------
# the classifier
# ----------------------------------------------------------------------------------------------
def test_classifier_head_freeze_and_causal():
    m = NepaClassifier(num_classes=7, backbone=tiny_kwargs(causal=True, drop_path_rate=0.1), freeze_patch_embed=True)
    assert m.backbone.causal and m.backbone.blocks[-1].drop_path.p == pytest.approx(0.1)
    assert not any(p.requires_grad for p in m.backbone.patch_embed.parameters())
    assert m.backbone.cls_token.requires_grad
    assert torch.count_nonzero(m.backbone.head.weight) == 0  # zero-initialised head
    x = torch.randn(4, 3, 28, 28)
    # the release's head: final norm -> mean of patch tokens -> fc_norm -> Linear
    m.eval()
    bb = m.backbone
    with torch.no_grad():
        torch.nn.init.normal_(bb.head.weight)
        ref = bb.head(bb.fc_norm(bb.forward_features(x)[:, 1:].mean(1)))
        assert torch.allclose(m(x, mode="tensor"), ref, atol=1e-6)
    out = m(x, torch.tensor([0, 1, 2, 3]), mode="predict")
    assert len(out) == 4 and out[0]["topk"].shape == (5,) and out[1]["label"] == 1
    # causal really changes the features; bidirectional is another function
    with torch.no_grad():
        a = bb.forward_features(x)
        bb.set_causal(False)
        assert not torch.allclose(a, bb.forward_features(x))


def test_mixup_odd_batch_is_a_clear_error():
    m = NepaClassifier(num_classes=10, backbone=tiny_kwargs(), mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0),
                       label_smoothing=0.1)
    loss = m(torch.randn(4, 3, 28, 28), torch.arange(4), mode="loss")["loss"]
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="even batch"):
        m(torch.randn(3, 3, 28, 28), torch.arange(3), mode="loss")


def test_configs_hold_the_release_recipe():
    b = Config.fromfile(str(ROOT / "cls_configs/finetune/nepa-b_in1k.py"))
    l_ = Config.fromfile(str(ROOT / "cls_configs/finetune/nepa-l_in1k.py"))
    for c, lr, warm, dp, crop, size in ((b, 6e-3, 20, 0.1, 0.875, "base"), (l_, 4e-3, 30, 0.2, 0.95, "large")):
        assert c.model.backbone.model_name == f"nepa_{size}_patch14_224"
        hook = next(h for h in c.custom_hooks if h["type"] == "LayerDecayLRHook")
        ema = next(h for h in c.custom_hooks if h["type"] == "EMAHook")
        assert c.optim_wrapper.optimizer.lr == lr and hook["warmup_epochs"] == warm
        assert c.model.backbone.drop_path_rate == dp
        assert c.val_dataloader.dataset.transform.crop_pct == crop
        assert ema["momentum"] == pytest.approx(1e-4)  # mmengine: momentum = 1 - 0.9999
        pw = c.optim_wrapper.paramwise_cfg  # the decay schedule is stated once, for the constructor
        assert (pw.layer_decay_rate, pw.layer_decay_rate_end, pw.layer_decay_ramp) == (0.35, 1.0, "linear")
        assert not {"rate", "rate_end", "ramp"} & set(hook)
        assert c.optim_wrapper.paramwise_cfg.head_lr == 1e-3 and c.optim_wrapper.clip_grad.max_norm == 1.0
        assert c.optim_wrapper.optimizer.betas == (0.9, 0.999) and c.optim_wrapper.optimizer.weight_decay == 0.05
        assert c.train_dataloader.batch_size * 8 == 1024 and c.train_cfg.max_epochs == 100
        t = c.train_dataloader.dataset.transform
        assert t.auto_augment == "rand-m9-mstd0.5-inc1" and t.re_prob == 0.25 and t.interpolation == "bicubic"
        assert t.mean == (0.5, 0.5, 0.5) and c.model.mixup == dict(mixup_alpha=0.8, cutmix_alpha=1.0)
        assert c.model.label_smoothing == 0.1 and c.model.freeze_patch_embed and c.model.backbone.causal is False
        assert c.custom_imports.imports == ["nepa_eval.engine", "nepa_eval.data.sources", "nepa_eval.data.check",
                                           "nepa_eval.tasks.cls", "nepa_eval.preemption"]
    assert Config.fromfile(str(ROOT / "cls_configs/finetune/nepa-b_in1k_causal.py")).model.backbone.causal is True
    cosine = Config.fromfile(str(ROOT / "cls_configs/finetune/nepa-b_in1k_cosine-ramp.py"))
    assert cosine.optim_wrapper.paramwise_cfg.layer_decay_ramp == "cosine"
    assert cosine.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.35 and cosine.optim_wrapper.paramwise_cfg.head_lr == 1e-3


# ----------------------------------------------------------------------------------------------
# the release's fine-tuned format
# ----------------------------------------------------------------------------------------------
def test_release_classifier_gives_its_own_logits(official_dir):
    from safetensors.torch import load_file

    d = official_dir / "nepa_tiny_cls_bidirectional"
    m = NepaClassifier(num_classes=10, ckpt=str(d), backbone={}).eval()
    exp = load_file(str(d / "expected.safetensors"))
    with torch.no_grad():
        logits = m(exp["pixel_values"], mode="tensor")
    assert torch.allclose(logits, exp["logits"], atol=1e-4), (logits - exp["logits"]).abs().max()


def test_eval_only_release_dir(tmp_path, official_dir):
    from nepa_eval.data.sources import ImageDataset
    from nepa_eval.data.transforms import build_transform

    d = official_dir / "nepa_tiny_cls_bidirectional"
    wd = tmp_path / "ev"
    cfg = tiny_config(tmp_path, val=60, val_size=56)
    assert cli(["cls", "--ckpt", str(d), "--config", cfg, "--eval-only", "--work-dir", str(wd)]) == 0
    f = final(wd)
    assert f["status"] == "ok" and f["protocol"] == "eval-only" and f["steps"] == 0
    # the same numbers by hand: the release's model, its head, the same 60 images at 56 px
    m = NepaClassifier(num_classes=10, ckpt=str(d), backbone={}).eval()
    ds = ImageDataset("fashion_mnist", split="val", limit=60,
                      transform=build_transform("resize", img_size=56, interpolation="bicubic"))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor(ds.targets)
    with torch.no_grad():
        logits = m(x, mode="tensor")
    assert f["top1"] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())
    assert f["top5"] == pytest.approx(100 * (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item())


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
def _folder(root, classes=3, per_class=2, splits=("train", "val"), corrupt=False):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(d / f"{i}.png")
            if corrupt:
                for f in d.iterdir():
                    f.write_bytes(b"not an image")
    return root


def _bad(capsys, argv):
    rc = cli(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    return err


def test_bad_checkpoint_not_nepa(tmp_path, capsys):
    p = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.randn(8, 3, 7, 7), "fc.weight": torch.randn(10, 8), "fc.bias": torch.zeros(10)}, p)
    err = _bad(capsys, ["cls", "--ckpt", str(p), "--config", tiny_config(tmp_path), "--work-dir", str(tmp_path / "w")])
    assert "resnet.pth" in err and "NEPA" in err
    p2 = tmp_path / "garbage.pth"
    p2.write_bytes(b"\x00" * 100)
    err = _bad(capsys, ["cls", "--ckpt", str(p2), "--config", tiny_config(tmp_path), "--work-dir", str(tmp_path / "w")])
    assert "garbage.pth" in err


def test_bad_class_count(tmp_path, capsys, official_dir):
    data = _folder(tmp_path / "three")
    cfg = tiny_config(tmp_path)
    # a 10-class fine-tuned classifier evaluated on 3-class data
    err = _bad(capsys, ["cls", "--ckpt", str(official_dir / "nepa_tiny_cls_bidirectional"), "--config", cfg,
                        "--data", str(data), "--eval-only", "--work-dir", str(tmp_path / "w")])
    assert "class count mismatch" in err and "10" in err and "3" in err
    # the config's class count against the data's
    err = _bad(capsys, ["cls", "--ckpt", "none", "--config", cfg, "--work-dir", str(tmp_path / "w"),
                        "--cfg-options", "model.num_classes=1000"])
    assert "class count mismatch" in err and "1000" in err
    # train and val with different classes
    _folder(tmp_path / "uneven", classes=4, splits=("val",))
    _folder(tmp_path / "uneven", classes=3, splits=("train",))
    err = _bad(capsys, ["cls", "--ckpt", "none", "--config", cfg, "--data", str(tmp_path / "uneven"),
                        "--work-dir", str(tmp_path / "w")])
    assert "class count mismatch" in err


def test_bad_data_empty_and_unreadable(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "val" / "a").mkdir(parents=True)
    err = _bad(capsys, ["cls", "--ckpt", "none", "--config", cfg, "--data", str(empty), "--work-dir", str(tmp_path / "w")])
    assert "no images" in err and "train" in err
    broken = _folder(tmp_path / "broken", corrupt=True)
    err = _bad(capsys, ["cls", "--ckpt", "none", "--config", cfg, "--data", str(broken), "--work-dir", str(tmp_path / "w")])
    assert "unreadable image" in err
    err = _bad(capsys, ["cls", "--ckpt", "none", "--config", cfg, "--data", str(tmp_path / "nowhere"),
                        "--work-dir", str(tmp_path / "w")])
    assert "nowhere" in err


def test_bad_odd_batch_with_mixup(tmp_path, capsys):
    cfg = tiny_config(tmp_path, bs=7, extra="model = dict(mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0))\n")
    err = _bad(capsys, ["cls", "--ckpt", "none", "--config", cfg, "--work-dir", str(tmp_path / "w")])
    assert "even" in err and "batch_size=7" in err


# ----------------------------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------------------------
def test_resume_matches_uninterrupted_run(tmp_path):
    """Two epochs straight vs. stopped after epoch 1 and resumed: the same losses, lr and EMA accuracy."""
    cfg = tiny_config(tmp_path, train=32, val=40, bs=8, epochs=2, deterministic=True)
    a = tmp_path / "a"
    assert cli(["cls", "--ckpt", "none", "--config", cfg, "--work-dir", str(a)]) == 0
    # the state a run killed during epoch 2 leaves behind: the epoch-1 checkpoint and its records
    b = tmp_path / "b"
    b.mkdir()
    shutil.copy(a / "epoch_1.pth", b / "epoch_1.pth")
    (b / "last_checkpoint").write_text(str(b / "epoch_1.pth"))
    (b / "scalars.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scalars(a) if r["step"] <= 4))
    cfg_b = tiny_config(tmp_path, train=32, val=40, bs=8, epochs=2, deterministic=True)
    assert cli(["cls", "--ckpt", "none", "--config", cfg_b, "--work-dir", str(b), "--resume"]) == 0
    la = {r["step"]: r for r in scalars(a) if "loss" in r}
    lb = {r["step"]: r for r in scalars(b) if "loss" in r}
    assert sorted(la) == sorted(lb) == list(range(1, 9))
    for s in range(5, 9):
        assert lb[s]["loss"] == pytest.approx(la[s]["loss"], rel=1e-5, abs=1e-6), s
        assert lb[s]["lr"] == pytest.approx(la[s]["lr"], rel=1e-9)
    fa, fb = final(a), final(b)
    assert fb["status"] == "ok" and fb["steps"] == 8
    for k in ("top1", "ema_top1", "best_ema_top1"):
        assert fb[k] == pytest.approx(fa[k]), k
    assert la[8]["loss"] != pytest.approx(la[1]["loss"], rel=1e-3)  # it trained


def test_finetune_linear_knn_from_a_checkpoint(tmp_path):
    """A backbone file -> fine-tune (EMA metrics, best-by-EMA checkpoint), linear probe (frozen backbone), k-NN."""
    torch.manual_seed(0)
    ck = save_checkpoint(NepaViT(**tiny_kwargs(causal=True)), tmp_path / "bb.safetensors")
    ft = tmp_path / "ft"
    assert cli(["cls", "--ckpt", str(ck), "--config", tiny_config(tmp_path, epochs=2), "--work-dir", str(ft)]) == 0
    f = final(ft)
    assert f["status"] == "ok" and f["task"] == "cls" and f["protocol"] == "finetune" and f["steps"] == 8
    # top1/top5 are the last epoch's weights on the 40 validation images, recomputed here from its checkpoint
    from mmengine.registry import DATASETS

    val = DATASETS.build(Config.fromfile(str(ft / "config.py")).val_dataloader.dataset)
    assert len(val) == 40
    x, y = torch.stack([val[i][0] for i in range(40)]), torch.tensor([val[i][1] for i in range(40)])
    for ema, prefix in ((False, ""), (True, "ema_")):
        with torch.no_grad():
            logits = NepaClassifier(num_classes=10, ckpt=str(ft / "epoch_2.pth"), ckpt_ema=ema, backbone={}).eval()(
                x, mode="tensor")
        assert f[prefix + "top1"] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item()), prefix
        assert f[prefix + "top5"] == pytest.approx(100 * (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item())
    assert f["best_ema_top1"] == max(r["val/ema_top1"] for r in scalars(ft) if "val/ema_top1" in r)
    # init_knn_top1 (the tables' k-NN column): the starting backbone's k-NN on this run's own train / val images,
    # both through the val transform; recomputed here with its own feature extraction and vote
    import torch.nn.functional as F

    train = DATASETS.build({**Config.fromfile(str(ft / "config.py")).train_dataloader.dataset,
                            "transform": Config.fromfile(str(ft / "config.py")).val_dataloader.dataset.transform})
    assert len(train) == 32
    start = NepaViT(**tiny_kwargs(causal=False)).eval()
    from backbones.nepa import load_weights

    load_weights(start, ck)

    def feats(ds):
        with torch.no_grad():
            return F.normalize(start.forward_features(torch.stack([ds[i][0] for i in range(len(ds))]))[:, 1:].mean(1), dim=-1)
    ftr, fte = feats(train), feats(val)
    ytr = torch.tensor([train[i][1] for i in range(len(train))])
    top, idx = (fte @ ftr.T).topk(20, dim=1)
    votes = torch.zeros(len(fte), 10).scatter_add_(1, ytr[idx], (top / 0.07).exp())
    assert f["init_knn_top1"] == pytest.approx(100 * (votes.argmax(1) == y).float().mean().item())
    best = list(ft.glob("best_ema_top1_*.pth"))
    assert len(best) == 1
    # the best checkpoint re-enters through the weight door with its own head and attention mode
    m = NepaClassifier(num_classes=10, ckpt=str(best[0]), backbone={})
    assert m.backbone.causal is False and m.backbone.num_classes == 10
    assert torch.count_nonzero(m.backbone.head.weight) > 0
    cfg_text = (ft / "config.py").read_text()
    assert "layer_decay_ramp='linear'" in cfg_text and "LayerDecayLRHook" in cfg_text
    # what the run started from is recorded: a file no run wrote (no run_dir), its hash
    import hashlib

    assert f["started_from"] == dict(given=str(ck), file=str(ck.resolve()),
                                     sha256=hashlib.sha256(ck.read_bytes()).hexdigest())
    # a run from a checkpoint another run wrote names that run; the report links the two by it
    ev = tmp_path / "ev"
    assert cli(["cls", "--ckpt", str(best[0]), "--eval-only", "--config", tiny_config(tmp_path, epochs=2),
                "--work-dir", str(ev)]) == 0
    assert final(ev)["started_from"]["run_dir"] == str(ft.resolve())
    assert final(ev)["started_from"]["run_id"] == f["run_id"] != final(ev)["run_id"]
    from nepa_eval.report import discover_runs

    runs = {r.path.name: r for r in discover_runs([tmp_path])}
    assert runs["ev"].parent is runs["ft"] and runs["ft"].parent is None

    lp = tmp_path / "lp"
    assert cli(["cls", "--ckpt", str(ck), "--protocol", "linear", "--config", tiny_config(tmp_path, base=TINY_LINEAR),
                "--work-dir", str(lp)]) == 0
    f = final(lp)
    assert f["status"] == "ok" and f["protocol"] == "linear" and "ema_top1" not in f
    sd = torch.load(next(lp.glob("best_top1_*.pth")), weights_only=True)["state_dict"]
    src = NepaViT(**tiny_kwargs(causal=True))
    from backbones.nepa import load_weights

    load_weights(src, ck)
    for k, v in src.state_dict().items():
        if not k.startswith(("head.", "fc_norm.")):
            assert torch.equal(sd["backbone." + k], v), k  # the backbone stayed frozen
    assert torch.count_nonzero(sd["backbone.head.weight"]) > 0

    kn = tmp_path / "knn"
    assert cli(["cls", "--ckpt", str(ck), "--protocol", "knn", "--config",
                tiny_config(tmp_path, base=ROOT / "cls_configs/linear/knn_fmnist.py", train=300, val=100),
                "--work-dir", str(kn)]) == 0
    f = final(kn)
    assert f["protocol"] == "knn" and f["status"] == "ok" and f["train_images"] == 300
    assert f["top1"] > 30  # chance is 10: labels and features are wired to each other


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo(tmp_path):
    """torchrun, 2 CPU processes (gloo): the data is sharded (half the steps), and the distributed evaluation of
    45 images (padded to 46 by the sampler) equals a 1-process evaluation of the saved checkpoint (model and EMA)."""
    import os
    import subprocess
    import sys

    cfg = tiny_config(tmp_path, train=32, val=45, bs=8, epochs=3, deterministic=True,
                      extra="optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.65, layer_decay_ramp='constant'))\n"
                            "custom_hooks = [dict(type='LayerDecayLRHook', warmup=1),"
                            " dict(type='EMAHook', momentum=0.3), dict(type='ClsRecordHook')]\n")
    wd = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "nepa_eval.cli", "cls", "--ckpt", "none", "--config", cfg, "--work-dir", str(wd), "--launcher", "pytorch"]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    f = final(wd)
    assert f["status"] == "ok" and f["steps"] == 6  # 3 epochs x 32 images / 2 processes / batch 8
    last = wd / "epoch_3.pth"  # the final metrics are those of the last epoch
    for ema, prefix in ((False, ""), (True, "ema_")):
        ev = tmp_path / f"ev{prefix}"
        assert cli(["cls", "--ckpt", str(last), "--config", cfg, "--eval-only", "--work-dir", str(ev)]
                   + (["--ema"] if ema else [])) == 0
        assert final(ev)["top1"] == pytest.approx(f[prefix + "top1"])
        assert final(ev)["top5"] == pytest.approx(f[prefix + "top5"])
    from backbones.nepa import from_pretrained

    raw, ema = (from_pretrained(last, ema=e, verbose=False).head.weight for e in (False, True))
    assert not torch.allclose(raw, ema)  # the two evaluations saw different weights


def test_folder_and_hf_data_sources(tmp_path):
    """--data with an ImageFolder tree and with a saved Hugging Face dataset: the class count comes from the data."""
    datasets = require("datasets", "Hugging Face datasets")
    folder = _folder(tmp_path / "folder", classes=3, per_class=4)
    wd = tmp_path / "f"
    assert cli(["cls", "--ckpt", "none", "--config", tiny_config(tmp_path, bs=4), "--data", str(folder),
                "--work-dir", str(wd)]) == 0
    f = final(wd)
    assert f["status"] == "ok" and f["num_classes"] == 3 and f["steps"] == 3  # 12 images / batch 4

    rng = np.random.default_rng(0)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c", "d"])})
    split = lambda n: datasets.Dataset.from_dict(  # noqa: E731
        {"image": [Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)) for _ in range(n)],
         "label": [i % 4 for i in range(n)]}, features=feats)
    datasets.DatasetDict(train=split(8), validation=split(6)).save_to_disk(str(tmp_path / "hf"))
    wd = tmp_path / "h"
    assert cli(["cls", "--ckpt", "none", "--config", tiny_config(tmp_path, bs=4), "--data", str(tmp_path / "hf"),
                "--work-dir", str(wd)]) == 0
    f = final(wd)
    assert f["status"] == "ok" and f["num_classes"] == 4 and f["steps"] == 2


def test_random_init_through_timm_registry():
    """Without a checkpoint, `model_name` builds the timm-registered NEPA model with the run's settings."""
    m = NepaClassifier(num_classes=5, backbone=dict(model_name="nepa_tiny_patch16_224", img_size=32, causal=True,
                                                    drop_path_rate=0.2))
    bb = m.backbone
    assert isinstance(bb, NepaViT) and bb.embed_dim == 192 and len(bb.blocks) == 12 and bb.patch_size == 16
    assert bb.causal and bb.num_classes == 5 and bb.blocks[-1].drop_path.p == pytest.approx(0.2)
    assert bb.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # built by timm, with its pretrained_cfg
    assert m(torch.randn(2, 3, 32, 32), mode="tensor").shape == (2, 5)
