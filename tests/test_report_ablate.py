"""`nepa-eval ablate`: paper-scale configs and commands, and the tiny-scale orchestration (stages faked here)."""
import csv
import json
import shlex
import threading

import pytest
from mmengine.config import Config

from conftest import needs_fashion
from nepa_eval.cli import main as cli_main
from nepa_eval import ablate, records as lineage
from nepa_eval.engine import ROOT
from nepa_eval.report import read_manifest


def test_paper_scale_writes_loadable_configs_and_torchrun_commands(tmp_path):
    assert cli_main(["ablate", "core", "--scale", "paper", "--work-dir", str(tmp_path)]) == 0
    root = tmp_path / "paper" / "core"
    cfg = Config.fromfile(str(root / "configs" / "no_stop_grad_pretrain.py"))  # _base_ resolves to the release config
    assert cfg.model.stop_grad is False and cfg.model.shift is True
    # the paper's "50k-step" core table: 50,000 updates of 4 accumulated micro-batches (the release's batch 4096)
    assert cfg.train_cfg.max_iters == 200000 and cfg.optim_wrapper.accumulative_counts == 4
    from nepa_eval.hooks import config_recipe

    info = config_recipe(cfg, world_size=8)
    assert (info["updates"], info["micro_iterations"], info["effective_batch"]) == (50000, 200000, 4096)
    masking = tmp_path / "m"
    assert cli_main(["ablate", "masking", "--scale", "paper", "--work-dir", str(masking)]) == 0
    m_cfg = Config.fromfile(str(next((masking / "paper" / "masking" / "configs").glob("*_pretrain.py"))))
    assert config_recipe(m_cfg, world_size=8)["updates"] == 100000  # the masking and architecture tables: 100k
    assert cfg.model.backbone.embed_dim == 768  # the rest comes from cls_configs/pretrain/nepa_b_release.py
    lines = [l for l in (root / "commands.sh").read_text().splitlines() if l.startswith("$TORCHRUN")]
    assert len(lines) == 9  # 4 rows x (pretrain, fine-tune) + the random-init fine-tune (no raw pixels on ImageNet)
    scratch = shlex.split(lines[-1].replace("$TORCHRUN", "torchrun"))
    assert scratch[3] == "cls" and scratch[scratch.index("--ckpt") + 1] == "none"
    assert scratch[scratch.index("--work-dir") + 1] == str(root / "random_init" / "cls")
    ft = shlex.split(lines[1].replace("$TORCHRUN", "torchrun"))
    assert ft[:4] == ["torchrun", "-m", "nepa_eval.cli", "cls"] and "--launcher" in ft
    assert ft[ft.index("--ckpt") + 1] == str(root / "full" / "pretrain" / "backbone.safetensors")
    assert ft[ft.index("--work-dir") + 1] == str(root / "full" / "cls")
    # the manifest the report reads once the runs come back: one entry per command, lineage relative to it
    entries = {(e["row"], e["stage"]): e for e in read_manifest(root)}
    assert len(entries) == 9 and entries[("full", "cls")]["started_from"] == "full/pretrain"
    assert entries[("full", "cls")]["run_dir"] == "full/cls" and entries[("random_init", "cls")]["ckpt"] == "none"
    assert entries[("no_shift", "pretrain")]["started_from"] is None


def test_paper_scale_large_rows_and_required_ckpt(tmp_path):
    with pytest.raises(ValueError, match="--ckpt"):
        ablate.write_paper(ablate.load_spec("imagenet"), _args(tmp_path))
    script = ablate.write_paper(ablate.load_spec("imagenet"), _args(tmp_path, ckpt="nepa_b.pth"))
    text = script.read_text()
    assert text.count("$TORCHRUN") == 4 and "NEPA_L_CKPT" in text and "mae" not in text.lower().split("report")[0]
    cfg = Config.fromfile(str(script.parent / "configs" / "nepa_l_causal_cls.py"))
    assert cfg.model.backbone.causal is True and cfg.model.backbone.model_name == "nepa_large_patch14_224"


def _args(tmp_path, **kw):
    import argparse

    d = dict(work_dir=str(tmp_path), rows=None, ckpt=None, force=False, dry_run=False, quiet=True, out=None,
             cfg_options={})
    d.update(kw)
    return argparse.Namespace(**d)


