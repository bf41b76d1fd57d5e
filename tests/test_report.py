"""`nepa-eval report`: tables rebuilt from small run directories made here (ok, collapsed, crashed and missing runs)."""
import csv
import json
import math

from pathlib import Path

import pytest
from mmengine.config import Config

from nepa_eval import records as lineage, report
from nepa_eval.cli import main as cli_main


def make_run(path, task, config, status="ok", metrics=None, scalars=None, reason="", started_from=...):
    """A run directory in the engine's format: config.py (mmengine dump), scalars.jsonl, final_metrics.json with the
    run's record of what it started from, as RunRecordHook writes it (`lineage.started_from` of the checkpoint its
    config names: a file a run directory holds gives that run's run_dir and run_id). `started_from`: a record to
    write instead (a tree copied from elsewhere)."""
    path.mkdir(parents=True)
    cfg = Config(dict(config, work_dir=str(path)))
    cfg.dump(str(path / "config.py"))
    with open(path / "scalars.jsonl", "w") as f:
        for rec in scalars or [{"step": s, "loss": -0.1 * s, "cos": 0.1 * s, "out_std": 1.0 / s} for s in (1, 2, 3)]:
            f.write(json.dumps(rec) + "\n")
    if started_from is ...:
        given, ema = lineage.checkpoint_of(cfg)
        if given is not None and Path(given).parent.is_dir() and not Path(given).exists():
            Path(given).write_bytes(b"weights")  # the checkpoint the parent run left
        started_from = lineage.started_from(given, ema)
    final = dict(task=task, status=status, reason=reason, steps=3, run_id=lineage.new_run_id(),
                 started_from=started_from, **(metrics or {}))
    (path / "final_metrics.json").write_text(json.dumps(final))
    return path


def run_id(path):
    return json.loads((path / "final_metrics.json").read_text())["run_id"]


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
    make_run(root / "seg", "seg", dict(model=dict(backbone=dict(causal=False))), metrics={"mIoU": 30.0},
             started_from=dict(given="SixAILab/nepa-base-patch14-224"))  # the release's backbone, not one of these
    return root


def test_core_table_csv_and_plots(core_runs, tmp_path):
    out = tmp_path / "out"
    summary, results = report.run_report([str(core_runs)], ["core"], out)
    rows = read_csv(out / "core.csv")
    assert list(rows) == ["full", "no_shift", "no_causal", "no_stop_grad", "random_init", "raw_pixels"]
    assert rows["random_init"]["status"] == rows["raw_pixels"]["status"] == "missing"
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
    make_run(core_runs / "ft_orphan", "cls", dict(model=dict(ckpt=str(tmp_path / "elsewhere.pth"))),
             metrics=dict(top1=99.0))  # from a checkpoint no run here wrote
    make_run(core_runs / "ft_moved", "cls", dict(model=dict(ckpt="/cluster/old/runs/nocausal/backbone.safetensors")),
             metrics=dict(top1=70.0), started_from=dict(given="/cluster/old/runs/nocausal/backbone.safetensors",
                                                        run_dir="/cluster/old/runs/nocausal",
                                                        run_id=run_id(core_runs / "nocausal")))
    # (the tree was copied from a cluster: linked by the run_id the fine-tune recorded there)
    make_run(core_runs / "ft_guess", "cls", dict(model=dict(ckpt=str(core_runs / "full" / "backbone.safetensors"))),
             metrics=dict(top1=99.5), started_from=None)  # recorded as random init: no path in its config counts
    runs = report.discover_runs([core_runs])
    cells = {c.row.name: c for c in report.build_cells(report.load_spec("core"), runs)}
    assert cells["full"].ours == 88.0 and cells["full"].metric == "top1" and cells["full"].run.path.name == "ft_full"
    assert cells["no_stop_grad"].status == "fail" and cells["no_stop_grad"].run.path.name == "ft_nosg"
    assert all(c.run is None or c.run.path.name != "ft_orphan" for c in cells.values())
    assert cells["no_causal"].run.path.name == "ft_moved" and cells["no_causal"].ours == 70.0
    assert cells["random_init"].run.path.name == "ft_guess"
    full = next(r for r in runs if r.path.name == "ft_full")
    assert full.final["started_from"]["run_dir"] == str((core_runs / "full").resolve())
    assert len(full.final["started_from"]["sha256"]) == 64


