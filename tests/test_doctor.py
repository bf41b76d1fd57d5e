"""`nepa-eval doctor`: every check passes here, and each is shown failing when the thing it checks is broken (a
missing compiled op, a wrong result on the device, an unwritable work directory, ...). `doctor --bench`'s table
arithmetic (MFU, per-token and speed ratios, verdicts) from given numbers."""
from __future__ import annotations

import argparse
import sys
from collections import namedtuple

import pytest
import torch

from conftest import needs_fashion
from nepa_eval import doctor
from nepa_eval.bench import cluster_rows, format_cluster, seg_tokens

CPU = [torch.device("cpu")]


def statuses(rows) -> set[str]:
    return {r.status for r in rows}


def test_versions_pass_here_and_fail_for_a_torchvision_of_another_torch(monkeypatch):
    rows = doctor.check_versions()
    assert statuses(rows) == {doctor.OK}, rows
    assert all(name in rows[0].result for name in doctor.PACKAGES)
    import importlib.metadata as md

    real = md.version
    monkeypatch.setattr(md, "version", lambda d: "0.1.0" if d == "torchvision" else real(d))
    rows = doctor.check_versions()
    assert rows[0].status == doctor.FAIL and "not the release for torch" in rows[0].result and rows[0].fix


def test_a_package_that_does_not_import_fails_the_versions_check(monkeypatch):
    monkeypatch.setitem(sys.modules, "mmseg", None)  # import mmseg raises ImportError
    rows = doctor.check_versions()
    assert rows[0].status == doctor.FAIL and "mmseg does not import" in rows[0].result


def test_mmcv_ops_pass_and_a_missing_compiled_op_fails(monkeypatch):
    assert statuses(doctor.check_mmcv_ops(CPU)) == {doctor.OK}
    monkeypatch.setitem(sys.modules, "mmcv._ext", None)  # as when the extension was not built
    rows = doctor.check_mmcv_ops(CPU)
    assert rows[0].status == doctor.FAIL and "compiled ops missing" in rows[0].result
    assert "rebuild mmcv" in rows[0].fix


def test_a_compiled_op_with_a_wrong_answer_fails(monkeypatch):
    import mmcv.ops

    real = mmcv.ops.nms
    monkeypatch.setattr(mmcv.ops, "nms", lambda b, s, iou_threshold: (None, torch.arange(len(s))))  # suppresses nothing
    rows = doctor.check_mmcv_ops(CPU)
    assert rows[0].status == doctor.FAIL and "expected [0, 2]" in rows[0].result
    monkeypatch.setattr(mmcv.ops, "nms", real)


def test_device_rows_name_the_cpu():
    rows = doctor.check_devices(CPU)
    assert rows[0].check == "device cpu" and "threads" in rows[0].result and "bf16 units" in rows[0].result


def test_sdpa_reports_the_backend_of_the_models_own_call():
    ch = doctor.sdpa_choices(torch.device("cpu"), img_size=56)
    from torch.nn.attention import SDPBackend

    names = {b.name.lower() for b in SDPBackend.__members__.values()}
    assert set(ch) == {"causal", "bidirectional"} and all(v in names for v in ch.values()), ch


def test_numerics_pass_and_a_wrong_device_result_fails(monkeypatch):
    rows = doctor.check_numerics(CPU, img_size=28)
    assert len(rows) == 4 and statuses(rows) == {doctor.OK}, rows
    import torch.nn.functional as F

    real_sdpa, real_run, calls = F.scaled_dot_product_attention, doctor.forward_backward, []

    def on_a_device_that_drops_the_causal_mask(model, x, dtype):  # per mode: the CPU reference, then the "device"
        calls.append(dtype)                                         # in float32 and in bf16
        if len(calls) % 3 == 1:
            return real_run(model, x, dtype)
        monkeypatch.setattr(F, "scaled_dot_product_attention",
                            lambda q, k, v, is_causal=False, **kw: real_sdpa(q, k, v, **kw))
        try:
            return real_run(model, x, dtype)
        finally:
            monkeypatch.setattr(F, "scaled_dot_product_attention", real_sdpa)

    monkeypatch.setattr(doctor, "forward_backward", on_a_device_that_drops_the_causal_mask)
    rows = doctor.check_numerics(CPU, img_size=28)
    bad = [r for r in rows if r.status == doctor.FAIL]
    assert [r.check for r in bad] == ["NEPA-T causal cpu float32", "NEPA-T causal cpu bf16"], rows
    assert "rel. error" in bad[0].result and bad[0].fix  # the bidirectional rows, unaffected, pass


def test_compile_fails_when_torch_compile_does(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("inductor: no working C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    rows = doctor.check_compile(torch.device("cpu"))
    assert rows[0].status == doctor.FAIL and "C++ compiler" in rows[0].result and "without --compile" in rows[0].fix


def test_distributed_gloo_init_passes_and_a_failing_init_fails(monkeypatch):
    import torch.distributed as dist

    assert statuses(doctor.check_distributed(torch.device("cpu"))) == {doctor.OK}
    assert not dist.is_initialized()

    def refuse(*a, **k):
        raise RuntimeError("Connection refused")

    monkeypatch.setattr(dist, "init_process_group", refuse)
    rows = doctor.check_distributed(torch.device("cpu"))
    assert rows[0].status == doctor.FAIL and rows[0].check == "distributed gloo" and "refused" in rows[0].result


def test_hugging_face_cache_and_offline_state(tmp_path, monkeypatch):
    from huggingface_hub import constants

    (tmp_path / "hub" / "models--SixAILab--nepa-base-patch14-224").mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    rows = doctor.check_hf()
    assert rows[0].status == doctor.OK and "SixAILab/nepa-base-patch14-224" in rows[0].result
    assert "offline" in rows[0].result and "writable" in rows[0].result
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "file" / "hub"))
    (tmp_path / "file").write_text("")  # the cache would be made under a regular file: not writable
    rows = doctor.check_hf()
    assert rows[0].status == doctor.WARN and "NOT writable" in rows[0].result and "HF_HOME" in rows[0].fix