def fake_stage(calls, statuses, keys_in_config=True):
    """Stands in for a `nepa-eval` process: writes the run directory that command would write, with its record of
    the checkpoint it started from. keys_in_config=False: a config.py without the row's --cfg-options."""
    def run(argv, run_dir, desc, quiet=False, threads=None, position=None):
        calls.append(argv)
        parts = [p for p in run_dir.parts[:-1] if not p.startswith("seed")]
        stage, row = argv[0], parts[-1]
        run_dir.mkdir(parents=True, exist_ok=True)
        opts = argv[argv.index("--cfg-options") + 1:] if "--cfg-options" in argv and keys_in_config else []
        cfg = Config(dict(work_dir=str(run_dir), model=dict(ckpt=argv[argv.index("--ckpt") + 1] if "--ckpt" in argv
                                                            else None)))
        cfg.merge_from_dict({k: eval(v) if v in ("True", "False", "None") else _num(v)
                             for k, v in (o.split("=", 1) for o in opts)})
        cfg.dump(str(run_dir / "config.py"))
        (run_dir / "scalars.jsonl").write_text(json.dumps({"step": 10, "loss": -0.5, "cos": 0.5}) + "\n")
        status = statuses.get(row, "ok")
        if stage == "pretrain":
            (run_dir / "backbone.safetensors").write_bytes(b"weights")
        metric = {"pretrain": "knn_top1", "cls": "top1", "seg": "mIoU", "pixels": "linear_top1"}[stage]
        seed = cfg.get("randomness", {}).get("seed", 0)
        ckpt = argv[argv.index("--ckpt") + 1] if "--ckpt" in argv else None
        (run_dir / "final_metrics.json").write_text(json.dumps({
            "task": stage, "status": status, metric: 50.0 + len(row) + seed, "run_id": lineage.new_run_id(),
            "started_from": lineage.started_from(None if ckpt == "none" else ckpt)}))
        return status
    return run


def _num(v):
    try:
        return float(v) if "." in v or "e" in v else int(v)
    except ValueError:
        return v


def test_tiny_scale_runs_rows_then_reports(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ablate, "run_stage", fake_stage(calls, {"no_stop_grad": "collapsed"}))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert cli_main(["ablate", "core", "--work-dir", "wd", "--out", str(out), "--quiet"]) == 0
    # tiny core, scored as the paper does: each pretraining then its fine-tune; a collapsed one is not fine-tuned;
    # the random-init row fine-tunes from scratch; the raw pixels are one run of their own
    assert [(c[0], c[c.index("--work-dir") + 1].split("/")[-2]) for c in calls] == [
        ("pretrain", "full"), ("cls", "full"), ("pretrain", "no_shift"), ("cls", "no_shift"),
        ("pretrain", "no_causal"), ("cls", "no_causal"), ("pretrain", "no_stop_grad"), ("cls", "random_init"),
        ("pixels", "raw_pixels")]
    assert calls[6][calls[6].index("--config") + 1] == "cls_configs/pretrain/nepa_tiny_fmnist.py"
    assert "model.stop_grad=False" in calls[6] and "default_hooks.knn.enabled=False" in calls[6]
    assert calls[1][calls[1].index("--ckpt") + 1] == "wd/tiny/core/full/pretrain/backbone.safetensors"
    assert calls[7][calls[7].index("--ckpt") + 1] == "none"
    assert calls[8][calls[8].index("--config") + 1] == "cls_configs/finetune/nepa-t_fmnist.py"
    rows = {r["row"]: r for r in csv.DictReader(open(out / "core.csv"))}
    assert (rows["no_stop_grad"]["ours"], rows["no_stop_grad"]["status"], rows["no_stop_grad"]["agrees"]) == (
        "fail", "fail", "yes")
    assert rows["full"]["metric"] == "top1" and rows["full"]["ours"] == "54.00"  # the fake: 50 + len(name)
    assert rows["random_init"]["ours"] == "61.00" and rows["random_init"]["agrees"] == "no"  # 61 > 54
    assert (out / "core_table.png").is_file() and (out / "summary.md").is_file()
    entries = {(e["row"], e["stage"]): e for e in read_manifest(tmp_path / "wd" / "tiny" / "core")}
    assert len(entries) == 10  # every planned run, the fine-tune of the collapsed pretraining too
    assert entries[("full", "cls")] == dict(table="core", row="full", seed=0, stage="cls", run_dir="full/cls",
                                            started_from="full/pretrain", scale="tiny",
                                            ckpt="wd/tiny/core/full/pretrain/backbone.safetensors")
    assert entries[("random_init", "cls")]["started_from"] is None and entries[("full", "pretrain")]["ckpt"] is None
    # a second call reuses the finished runs (a collapsed one too) and runs nothing
    assert cli_main(["ablate", "core", "--work-dir", "wd", "--out", str(out), "--quiet"]) == 0
    assert len(calls) == 9


