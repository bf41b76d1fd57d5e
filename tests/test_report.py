"""`nepa-eval report`: tables rebuilt from small run directories made here (ok, collapsed, crashed and missing runs)."""
import csv
import json
import math

import pytest
from mmengine.config import Config

from nepa_eval import report
from nepa_eval.cli import main as cli_main


def make_run(path, task, config, status="ok", metrics=None, scalars=None, reason=""):
    """A run directory in the engine's format: config.py (mmengine dump), scalars.jsonl, final_metrics.json."""
    path.mkdir(parents=True)
    Config(dict(config, work_dir=str(path))).dump(str(path / "config.py"))
    with open(path / "scalars.jsonl", "w") as f:
        for rec in scalars or [{"step": s, "loss": -0.1 * s, "cos": 0.1 * s, "out_std": 1.0 / s} for s in (1, 2, 3)]:
            f.write(json.dumps(rec) + "\n")
    final = dict(task=task, status=status, reason=reason, steps=3, **(metrics or {}))
    (path / "final_metrics.json").write_text(json.dumps(final))
    return path


def pre_cfg(shift=True, causal=True, stop_grad=True, **backbone):
    return dict(model=dict(type="NepaPretrainModel", shift=shift, causal=causal, stop_grad=stop_grad, mask_ratio=0.0,
                           backbone=dict(embed_dim=32, depth=2, **backbone)))


def read_csv(path):
    with open(path) as f:
        return {r["row"]: r for r in csv.DictReader(f)}


@pytest.fixture
def core_runs(tmp_path):
    """Core table: full (ok), no_causal (ok, lower), no_stop_grad (collapsed), no_shift missing; a stray seg run."""
    root = tmp_path / "runs"
    make_run(root / "full", "pretrain", pre_cfg(), metrics=dict(knn_top1=71.5, final_loss=-0.8))
    make_run(root / "nocausal", "pretrain", pre_cfg(causal=False), metrics=dict(knn_top1=64.25))
    make_run(root / "nosg", "pretrain", pre_cfg(stop_grad=False), status="collapsed", reason="out_std 1e-6 < 1e-4",
             metrics=dict(knn_top1=20.0),
             scalars=[{"step": 1, "loss": -0.5, "cos": 0.5, "out_std": 0.1}, {"step": 2, "loss": "nan", "cos": 1.0}])
    make_run(root / "seg", "seg", dict(model=dict(backbone=dict(causal=False))), metrics={"mIoU": 30.0})
    return root


def test_core_table_csv_and_plots(core_runs, tmp_path):
    out = tmp_path / "out"
    summary, results = report.run_report([str(core_runs)], ["core"], out)
    rows = read_csv(out / "core.csv")
    assert list(rows) == ["full", "no_shift", "no_causal", "no_stop_grad"]
    assert rows["full"]["ours"] == "71.50" and rows["full"]["paper"] == "76.8" and rows["full"]["status"] == "ok"
    assert rows["full"]["metric"] == "knn_top1" and rows["full"]["run"].endswith("full")
    assert rows["no_causal"]["ours"] == "64.25" and rows["no_causal"]["agrees"] == "yes"  # lower, as in the paper
    assert rows["no_stop_grad"]["ours"] == "fail" and rows["no_stop_grad"]["status"] == "fail"
    assert "collapsed" in rows["no_stop_grad"]["reason"] and rows["no_stop_grad"]["agrees"] == "yes"
    assert rows["no_shift"]["ours"] == "" and rows["no_shift"]["status"] == "missing"
    assert rows["no_shift"]["paper"] == "fail" and rows["no_shift"]["agrees"] == ""
    for name in ("core_table.png", "core_curves.png", "core_health.png"):
        assert (out / name).stat().st_size > 5000, name
    page = summary.read_text()
    assert "![core_table](core_table.png)" in page and "| no stop-gradient | fail | fail |" in page


def test_finetune_run_inherits_its_pretraining_row(core_runs, tmp_path):
    """A cls run started from a pretraining run's checkpoint takes that run's row and outranks its k-NN proxy;
    a fine-tune of a collapsed pretraining is still 'fail'."""
    make_run(core_runs / "ft_full", "cls", dict(model=dict(backbone=dict(causal=False)),
                                                load_from=str(core_runs / "full" / "iter_3.pth")),
             metrics=dict(top1=88.0))
    make_run(core_runs / "ft_nosg", "cls", dict(load_from=str(core_runs / "nosg" / "iter_3.pth")),
             metrics=dict(top1=50.0))
    make_run(core_runs / "ft_orphan", "cls", dict(load_from=None), metrics=dict(top1=99.0))
    make_run(core_runs / "ft_moved", "cls", dict(model=dict(ckpt="/cluster/old/runs/nocausal/backbone.safetensors")),
             metrics=dict(top1=70.0))  # the tree was copied from a cluster: matched by the run's folder names
    runs = report.discover_runs([core_runs])
    cells = {c.row.name: c for c in report.build_cells(report.load_spec("core"), runs)}
    assert cells["full"].ours == 88.0 and cells["full"].metric == "top1" and cells["full"].run.path.name == "ft_full"
    assert cells["no_stop_grad"].status == "fail" and cells["no_stop_grad"].run.path.name == "ft_nosg"
    assert all(c.run is None or c.run.path.name != "ft_orphan" for c in cells.values())
    assert cells["no_causal"].run.path.name == "ft_moved" and cells["no_causal"].ours == 70.0


