"""The trivial-solution detector: without the one-step shift the model copies its input (cosine ~1 from the first
steps) and the run is marked 'trivial' and stopped; the paper's recipe and its no-causal row are not."""
import json

import pytest

from conftest import needs_fashion
from nepa_eval.cli import main as cli

OPTS = ["train_cfg.max_iters=20", "train_dataloader.batch_size=32", "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False", "default_hooks.knn.enabled=False", "default_hooks.logger.interval=5",
        "default_hooks.health.interval=5", "default_hooks.checkpoint.interval=100"]


@needs_fashion
@pytest.mark.parametrize("row, switch, trivial", [("full", None, False), ("no_shift", "model.shift=False", True),
                                                  ("no_causal", "model.causal=False", False)])
def test_trivial_detector_fires_on_the_no_shift_copy_only(tmp_path, row, switch, trivial):
    wd = tmp_path / row
    assert cli(["pretrain", "--work-dir", str(wd), "--cfg-options", *OPTS, *([switch] if switch else [])]) == 0
    final = json.loads((wd / "final_metrics.json").read_text())
    rows = [json.loads(line) for line in (wd / "scalars.jsonl").read_text().splitlines()]
    early = [r["cos"] for r in rows if "cos" in r][:3]
    if trivial:
        assert final["status"] == "trivial" and final["reason"].startswith("trivial: the model copies its input")
        assert final["trivial_step"] == 15 and final["steps"] == 15  # stopped at the third check, not at 20
        assert sum(early) / 3 >= 0.9
    else:
        assert final["status"] == "ok" and final["steps"] == 20 and "trivial_step" not in final
        assert sum(early) / 3 < 0.9
