"""torch.compile(fullgraph=True), torch.export and TorchScript give the eager numbers, for the backbone and the
pretraining objective (tiny sizes, float32, CPU)."""
import pytest
import torch

from backbones.nepa import NepaObjective, NepaViT
from conftest import tiny_kwargs

TOL = dict(atol=1e-5, rtol=1e-5)


def backbone(**kw) -> NepaViT:
    torch.manual_seed(0)
    m = NepaViT(**tiny_kwargs(**kw))
    with torch.no_grad():  # non-trivial LayerScale, so every branch shows in the output
        for n, p in m.named_parameters():
            if n.endswith("gamma"):
                p.uniform_(0.5, 1.0)
    return m


def objective(mask_ratio: float = 0.0, **kw) -> NepaObjective:
    return NepaObjective(backbone=backbone(**{"causal": True, **kw}), mask_ratio=mask_ratio)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("kw", [dict(num_classes=5), dict(pos_embed="rope+abs", pad_to_patch=True, mlp_type="swiglu")])
def test_compile_fullgraph_backbone(kw):
    m = backbone(**kw).eval()
    x = torch.randn(2, 3, 28, 35 if kw.get("pad_to_patch") else 28)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), m(x), **TOL)


def test_compile_fullgraph_objective_training_step():
    """The pretraining step as trained: train mode (RoPE coordinate rescale drawn per step), loss and gradients."""
    torch.manual_seed(0)
    eager = objective(rope_rescale=2.0).train()
    compiled = objective(rope_rescale=2.0).train()
    compiled.load_state_dict(eager.state_dict())
    step = torch.compile(compiled, fullgraph=True)
    x = torch.randn(2, 3, 28, 28)
    with torch._inductor.config.patch(fallback_random=True):  # the same random draws as eager
        torch.manual_seed(1)
        out_e = eager(x)
        torch.manual_seed(1)
        out_c = step(x)
    for k in ("loss", "h", "z"):
        torch.testing.assert_close(out_c[k], out_e[k], **TOL)
    out_e["loss"].backward()
    out_c["loss"].backward()
    for (n, pe), (_, pc) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, atol=1e-5, rtol=1e-4, msg=n)
    assert eager.backbone.patch_embed.proj.weight.grad.abs().sum() > 0


def test_export_backbone_and_objective():
    x = torch.randn(2, 3, 28, 28)
    m = backbone(num_classes=5).eval()
    ep = torch.export.export(m, (x,))
    x2 = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x2), m(x2), **TOL)
    obj = objective().eval()
    ep = torch.export.export(obj, (x,))
    with torch.no_grad():
        out, ref = ep.module()(x2), obj(x2)
    for k in ("loss", "h", "z"):
        torch.testing.assert_close(out[k], ref[k], **TOL)


def test_export_dynamic_batch_and_grid():
    """One exported program serves other batch sizes and image sizes (RoPE is computed from the grid)."""
    m = backbone().eval()
    batch, rows, cols = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("rows", min=1, max=32), \
        torch.export.Dim("cols", min=1, max=32)
    ep = torch.export.export(m, (torch.randn(2, 3, 28, 28),),
                             dynamic_shapes=({0: batch, 2: 7 * rows, 3: 7 * cols},))
    for shape in ((3, 3, 42, 21), (1, 3, 14, 56)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(ep.module()(x), m(x), **TOL)


def test_torchscript_backbone():
    m = backbone(num_classes=5, pos_embed="rope+abs", pad_to_patch=True).eval()
    x = torch.randn(2, 3, 30, 41)
    scripted = torch.jit.script(m)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), m(x), **TOL)
        torch.testing.assert_close(scripted.forward_features(x), m.forward_features(x), **TOL)
