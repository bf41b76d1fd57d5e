"""`nepa-eval bench backbone`: the table's rows are the models, modes and dtypes it names, and its ratio and
peak columns are computed from the times it prints (tiny sizes; no timing is asserted)."""
from __future__ import annotations

import argparse

import pytest

import nepa_eval.bench as bench


def parse(out: str) -> list[list[str]]:
    return [[c.strip() for c in ln.split("|")[1:-1]] for ln in out.splitlines()
            if ln.startswith("| ") and not ln.startswith("| mode") and not ln.startswith("| op")]


def test_backbone_table_compares_each_row_with_eva_in_its_mode_and_dtype(capsys, monkeypatch):
    monkeypatch.setattr(bench, "matmul_peak", lambda dev, dtype: 1e11 if dtype.itemsize == 4 else 4e11)
    monkeypatch.setattr(bench, "gemm_time", lambda dev, dtype, gemms: 0.002 if dtype.itemsize == 4 else 0.001)
    args = argparse.Namespace(device="cpu", batch_size=1, img_size=28, depth=1, warmup=0, iters=1, compile=False,
                              fp32_only=False, profile=False)
    rows = bench.BENCHES["backbone"](args)
    table = parse(capsys.readouterr().out)
    assert [(r[0], r[1], r[2]) for r in table] == [
        ("eager", d, m) for d in ("float32", "bf16") for m in ("timm eva-b", "nepa (causal)", "nepa (bidirectional)")]
    flops = bench.vit_train_flops(768, 1, 5, 2048, True, 1)
    for r, cells in zip(rows, table):
        ref = next(x for x in rows if x["mode"] == r["mode"] and x["dtype"] == r["dtype"] and x["model"] == "timm eva-b")
        assert r["speed"] == pytest.approx(ref["ms"] / r["ms"])
        assert r["peak"] == pytest.approx(flops / (r["ms"] / 1000) / (1e11 if r["dtype"] == "float32" else 4e11))
        assert cells[5] == f"{r['speed']:.2f}x" and cells[6] == f"{100 * r['peak']:.1f}%"
        assert float(cells[3]) == pytest.approx(1000 / r["ms"], rel=0.01)  # img/s of batch 1
        share = (2.0 if r["dtype"] == "float32" else 1.0) / r["ms"]  # the GEMMs' time over the row's
        assert r["gemm_share"] == pytest.approx(share) and cells[8] == f"{100 * share:.0f}%"


def test_eva_reference_has_our_architecture():
    """EVA-B of the bench: the same width, depth, heads, SwiGLU hidden, RoPE and LayerScale as our rows."""
    models = bench.backbone_models(depth=2, res=28)
    eva, ours = models["timm eva-b"](), models["nepa (causal)"]()
    assert len(eva.blocks) == len(ours.blocks) == 2 and eva.embed_dim == ours.embed_dim == 768
    assert eva.blocks[0].attn.num_heads == ours.blocks[0].attn.num_heads == 12
    assert eva.blocks[0].mlp.fc2.in_features == ours.blocks[0].mlp.fc2.in_features == 2048
    assert eva.rope is not None and ours.rope is not None
    assert float(eva.blocks[0].gamma_1[0]) == pytest.approx(float(ours.blocks[0].ls1.gamma[0])) == pytest.approx(1e-5)
    n_eva, n_ours = (sum(p.numel() for p in m.parameters()) for m in (eva, ours))
    assert abs(n_eva - n_ours) / n_ours < 0.01


def test_the_step_gemms_are_the_flops_the_peak_column_counts():
    """The GEMM list timed for the GEMM share holds exactly the matmul FLOPs of vit_train_flops (SwiGLU)."""
    for depth, tokens, batch in ((1, 5, 1), (12, 257, 4)):
        gemms = bench.vit_train_gemms(768, depth, tokens, 2048, 12, batch)
        assert sum(2 * c * b * m * k * n for c, b, m, k, n in gemms) == bench.vit_train_flops(
            768, depth, tokens, 2048, True, batch)