def test_jobs_run_rows_side_by_side_on_a_share_of_the_cores(tmp_path, monkeypatch):
    """--jobs 2: two rows' stages are in flight at once (the fake waits for a second one), each child is told
    cores // 2 threads, a row's stages keep their order, and the table is the one the rows make in turn."""
    calls, threads = [], []
    fake = fake_stage(calls, {"no_stop_grad": "collapsed"})
    both = threading.Barrier(2, timeout=30)  # broken (the test fails) unless two stages run at the same time

    def run(argv, run_dir, desc, quiet=False, threads_=None, position=None):
        if argv[0] == "pretrain" and run_dir.parent.name in ("full", "no_shift"):  # the first two rows
            both.wait()
        threads.append(threads_)
        return fake(argv, run_dir, desc, quiet)

    monkeypatch.setattr(ablate, "run_stage", run)
    monkeypatch.setattr(ablate, "cpu_count", lambda: 4)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["ablate", "core", "--jobs", "2", "--work-dir", "wd", "--out", "out", "--quiet"]) == 0
    done = [(c[0], c[c.index("--work-dir") + 1].split("/")[-2]) for c in calls]
    assert sorted(done) == sorted([("pretrain", "full"), ("cls", "full"), ("pretrain", "no_shift"),
                                   ("cls", "no_shift"), ("pretrain", "no_causal"), ("cls", "no_causal"),
                                   ("pretrain", "no_stop_grad"), ("cls", "random_init"), ("pixels", "raw_pixels")])
    for row in ("full", "no_shift", "no_causal"):
        assert done.index(("pretrain", row)) < done.index(("cls", row))
    assert threads == [2] * len(calls)
    rows = {r["row"]: r for r in csv.DictReader(open(tmp_path / "out" / "core.csv"))}
    assert rows["full"]["ours"] == "54.00" and rows["no_stop_grad"]["status"] == "fail"


def test_seeds_run_every_row_n_times_and_the_table_averages(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ablate, "run_stage", fake_stage(calls, {}))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert cli_main(["ablate", "core", "--rows", "full,no_causal,raw_pixels", "--seeds", "3", "--work-dir", "wd",
                     "--out", str(out), "--quiet"]) == 0
    dirs = [c[c.index("--work-dir") + 1] for c in calls]
    assert dirs[:4] == ["wd/tiny/core/full/pretrain", "wd/tiny/core/full/cls", "wd/tiny/core/full/seed1/pretrain",
                        "wd/tiny/core/full/seed1/cls"]
    assert len(calls) == 2 * 2 * 3 + 1  # the pixels: once
    assert "randomness.seed=2" in calls[4] and "randomness.seed=2" in calls[5]
    assert not any("randomness.seed" in a for a in calls[0] + calls[1])  # seed 0: the configs' own
    rows = {r["row"]: r for r in csv.DictReader(open(out / "core.csv"))}
    assert (rows["full"]["ours"], rows["full"]["std"], rows["full"]["seeds"]) == ("55.00", "1.00", "3")
    assert rows["no_causal"]["ours"] == "60.00" and rows["no_causal"]["agrees"] == "no"  # 60 ± 1 vs 55 ± 1


def test_tiny_scale_finetune_tables_pretrain_once_and_chain(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ablate, "run_stage", fake_stage(calls, {}))
    monkeypatch.chdir(tmp_path)
    root = ablate.run_tiny(ablate.load_spec("layer_decay"), _args("wd"))
    assert [c[0] for c in calls] == ["pretrain", "cls", "cls", "cls"]
    shared = str(tmp_path / "wd" / "tiny" / "_pretrain" / "backbone.safetensors")
    assert all(str(tmp_path / c[c.index("--ckpt") + 1]) == shared for c in calls[1:])
    assert ("optim_wrapper.paramwise_cfg.layer_decay_ramp=linear" in calls[2]
            and "optim_wrapper.paramwise_cfg.layer_decay_rate_end=1.0" in calls[2])
    ablate.run_tiny(ablate.load_spec("imagenet"), _args("wd"))
    assert [c[0] for c in calls[4:]] == ["cls", "cls"]  # shared pretraining reused; no Large rows at tiny scale
    assert root == ablate.Path("wd") / "tiny" / "layer_decay"


def test_scale_settings_name_existing_configs():
    from nepa_eval.report import list_tables

    for table in list_tables():
        spec = ablate.load_spec(table)
        for scale in ("tiny", "paper"):
            for stage in ablate.stages_to_run(spec, scale):
                s = ablate.stage_setting(spec, scale, stage)
                for key in ("config", "large"):
                    if key in s:
                        assert (ROOT / s[key]).is_file(), (table, scale, stage, s[key])