def test_failed_run_and_most_specific_row(tmp_path):
    """Imagenet table: a crashed run is 'fail'; a Large run goes to the Large row, not to the Base one."""
    root = tmp_path / "runs"
    make_run(root / "b", "cls", dict(model=dict(ckpt="nepa_b.pth", backbone=dict(causal=False))), metrics=dict(top1=83.1))
    make_run(root / "l", "cls", dict(model=dict(ckpt="nepa_l.pth", backbone=dict(causal=False, model_name="nepa_large_patch14_224"))), metrics=dict(top1=85.0))
    make_run(root / "b_causal", "cls", dict(model=dict(ckpt="nepa_b.pth", backbone=dict(causal=True, model_name="nepa_base_patch14_224"))), status="failed",
             reason="RuntimeError: boom")  # (fine-tunes of pretrained checkpoints that are not among these runs)
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


def test_a_run_config_is_read_by_mmengine_without_its_custom_imports(tmp_path):
    """config.py as mmengine dumps it, read back by mmengine's Config; the modules it names in custom_imports (a
    run of another code version may name ones this checkout lacks) are not imported."""
    p = tmp_path / "config.py"
    Config(dict(model=dict(a=dict(b=-1e-05, c=(1, 2)), d=None), custom_imports=dict(imports=["no_such_module_x"]),
                custom_hooks=[dict(type="EMAHook")])).dump(str(p))
    cfg = report.flatten(report.read_config(p))
    assert cfg["model.a.b"] == -1e-05 and list(cfg["model.a.c"]) == [1, 2] and cfg["model.d"] is None
    assert report.read_config(p)["custom_hooks"][0]["type"] == "EMAHook"
    assert cfg["custom_imports.imports"] == ["no_such_module_x"]


def test_every_spec_loads_with_paper_values():
    names = report.list_tables()
    assert set(names) >= {"core", "masking", "arch", "layer_decay", "imagenet", "ade20k"}
    core = report.load_spec("core")
    assert {r.name: r.paper for r in core.rows} == {"full": 76.8, "no_shift": "fail", "no_causal": 73.6,
                                                    "no_stop_grad": "fail", "random_init": None, "raw_pixels": None}
    assert [r.paper for r in report.load_spec("masking").rows] == [78.2, 76.4, 75.7, None, None]
    assert [r.paper for r in report.load_spec("arch").rows] == [78.2, 77.4, 80.2, "fail", 81.1, 81.3, None, None]
    for n in ("core", "masking", "arch"):  # every pretraining table: a random-init and a raw-pixel reference row
        spec = report.load_spec(n)
        assert [(r.init, r.task, r.expect) for r in spec.rows[-2:]] == [("random", None, "below"),
                                                                         ("pretrained", "pixels", "below")]
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


# ----------------------------------------------------------------------------------------------
# every table from small run directories: random-init and raw-pixel rows, a collapsed, a trivial and a missing run
# ----------------------------------------------------------------------------------------------
def _config(stage_keys, scale, ckpt=None, seed=0):
    cfg = Config(dict(run_scale=scale, randomness=dict(seed=seed), model=dict(ckpt=ckpt)))
    cfg.merge_from_dict(dict(stage_keys))
    return cfg.to_dict()


