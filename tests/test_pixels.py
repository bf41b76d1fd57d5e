"""`nepa-eval pixels`: raw-pixel references on a classification config's data (k-NN and a linear classifier)."""
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import needs_fashion
from nepa_eval.cli import main as cli
from nepa_eval.tasks import pixels


def test_linear_classifier_separates_what_is_separable_and_picks_its_penalty_on_held_out_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 20, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()  # linearly separable, with a margin of noise-free labels
    top1, wd = pixels.linear_top1((x[:300], y[:300]), (x[300:], y[300:]), 2)
    assert top1 >= 93.0 and wd in pixels.WEIGHT_DECAYS
    noise = (torch.randn(400, 20, generator=g), torch.randint(0, 2, (400,), generator=g))  # labels unrelated to x
    top1_noise, _ = pixels.linear_top1((noise[0][:300], noise[1][:300]), (noise[0][300:], noise[1][300:]), 2)
    assert top1_noise < 70.0


@needs_fashion
def test_pixels_command_on_a_config_data(tmp_path):
    """The run directory the report reads; the k-NN recomputed here by hand on the same images."""
    cfg = tmp_path / "cfg.py"
    cfg.write_text("_base_ = ['" + str(pixels.__file__).rsplit("/nepa_eval/", 1)[0]
                   + "/cls_configs/finetune/nepa-t_fmnist.py']\n"
                   "train_dataloader = dict(dataset=dict(limit=300))\nval_dataloader = dict(dataset=dict(limit=100))\n")
    wd = tmp_path / "px"
    assert cli(["pixels", "--config", str(cfg), "--work-dir", str(wd)]) == 0
    final = json.loads((wd / "final_metrics.json").read_text())
    assert final["task"] == "pixels" and final["status"] == "ok"
    assert (final["train_images"], final["test_images"], final["num_classes"]) == (300, 100, 10)
    assert 50.0 < final["linear_top1"] <= 100.0 and final["linear_wd"] in pixels.WEIGHT_DECAYS
    assert (wd / "config.py").is_file()
    # k-NN by hand: the same subsets (val transform: resize to 28 = the raw pixels, normalised by 0.5 / 0.5)
    from nepa_eval.data.fashion import fashion_mnist_arrays
    from nepa_eval.data.sources import _subset

    def data(split, n):
        x, y = fashion_mnist_arrays(split)
        i = _subset(len(x), n)
        v = (torch.tensor(x[i], dtype=torch.float32) / 255 - 0.5) / 0.5
        return F.normalize(v.flatten(1), dim=1), torch.tensor(y[i]).long()  # (one of the three equal channels)
    (ftr, ytr), (fte, yte) = data("train", 300), data("test", 100)
    top, idx = (fte @ ftr.T).topk(20, dim=1)
    votes = torch.zeros(100, 10).scatter_add_(1, ytr[idx], (top / 0.07).exp())
    assert final["knn_top1"] == pytest.approx(100 * (votes.argmax(1) == yte).float().mean().item(), abs=1e-6)


def test_a_missing_config_is_named_with_the_fix(tmp_path, capsys):
    assert cli(["pixels", "--config", str(tmp_path / "nope.py"), "--work-dir", str(tmp_path / "px")]) == 2
    err = capsys.readouterr().err
    assert "nope.py: no such file" in err and "cls_configs/finetune/nepa-t_fmnist.py" in err
