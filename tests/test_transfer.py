"""The transfer study: its plan (real commands, a manifest), and its table and plot from small run directories."""
import argparse
import json
import shlex
from pathlib import Path

import pytest
from mmengine.config import Config

from nepa_eval import transfer
from nepa_eval.cli import main as cli_main
from nepa_eval.transfer_report import load_study, markdown, versus, write_report


def _final(d, **values):
    d.mkdir(parents=True, exist_ok=True)
    (d / "final_metrics.json").write_text(json.dumps(values))


# top-1 per (steps, labels, seed): 1,000 labels gains from 1,000 steps on, 10,000 labels stays within the spread
TOP1 = {
    (0, 1000): [70.0, 70.4, 69.8], (100, 1000): [70.2, 69.9, 70.5], (1000, 1000): [72.0, 72.3, 71.9],
    (3000, 1000): [73.0, 73.4, None],   # seed 2's fine-tune never ran: missing, not in the mean
    (0, 10000): [84.5, 84.6, 84.4], (100, 10000): [84.0, 84.6, 84.2], (1000, 10000): [84.5, 84.7, 84.3],
    (3000, 10000): [84.2, 84.8, 84.0],
}


@pytest.fixture
def study(tmp_path):
    """A study's run directories and manifest as `nepa-eval transfer` leaves them, with made-up metrics."""
    root = tmp_path / "tiny"
    budgets = [transfer.Budget(1000, 30), transfer.Budget(10000, 6)]
    chains = transfer.plan("tiny", [0, 100, 1000, 3000], budgets, 3, root)
    transfer.write_manifest(root, chains, dict(scale="tiny", steps=[0, 100, 1000, 3000], seeds=3,
                                               budgets=[[1000, 30], [10000, 6]]))
    for e in (e for chain in chains for e in chain):
        d = Path(e.run_dir)
        if e.stage == "pretrain":
            _final(d, task="pretrain", status="ok")
        elif e.stage == "cls" and (v := TOP1[(e.steps, e.labels)][e.seed]) is not None:
            _final(d, task="cls", status="ok", top1=v)
        elif e.stage == "pixels":
            _final(d, task="pixels", status="ok", linear_top1=60.0 if e.labels == 1000 else 83.45, knn_top1=55.0)
        elif e.stage == "knn":
            blocks = {0: 60.0, 1: 66.1, 2: 63.0, 3: 61.0} if e.role == "pretrained" else {0: 58.7, 1: 58.0, 2: 57.5,
                                                                                             3: 57.0}
            _final(d, task="knn", status="ok", knn_top1=60.7 if e.role == "pretrained" else 59.0,
                   **{f"knn_top1_block{b}": v for b, v in blocks.items()})
    return root


def test_plan_chains_each_pretraining_to_its_fine_tunes_with_seeds(tmp_path):
    root = tmp_path / "tiny"
    chains = transfer.plan("tiny", [0, 300, 3000], [transfer.Budget(1000, 30), transfer.Budget(10000, 6)], 2, root)
    runs = [e for chain in chains for e in chain]
    assert sum(e.stage == "pretrain" for e in runs) == 2 * 2      # two lengths x two seeds (0 = no pretraining)
    assert sum(e.stage == "cls" for e in runs) == 3 * 2 * 2       # three lengths x two budgets x two seeds
    assert [e.role for e in runs if e.stage == "knn"] == ["pretrained", "random"]
    for chain in chains:
        pre = [e for e in chain if e.stage == "pretrain"]
        for e in (e for e in chain if e.stage == "cls"):
            opts = e.argv[e.argv.index("--cfg-options") + 1:]
            assert f"train_dataloader.dataset.limit={e.labels}" in opts and f"train_cfg.max_epochs={e.epochs}" in opts
            ckpt = e.argv[e.argv.index("--ckpt") + 1]
            if e.steps == 0:
                assert ckpt == "none" and not pre
            else:  # the fine-tune starts from its own chain's pretraining, of its own length and seed
                assert ckpt == str(root / "pretrain" / f"steps{e.steps}" / f"seed{e.seed}" / "backbone.safetensors")
                assert pre[0].steps == e.steps and pre[0].seed == e.seed
            assert ("randomness.seed=1" in opts) == (e.seed == 1)
    p = next(e for e in runs if e.stage == "pretrain" and e.steps == 300 and e.seed == 1)
    opts = p.argv[p.argv.index("--cfg-options") + 1:]
    assert "train_cfg.max_iters=300" in opts and "randomness.seed=1" in opts
    # the commands parse with the real command line and the configs they name exist and load
    cfg = Config.fromfile(p.argv[p.argv.index("--config") + 1])
    assert cfg.model.backbone.depth == 4
    knn = next(e for e in runs if e.role == "pretrained")
    assert knn.argv.count("--block") == 4 and knn.argv[knn.argv.index("--ckpt") + 1].endswith(
        "steps3000/seed0/backbone.safetensors")