def build_table_runs(spec, root, seeds=(0,)):
    """Runs for every row of `spec` the way ablate lays them out. Of the pretrained rows, the first (the baseline)
    is ok, the second gets a collapsed run, the third a trivial one, the fourth none at all (missing), the rest are
    ok; ok values are 60 + row index (+ the seed), the random-init row 55 and the raw pixels 50 (their k-NN 40).
    Tables with fewer rows have no missing row: their raw-pixel row is left without a run instead."""
    first, *later = spec.stage_names
    expected, n = {}, 0
    pretrained = [r for r in spec.rows if not r.reference and r.task is None and r.init != "random"]
    for i, row in enumerate(spec.rows):
        if row.reference:
            continue
        scale = row.scale or "tiny"
        if row.task == "pixels" and len(pretrained) < 4:
            expected[row.name] = ("missing", "")
            continue
        if row.task == "pixels":
            make_run(root / row.name / "pixels", "pixels", _config({}, scale),
                     metrics=dict(linear_top1=50.0, knn_top1=40.0))
            expected[row.name] = ("ok", "50.00")
            continue
        if row.init == "random":
            for seed in seeds:
                for stage in [s for s in spec.stage_names if s != "pretrain"]:  # ablate.row_stages
                    make_run(root / row.name / f"s{seed}" / stage, stage, _config(row.keys.get(stage, {}), scale, seed=seed),
                             metrics={spec.stages[stage]["metric"]: 55.0 + seed, "ckpt": None, "init_knn_top1": 30.0})
            expected[row.name] = ("ok", f"{55.0 + sum(seeds) / len(seeds):.2f}")
            continue
        n += 1
        if n == 4:
            expected[row.name] = ("missing", "")
            continue
        status = {2: "collapsed", 3: "trivial"}.get(n, "ok")
        for seed in seeds:
            pre_keys = {**spec.defaults.get("pretrain", {}), **row.keys.get("pretrain", {}), **row.match.get("pretrain", {})}
            pre = make_run(root / row.name / f"s{seed}" / "pretrain", "pretrain", _config(pre_keys, scale, seed=seed),
                           status=status if first == "pretrain" else "ok", reason=status,
                           metrics=dict(knn_top1=20.0 + i))
            parent = pre
            for stage in ([] if first == "pretrain" and status != "ok" else later if first == "pretrain" else
                          spec.stage_names):
                keys = {**row.keys.get(stage, {}), **row.match.get(stage, {})}
                parent = make_run(root / row.name / f"s{seed}" / stage, stage,
                                  _config(keys, scale, ckpt=str(parent / "backbone.safetensors"), seed=seed),
                                  status=status if first != "pretrain" else "ok",
                                  metrics={spec.stages[stage]["metric"]: 60.0 + i + seed, "init_knn_top1": 30.0 + i})
        expected[row.name] = (("fail", "fail") if status != "ok" else
                              ("ok", f"{60.0 + i + sum(seeds) / len(seeds):.2f}"))
    return expected


@pytest.mark.parametrize("table", report.list_tables())
def test_every_table_from_small_runs(table, tmp_path):
    spec = report.load_spec(table)
    expected = build_table_runs(spec, tmp_path / "runs")
    cells = report.build_cells(spec, report.discover_runs([str(tmp_path / "runs")]))
    rows = read_csv(report.write_csv(spec, cells, tmp_path / "out"))  # (the plots: test_core_table_csv_and_plots)
    assert {name: (rows[name]["status"], rows[name]["ours"]) for name in expected} == expected
    for name, (status, _) in expected.items():
        if status == "fail":
            assert rows[name]["reason"].split()[1].rstrip(":") in ("collapsed", "trivial"), rows[name]
    for r in spec.rows:  # tiny runs never land in a paper-scale row, nor a paper run in a tiny one
        if r.name in expected and expected[r.name][0] == "ok":
            assert rows[r.name]["scale"] == (r.scale or "tiny")
        if r.reference:
            assert rows[r.name]["status"] == "reference" and rows[r.name]["scale"] == "paper"


def test_core_columns_directions_and_seeds(tmp_path):
    """Core with 3 seeds: mean ± std, the k-NN column, random init below full, pixels below random init."""
    spec = report.load_spec("core")
    build_table_runs(spec, tmp_path / "runs", seeds=(0, 1, 2))
    cells = {c.row.name: c for c in report.build_cells(spec, report.discover_runs([str(tmp_path / "runs")]))}
    full, rnd, pix = cells["full"], cells["random_init"], cells["raw_pixels"]
    assert full.metric == "top1" and full.seeds == 3 and math.isclose(full.ours, 61.0)
    assert math.isclose(full.std, 1.0) and full.extras["knn"] == 30.0  # init_knn_top1 of the fine-tunes
    assert rnd.seeds == 3 and math.isclose(rnd.ours, 56.0) and rnd.extras["knn"] == 30.0
    assert rnd.agrees == "yes"  # 61 - 56 = 5 > 1 + 1 (the two spreads)
    assert pix.ours == 50.0 and pix.extras["knn"] == 40.0 and pix.agrees == "yes"  # below random init
    assert cells["no_stop_grad"].status == "missing"  # the builder's fourth row
    assert cells["no_shift"].reason.startswith("3 of 3 seeds failed; pretrain collapsed")
    assert cells["no_causal"].status == "fail" and cells["no_causal"].agrees == "no"  # trivial; the paper: 73.6
    page = report.markdown_table(list(cells.values()), spec.columns)
    assert "| 61.00 ± 1.00 (3 seeds) | 30.00 | top1 | tiny |" in page