def test_a_run_made_by_another_command_is_redone(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ablate, "run_stage", fake_stage(calls, {}))
    monkeypatch.chdir(tmp_path)
    ablate.run_tiny(ablate.load_spec("core"), _args("wd", rows="full"))
    ablate.run_tiny(ablate.load_spec("core"), _args("wd", rows="full"))
    assert len(calls) == 2  # pretraining and fine-tune, once
    ablate.run_tiny(ablate.load_spec("core"), _args("wd", rows="full", cfg_options={"pretrain:train_cfg.max_iters": 50}))
    # a stage-scoped option (the pretraining's only); the fine-tune is redone: its checkpoint is newer than it
    assert len(calls) == 4 and "train_cfg.max_iters=50" in calls[2]
    assert not any("max_iters" in a for a in calls[3]) and calls[3][0] == "cls"
    with pytest.raises(ValueError, match="'pretrian' is not a stage"):
        ablate.run_tiny(ablate.load_spec("core"), _args("wd", rows="full", cfg_options={"pretrian:x": 1}))


def test_the_report_takes_rows_from_the_manifest_and_lineage_from_the_records(tmp_path, monkeypatch):
    """Run configs without the row keys (so no key could place them): the manifest still puts every run in its
    row; the tree copied elsewhere reports the same table (run_dir paths are relative, lineage goes by run_id)."""
    import shutil

    from nepa_eval.report import build_cells, discover_runs

    calls = []
    monkeypatch.setattr(ablate, "run_stage", fake_stage(calls, {"no_stop_grad": "collapsed"}, keys_in_config=False))
    monkeypatch.chdir(tmp_path)
    root = ablate.run_tiny(ablate.load_spec("core"), _args("wd"))
    spec = ablate.load_spec("core")
    for where in (root, shutil.copytree(root, tmp_path / "copy")):
        runs = discover_runs([str(where)])
        cells = {c.row.name: c for c in build_cells(spec, runs)}
        assert {n: (c.status, c.ours_text) for n, c in cells.items()} == {
            "full": ("ok", "54.00"), "no_shift": ("ok", "58.00"), "no_causal": ("ok", "59.00"),
            "no_stop_grad": ("fail", "fail"), "random_init": ("ok", "61.00"), "raw_pixels": ("ok", "60.00")}
        ft = next(r for r in runs if r.path.parts[-2:] == ("no_causal", "cls"))
        assert ft.parent is not None and ft.parent.path.parts[-2:] == ("no_causal", "pretrain")
        assert ft.rows("core") == ["no_causal"] and ft.rows("imagenet") is None
        assert str(where) in str(ft.path)
    one = discover_runs([str(root / "no_causal" / "cls")])  # one run folder given: its table's manifest is above it
    assert len(one) == 1 and one[0].rows("core") == ["no_causal"]


@pytest.mark.slow
@needs_fashion
def test_tiny_core_row_end_to_end(tmp_path, monkeypatch):
    """A real (short) pretraining and its fine-tune through `nepa-eval ablate`: the fine-tuned top-1 in the table,
    the k-NN of the pretrained backbone in its column; then reused, not rerun."""
    monkeypatch.chdir(tmp_path)
    argv = ["ablate", "core", "--rows", "full", "--work-dir", "wd", "--out", "out", "--quiet", "--cfg-options",
            "pretrain:train_cfg.max_iters=30", "train_dataloader.dataset.limit=512"]  # (limit: every stage's)
    assert cli_main(argv) == 0
    rows = {r["row"]: r for r in csv.DictReader(open(tmp_path / "out" / "core.csv"))}
    full = rows["full"]
    assert full["status"] == "ok" and full["metric"] == "top1" and full["scale"] == "tiny"
    assert 10.0 < float(full["ours"]) <= 100.0 and 10.0 < float(full["knn"]) <= 100.0
    assert rows["no_shift"]["status"] == "missing"
    run = tmp_path / "wd" / "tiny" / "core" / "full" / "cls"
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["steps"] == 6 * (512 // 64) and final["init_knn_top1"] == pytest.approx(float(full["knn"]), abs=5e-3)
    mtime = (run / "final_metrics.json").stat().st_mtime
    assert cli_main(argv) == 0 and (run / "final_metrics.json").stat().st_mtime == mtime


def test_a_command_that_dies_early_is_a_failed_run(tmp_path, monkeypatch):
    """A stage that exits before writing its run directory (bad arguments) shows as 'fail' with its error."""
    monkeypatch.chdir(tmp_path)
    status = ablate.run_stage(["seg", "--config", "no_such_config.py", "--work-dir", "wd/x"], tmp_path / "wd" / "x",
                              "bad", quiet=True)
    assert status == "failed"
    final = json.loads((tmp_path / "wd" / "x" / "final_metrics.json").read_text())
    assert final["task"] == "seg" and final["status"] == "failed" and "no_such_config" in final["reason"]


@pytest.mark.parametrize("flag", ["--jobs", "--seeds"])
def test_jobs_and_seeds_below_one_are_refused(flag, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["ablate", "core", flag, "0", "--dry-run"])
    assert e.value.code == 2 and f"argument {flag}: '0' is not a whole number of at least 1" in capsys.readouterr().err