def test_table_from_runs_with_a_missing_one(study, tmp_path):
    st = load_study(study)
    low = {n: st.cells[(n, 1000)] for n in (0, 100, 1000, 3000)}
    assert low[3000].values == [73.0, 73.4] and low[3000].missing == [2]
    assert low[1000].mean == pytest.approx(72.0667, abs=1e-3)
    assert versus(low[1000], low[0]) == "above"            # 2.07 apart, spreads 0.21 + 0.31
    assert versus(low[100], low[0]) == "within spread"
    assert versus(st.cells[(3000, 10000)], st.cells[(0, 10000)]) == "within spread"
    md = markdown(st)
    assert "| 3,000 | 73.20 ± 0.28 (2 of 3 seeds) (above)" in md
    assert "1,000 labels (30 epochs): pretraining beats random init beyond the seed spread from 1,000 steps" in md
    assert "10,000 labels (6 epochs): no pretraining length beats random init beyond the seed spread" in md
    assert "| raw pixels, linear classifier | 60.00 | 83.45 |" in md
    assert "| 1 | 66.10 | 58.00 |" in md and "pretrained (3,000 steps)" in md
    res = write_report(study, tmp_path / "out")
    rows = res.csv.read_text().splitlines()
    assert "3000,1000,30,73.20,0.28,2,73.00 73.40,2,,above" in rows
    assert res.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # what the plot drew: one line per budget over the pretrained lengths only (log axis: no 0), the random-init
    # level with its std, the pixel references, the depth profile
    d = res.drawn
    assert [x for x, _, _ in d["lines"][1000]] == [100, 1000, 3000]
    assert d["lines"][1000][2][1] == pytest.approx(73.2) and d["lines"][1000][2][2] == pytest.approx(0.2828, abs=1e-3)
    assert d["random_init"][10000][0] == pytest.approx(84.5)
    assert d["pixels"] == {1000: 60.0, 10000: 83.45}
    assert d["depth"]["pretrained"][1] == (1, 66.1)


def test_a_failed_pretraining_is_a_failure_not_a_number(study):
    (study / "pretrain" / "steps100" / "seed0" / "final_metrics.json").write_text(
        json.dumps(dict(task="pretrain", status="collapsed")))
    st = load_study(study)
    c = st.cells[(100, 1000)]
    assert c.failed == ["seed 0: pretraining collapsed"] and len(c.values) == 2


def test_single_seed_is_never_called_a_direction(tmp_path):
    root = tmp_path / "tiny"
    chains = transfer.plan("tiny", [0, 300], [transfer.Budget(1000, 30)], 1, root, depth=False)
    transfer.write_manifest(root, chains, dict(scale="tiny", steps=[0, 300], seeds=1, budgets=[[1000, 30]]))
    _final(root / "cls" / "steps0_labels1000" / "seed0", status="ok", top1=70.0)
    _final(root / "cls" / "steps300_labels1000" / "seed0", status="ok", top1=75.0)
    st = load_study(root)
    assert versus(st.cells[(300, 1000)], st.cells[(0, 1000)]) == "single seed"
    assert "no pretraining length beats random init" in markdown(st)