def test_work_dir_writable_and_unwritable_and_full(tmp_path, monkeypatch):
    assert statuses(doctor.check_work_dir(str(tmp_path / "runs" / "new"))) <= {doctor.OK, doctor.WARN}
    (tmp_path / "afile").write_text("")
    rows = doctor.check_work_dir(str(tmp_path / "afile" / "runs"))  # below a regular file: nothing can be written
    assert rows[0].status == doctor.FAIL and "cannot write" in rows[0].result and "--work-dir" in rows[0].fix
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: Usage(10 * 2**30, 10 * 2**30 - 2**28, 2**28))
    rows = doctor.check_work_dir(str(tmp_path))
    assert rows[0].status == doctor.FAIL and "0.2 GiB free" in rows[0].result


def test_data_checks_reuse_the_runs_resolution(tmp_path):
    rows = doctor.check_data(str(tmp_path / "nowhere"), None)
    assert rows[0].status == doctor.FAIL and "nowhere" in rows[0].result
    rows = doctor.check_data(None, str(tmp_path))  # no ADE20K layout here
    assert rows[0].check == "seg data" and rows[0].status == doctor.FAIL and "ADEChallengeData2016" in rows[0].result


@needs_fashion
def test_data_checks_pass_on_good_data(tmp_path):
    from nepa_eval.data.fashion import make_mosaic

    rows = doctor.check_data("fashion_mnist", None)
    assert rows[0].status == doctor.OK and "splits train, test" in rows[0].result

    root = make_mosaic(tmp_path / "mosaic", n_train=4, n_val=2, seed=0).parent
    rows = doctor.check_data(None, str(root), "seg_configs/nepa/nepa-t_upernet_fashion-mosaic-56x56_cpu.py")
    assert rows[0].status == doctor.OK and "'training': 4" in rows[0].result


def test_main_prints_one_table_and_exits_1_on_a_failed_check(tmp_path, monkeypatch, capsys):
    """The whole command with its slow checks (numerics, compile) replaced by quick ones, so this stays fast; the
    unwritable work directory is the failure."""
    monkeypatch.setattr(doctor, "check_numerics", lambda devices: [doctor.Row("numerics", doctor.OK, "stub")])
    monkeypatch.setattr(doctor, "check_compile", lambda dev: [doctor.Row("compile", doctor.OK, "stub")])
    (tmp_path / "afile").write_text("")
    args = argparse.Namespace(device="cpu", work_dir=str(tmp_path / "afile" / "w"), data=None, data_root=None,
                              seg_config="", bench=False)
    assert doctor.main(args) == 1
    out = capsys.readouterr().out
    assert out.count("| check | result | fix |") == 1 and "1 failed" in out and "| work dir | FAIL" in out
    args.work_dir = str(tmp_path / "w")
    assert doctor.main(args) == 0


@pytest.mark.slow
def test_doctor_passes_on_this_machine(tmp_path, capsys):
    from nepa_eval.cli import main

    assert main(["doctor", "--work-dir", str(tmp_path)]) == 0, capsys.readouterr().out


def test_cluster_table_arithmetic():
    m = dict(device="cuda", peak=800e12, flops=4.0e14, batch=128,
             pretrain={"eager": 1.0, "compiled": 0.8},
             seg={"nepa": dict(sec=0.5, tokens=seg_tokens(512, 14, True), batch=8, peak=9000.0),
                  "mae": dict(sec=0.35, tokens=seg_tokens(512, 16, False), batch=8, peak=8000.0)},
             finetune={"nepa": 0.20, "timm": 0.19})
    assert (seg_tokens(512, 14, True), seg_tokens(512, 16, False), seg_tokens(64, 14, True)) == (1369, 1024, 25)
    rows = cluster_rows(m)
    eager, compiled, seg, ft = rows
    assert eager["value"] == pytest.approx(0.5) and eager["verdict"] == "met"  # 4e14 / 1 s / 8e14
    assert compiled["value"] == pytest.approx(0.625)
    assert "128.0 img/s" in eager["ours"] and "160.0 img/s" in compiled["ours"]
    # per token: 0.5 / (1369 * 8) against 0.35 / (1024 * 8) = 1.0686 -> within 1.1x
    assert seg["value"] == pytest.approx((0.5 / 1369) / (0.35 / 1024)) and seg["verdict"] == "met"
    assert "1.07x time/token, 1.12x memory" == seg["shown"]
    assert ft["value"] == pytest.approx(0.95) and ft["verdict"] == "not met"  # timm's 0.19 s / our 0.20 s
    m.update(pretrain={"eager": 1.25}, finetune={"nepa": 0.19, "timm": 0.19})
    eager, seg, ft = cluster_rows(m)
    assert eager["value"] == pytest.approx(0.4) and eager["verdict"] == "not met" and ft["verdict"] == "met"
    cpu = cluster_rows({**m, "device": "cpu"})
    assert {r["verdict"] for r in cpu} == {"n/a (CPU sizes)"}
    table = format_cluster(rows)
    assert "| MFU 50.0% | >= 50% | met |" in table and table.count("\n") == len(rows) + 1