def test_within_the_spread_is_not_a_direction(tmp_path):
    spec = report.load_spec("core")
    root = tmp_path / "runs"
    for seed, (a, b) in enumerate([(60.0, 59.0), (62.0, 61.5), (58.0, 60.0)]):  # means 60.0 vs 60.17, stds 2 / 1.26
        pre = make_run(root / f"full{seed}" / "pretrain", "pretrain", _config(pre_cfg(), "tiny", seed=seed))
        make_run(root / f"full{seed}" / "cls", "cls", _config({}, "tiny", ckpt=str(pre), seed=seed), metrics=dict(top1=a))
        pre = make_run(root / f"nc{seed}" / "pretrain", "pretrain", _config(pre_cfg(causal=False), "tiny", seed=seed))
        make_run(root / f"nc{seed}" / "cls", "cls", _config({}, "tiny", ckpt=str(pre), seed=seed), metrics=dict(top1=b))
    cells = {c.row.name: c for c in report.build_cells(spec, report.discover_runs([str(root)]))}
    assert cells["no_causal"].seeds == 3 and cells["no_causal"].agrees == "within spread"
    one = {c.row.name: c for c in report.build_cells(spec, report.discover_runs(
        [str(root / "full0"), str(root / "nc0")]))}
    assert one["no_causal"].agrees == "yes" and one["no_causal"].std is None  # one seed: 59 < 60, no spread


def test_a_from_scratch_finetune_is_only_the_random_init_row(tmp_path):
    """A fine-tune without a checkpoint never fills a pretrained row, and a pretrained one never the random-init
    row; imagenet's tiny row takes only runs whose pretraining is the default objective."""
    root = tmp_path / "runs"
    make_run(root / "scratch" / "cls", "cls", _config({}, "tiny"), metrics=dict(top1=70.0, ckpt="random-init"))
    pre = make_run(root / "nc" / "pretrain", "pretrain", _config(pre_cfg(causal=False), "tiny"))
    make_run(root / "nc" / "cls", "cls", _config({}, "tiny", ckpt=str(pre)), metrics=dict(top1=65.0))
    runs = report.discover_runs([str(root)])
    core = {c.row.name: c for c in report.build_cells(report.load_spec("core"), runs)}
    assert core["random_init"].ours == 70.0 and core["no_causal"].ours == 65.0 and core["full"].status == "missing"
    imagenet = {c.row.name: c for c in report.build_cells(report.load_spec("imagenet"), runs)}
    assert imagenet["nepa_t"].status == "missing" and imagenet["nepa_b"].status == "missing"


def test_a_preempted_run_is_unfinished_not_a_result(tmp_path):
    """A run stopped by SIGTERM (status preempted, resumable) counts as running: never the row's value, and a
    finished run of the same row wins over it even when the preempted one is newer."""
    root = tmp_path / "runs"
    make_run(root / "cut", "pretrain", pre_cfg(), status="preempted", metrics=dict(knn_top1=50.0))
    cells = {c.row.name: c for c in report.build_cells(report.load_spec("core"), report.discover_runs([root]))}
    assert cells["full"].status == "running" and cells["full"].ours is None
    make_run(root / "done", "pretrain", pre_cfg(), metrics=dict(knn_top1=71.5))
    import os

    os.utime(root / "cut" / "final_metrics.json")  # the preempted run is the newer one
    cells = {c.row.name: c for c in report.build_cells(report.load_spec("core"), report.discover_runs([root]))}
    assert cells["full"].ours == 71.5 and cells["full"].run.path.name == "done"