def test_command_line_dry_run_and_errors(tmp_path, capsys):
    assert cli_main(["transfer", "--steps", "0,50", "--budgets", "200:2", "--seeds", "1", "--work-dir",
                     str(tmp_path), "--dry-run"]) == 0
    lines = [shlex.split(l) for l in capsys.readouterr().out.splitlines() if l.startswith("nepa-eval")]
    assert [l[1] for l in lines] == ["cls", "pretrain", "cls", "knn", "knn", "pixels"]
    with pytest.raises(SystemExit):
        cli_main(["transfer", "--budgets", "1000"])  # LABELS:EPOCHS
    assert "LABELS:EPOCHS" in capsys.readouterr().err
    assert cli_main(["transfer", "--report-only", "--work-dir", str(tmp_path / "nothing")]) == 2
    assert "run `nepa-eval transfer` first" in capsys.readouterr().err


def test_depth_profile_from_two_knn_runs(tmp_path):
    from nepa_eval.transfer_report import write_depth

    _final(tmp_path / "p", status="ok", knn_top1=60.7, knn_top1_block0=60.0, knn_top1_block1=66.1, knn_top1_block2=63.0)
    _final(tmp_path / "r", status="ok", knn_top1=59.0, knn_top1_block0=58.7, knn_top1_block1=58.0, knn_top1_block2=57.5)
    md, png = write_depth({"pretrained": str(tmp_path / "p"), "random": str(tmp_path / "r")}, tmp_path / "out", 600)
    assert "| 1 | 66.10 | 58.00 |" in md and "| final (normed) | 60.70 | 59.00 |" in md and "600 steps" in md
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert write_depth({"pretrained": str(tmp_path / "missing")}, tmp_path / "out2") == ("", None)


def _cell(name, ours, status="ok", reason=""):
    from types import SimpleNamespace

    return SimpleNamespace(row=SimpleNamespace(name=name), ours=ours, status=status, reason=reason)


def _results(core, seg):
    from types import SimpleNamespace

    return [SimpleNamespace(spec=SimpleNamespace(name="core"), cells=[_cell(*c) for c in core]),
            SimpleNamespace(spec=SimpleNamespace(name="ade20k"), cells=[_cell(*c) for c in seg])]


def test_demo_summary_claims_only_what_its_numbers_show():
    from nepa_eval.demo import findings

    depth = {"pretrained": {0: 62.9, 1: 66.1, 2: 66.3, 3: 63.6}, "random": {0: 58.7, 1: 58.0, 2: 57.9, 3: 57.6}}
    core = [("full", 83.2), ("no_shift", None, "fail", "pretrain trivial"), ("no_causal", 82.8),
            ("no_stop_grad", None, "fail", "pretrain collapsed"), ("random_init", 84.5)]
    text = findings(_results(core, [("nepa_t", 23.9), ("nepa_t_random", 21.2)]), depth)
    assert "no shift fails (pretrain trivial), as in the paper" in text
    assert "does not beat random initialisation" in text and "nepa-eval transfer" in text
    assert "pretraining is above" not in text
    assert "pretrained 23.90 mIoU, above random init 21.20 (one seed" in text
    assert "best k-NN is block 2 (66.30, random init 57.90), above its last block (63.60)" in text
    # the other way round, the same page says the opposite, and a run that did not fail is not called a failure
    core2 = [("full", 85.0), ("no_shift", 80.0), ("random_init", 84.5)]
    text2 = findings(_results(core2, [("nepa_t", 20.0), ("nepa_t_random", 21.2)]), depth)
    assert "pretraining is above random initialisation: full 85.00 against 84.50" in text2
    assert "no shift does not fail here (80.00)" in text2 and "not above random init 21.20" in text2