def test_failed_run_and_most_specific_row(tmp_path):
    """Imagenet table: a crashed run is 'fail'; a Large run goes to the Large row, not to the Base one."""
    root = tmp_path / "runs"
    make_run(root / "b", "cls", dict(model=dict(backbone=dict(causal=False))), metrics=dict(top1=83.1))
    make_run(root / "l", "cls", dict(model=dict(backbone=dict(causal=False, model_name="nepa_large_patch14_224"))), metrics=dict(top1=85.0))
    make_run(root / "b_causal", "cls", dict(model=dict(backbone=dict(causal=True, model_name="nepa_base_patch14_224"))), status="failed",
             reason="RuntimeError: boom")
    _, results = report.run_report([str(root)], ["imagenet"], tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "imagenet.csv")
    assert rows["nepa_b"]["ours"] == "83.10" and rows["nepa_l"]["ours"] == "85.00"
    assert rows["nepa_b_causal"]["ours"] == "fail" and "boom" in rows["nepa_b_causal"]["reason"]
    assert rows["nepa_l_causal"]["status"] == "missing"
    assert rows["mae_b"]["status"] == "reference" and rows["mae_b"]["paper"] == "83.6" and rows["mae_b"]["ours"] == ""
    assert rows["nepa_l"]["agrees"] == "yes"  # L above B in both
    assert (tmp_path / "out" / "imagenet_table.png").is_file()


def test_defaults_and_value_spelling(tmp_path):
    """A run without the key reads the spec's default; YAML 1.0e-5 equals a dumped 1e-05; None is null."""
    root = tmp_path / "runs"
    make_run(root / "none", "pretrain", pre_cfg(layerscale_init=None, pos_embed="abs", qk_norm=False, mlp_type="gelu"),
             metrics=dict(knn_top1=60.0))
    make_run(root / "ls", "pretrain", pre_cfg(layerscale_init=1e-5, pos_embed="abs", qk_norm=False),
             metrics=dict(knn_top1=59.0))  # mlp_type absent -> default gelu
    make_run(root / "running", "pretrain", pre_cfg(layerscale_init=1e-5, qk_norm=False), status="running")
    cells = {c.row.name: c for c in report.build_cells(report.load_spec("arch"), report.discover_runs([root]))}
    assert cells["none"].ours == 60.0 and cells["layerscale"].ours == 59.0
    assert cells["layerscale"].agrees == "yes"  # paper 77.4 < 78.2, ours 59 < 60
    assert cells["rope"].status == "running" and cells["all"].status == "missing"


def test_config_is_read_without_executing(tmp_path):
    p = tmp_path / "config.py"
    p.write_text("import os\nx = os.system('touch %s')\nmodel = dict(a=dict(b=-1e-05, c=(1, 2)), d=None)\n"
                 % (tmp_path / "pwned"))
    cfg = report.flatten(report.read_config(p))
    assert cfg["model.a.b"] == -1e-05 and cfg["model.a.c"] == [1, 2] and cfg["model.d"] is None
    assert not (tmp_path / "pwned").exists() and isinstance(cfg["x"], str)


def test_every_spec_loads_with_paper_values():
    names = report.list_tables()
    assert set(names) >= {"core", "masking", "arch", "layer_decay", "imagenet", "ade20k"}
    core = report.load_spec("core")
    assert {r.name: r.paper for r in core.rows} == {"full": 76.8, "no_shift": "fail", "no_causal": 73.6,
                                                    "no_stop_grad": "fail"}
    assert [r.paper for r in report.load_spec("masking").rows] == [78.2, 76.4, 75.7]
    assert [r.paper for r in report.load_spec("arch").rows] == [78.2, 77.4, 80.2, "fail", 81.1, 81.3]
    assert report.load_spec("layer_decay").row("linear_ramp").paper == 83.8
    assert report.load_spec("ade20k").row("nepa_l").paper == 54.0
    refs = {r.label: r.paper for r in report.load_spec("imagenet").rows if r.reference}
    assert refs["MAE (L)"] == 85.6 and refs["MoCo v3 (B)"] == 83.2 and len(refs) == 9
    for n in names:
        spec = report.load_spec(n)
        assert spec.baseline is None or not math.isnan(float(spec.row(spec.baseline).paper))


def test_cli_report(core_runs, tmp_path, capsys):
    out = tmp_path / "cli_out"
    assert cli_main(["report", "--runs", str(core_runs), "--table", "core", "--table", "ade20k", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"summary: {out / 'summary.md'}" in printed
    assert read_csv(out / "ade20k.csv")["nepa_b"]["ours"] == "30.00"
    assert not (out / "arch.csv").exists()


def test_one_metric_per_table(core_runs):
    """Only one row was fine-tuned: the table stays on the k-NN metric every row has, so directions compare."""
    make_run(core_runs / "ft_full", "cls", dict(model=dict(ckpt=str(core_runs / "full" / "backbone.safetensors"))),
             metrics=dict(top1=88.0))
    cells = {c.row.name: c for c in report.build_cells(report.load_spec("core"), report.discover_runs([core_runs]))}
    assert cells["full"].metric == cells["no_causal"].metric == "knn_top1" and cells["full"].ours == 71.5
    assert cells["no_causal"].agrees == "yes"


def test_a_live_run_with_a_half_written_line(core_runs):
    with open(core_runs / "full" / "scalars.jsonl", "a") as f:
        f.write('{"step": 4, "lo')
    assert [r["step"] for r in report.scalars_of(core_runs / "full")] == [1, 2, 3]
