"""Architecture switches do what they should."""
import math

import pytest
import torch

from backbones.nepa import NepaConfig, NepaObjective, NepaViT, nepa_loss, nepa_vit
from backbones.nepa.model import Rope2D, apply_rope
from conftest import tiny_kwargs


def make(**kw):
    torch.manual_seed(0)
    m = NepaViT(**tiny_kwargs(**kw)).eval()
    # random LayerScale and norms, so every branch matters in the comparisons
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("gamma"):
                p.uniform_(0.5, 1.0)
    return m


def test_causal_outputs_ignore_later_patches():
    m = make(causal=True)
    x = torch.randn(1, 3, 28, 28)
    x2 = x.clone()
    x2[..., 21:, 21:] += 1.0  # only the last patch (index 15) changes
    a, b = m.forward_features(x), m.forward_features(x2)
    # token t = 1 + patch index; every token before the last patch's is unchanged
    torch.testing.assert_close(a[:, :16], b[:, :16])
    assert (a[:, 16] - b[:, 16]).abs().max() > 1e-3


def test_bidirectional_outputs_see_later_patches():
    m = make(causal=False)
    x = torch.randn(1, 3, 28, 28)
    x2 = x.clone()
    x2[..., 21:, 21:] += 1.0
    assert (m.forward_features(x)[:, :16] - m.forward_features(x2)[:, :16]).abs().max() > 1e-3


def test_causal_switch_at_run_time():
    m = make(causal=True)
    x = torch.randn(2, 3, 28, 28)
    c = m.forward_features(x)
    m.set_causal(False)
    b = m.forward_features(x)
    assert (c - b).abs().max() > 1e-3
    torch.testing.assert_close(m.forward_features(x, causal=True), c)


def test_sdpa_matches_explicit_attention():
    m = make(causal=True)
    blk = m.blocks[0]
    x = torch.randn(2, 17, 32)
    rope = m.rope((4, 4), x.device, num_prefix=1)
    fast = blk.attn(x, rope, True)
    probs = blk.attn.attention_probs(x, rope, True)
    q, k, v = blk.attn.qkv(x).view(2, 17, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
    slow = blk.attn.proj((probs @ v).transpose(1, 2).reshape(2, 17, 32))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert torch.all(probs[..., 0, 1:] == 0)  # cls sees only itself


@pytest.mark.parametrize("size", [(28, 28), (42, 56), (70, 14), (14, 14)])
def test_any_resolution(size):
    m = make()
    out = m.forward_features(torch.randn(2, 3, *size))
    assert out.shape == (2, 1 + (size[0] // 7) * (size[1] // 7), 32)


def test_non_multiple_input_is_an_error_or_padded():
    with pytest.raises(ValueError, match="not a multiple of the patch size 7"):
        make()(torch.randn(1, 3, 30, 28))
    padded = make(pad_to_patch=True).forward_features(torch.randn(1, 3, 30, 29))
    assert padded.shape == (1, 1 + 5 * 5, 32)  # 30 -> 35, 29 -> 35: nothing cropped


def test_wrong_channels_is_an_error():
    with pytest.raises(ValueError, match="3 input channels"):
        make()(torch.randn(1, 1, 28, 28))


def test_rope_matches_formula():
    r = Rope2D(head_dim=16, theta=100.0)
    cos, sin = r((2, 3), torch.device("cpu"), num_prefix=1)
    assert cos.shape == (7, 16)
    inv = 1 / 100.0 ** (torch.arange(4) / 4)
    y = 2 * (0.5 / 2) - 1  # first row centre
    x = 2 * (1.5 / 3) - 1  # second column centre
    expect = torch.cat([2 * math.pi * y * inv, 2 * math.pi * x * inv]).repeat(2)
    torch.testing.assert_close(cos[2], expect.cos())
    # rotation keeps the norm and leaves the prefix token alone; it equals q*cos + rotate_half(q)*sin
    q = torch.randn(1, 1, 7, 16)
    out = apply_rope(q, cos, sin)
    rot = torch.cat((-q[..., 8:], q[..., :8]), -1)
    s = torch.cat([2 * math.pi * y * inv, 2 * math.pi * x * inv]).repeat(2).sin()
    torch.testing.assert_close(out[0, 0, 2], q[0, 0, 2] * expect.cos() + rot[0, 0, 2] * s)
    torch.testing.assert_close(out[:, :, 0], q[:, :, 0])
    torch.testing.assert_close(out.norm(dim=-1), q.norm(dim=-1))


def test_rope_rescale_only_in_training():
    r = Rope2D(head_dim=16, rescale=2.0)
    r.eval()
    a = r((4, 4), torch.device("cpu"))[0]
    torch.testing.assert_close(a, r((4, 4), torch.device("cpu"))[0])
    r.train()
    torch.manual_seed(0)
    b = r((4, 4), torch.device("cpu"))[0]
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("pos", ["rope", "abs", "rope+abs", "none"])
def test_position_encodings(pos):
    m = make(pos_embed=pos)
    assert (m.pos_embed is not None) == ("abs" in pos)
    assert (m.rope is not None) == ("rope" in pos)
    x = torch.randn(1, 3, 28, 28)
    assert m.forward_features(x).shape == (1, 17, 32)
    if "abs" in pos:  # interpolated to other grids
        assert m.forward_features(torch.randn(1, 3, 42, 56)).shape == (1, 1 + 6 * 8, 32)
    if pos == "none":  # no positions and bidirectional: patch order does not matter (permutation equivariant)
        m.set_causal(False)
        xs = x.reshape(1, 3, 4, 7, 4, 7)
        flipped = xs.flip(2).reshape(1, 3, 28, 28)
        a, b = m.forward_features(x), m.forward_features(flipped)
        torch.testing.assert_close(a[:, 1:].sort(1).values, b[:, 1:].sort(1).values, atol=1e-5, rtol=1e-5)


def test_switches_change_structure():
    assert isinstance(make(mlp_type="swiglu").blocks[0].mlp.fc1, torch.nn.Linear)
    assert make(mlp_type="swiglu").blocks[0].mlp.fc1.out_features == 128
    assert make(mlp_type="swiglu", mlp_hidden=48).blocks[0].mlp.fc2.in_features == 48
    assert not hasattr(make(layerscale_init=None).blocks[0].ls1, "gamma")
    assert NepaViT(**tiny_kwargs(layerscale_init=0.1)).blocks[0].ls1.gamma[0].item() == pytest.approx(0.1)
    assert isinstance(make(qk_norm=False).blocks[0].attn.q_norm, torch.nn.Identity)
    assert make(qk_norm_affine=False).blocks[0].attn.q_norm.weight is None
    assert make(class_token=False).forward_features(torch.randn(1, 3, 28, 28)).shape == (1, 16, 32)
    assert isinstance(make(final_norm=False).norm, torch.nn.Identity)
    m = make(drop_path_rate=0.2)
    assert m.blocks[0].drop_path.p == 0 and m.blocks[-1].drop_path.p == pytest.approx(0.2)


def test_drop_path_is_per_sample_in_training_only():
    m = make(drop_path_rate=0.9, layerscale_init=1.0).train()
    torch.manual_seed(1)
    x = torch.randn(8, 3, 28, 28)
    a = m.forward_features(x)
    m.eval()
    b1, b2 = m.forward_features(x), m.forward_features(x)
    torch.testing.assert_close(b1, b2)
    assert (a - b1).abs().max() > 1e-3


def test_sizes():
    for size, (d, depth, heads) in dict(tiny=(192, 12, 3), small=(384, 12, 6)).items():
        m = nepa_vit(size)
        assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads) == (d, depth, heads)
    with pytest.raises(ValueError, match="unknown size"):
        nepa_vit("huge")
    with pytest.raises(ValueError, match="pos_embed"):
        NepaConfig(pos_embed="sincos")


def test_base_parameter_count():
    n = sum(p.numel() for p in NepaViT(NepaConfig()).parameters())
    assert 85.0e6 < n < 86.5e6  # the paper's ~85.5 M


def test_objective_defaults_are_the_release_loss():
    torch.manual_seed(0)
    obj = NepaObjective(**tiny_kwargs())
    x = torch.randn(2, 3, 28, 28)
    out = obj(x)
    z, grid = obj.backbone.embed(x)
    h = obj.backbone.forward_tokens(z, grid, causal=True)
    ref = -torch.nn.functional.cosine_similarity(h[:, :-1], z[:, 1:], dim=-1).mean()
    torch.testing.assert_close(out["loss"], ref)


def test_stop_gradient_blocks_the_target_path():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 28, 28)
    for stop_grad in (True, False):
        obj = NepaObjective(stop_grad=stop_grad, **tiny_kwargs())
        out = obj(x)
        # gradient of the loss through the target only: compare with a detached-input computation
        z, grid = obj.backbone.embed(x)
        h = obj.backbone.forward_tokens(z.detach(), grid)
        target_only = nepa_loss(h.detach(), z, stop_grad=stop_grad)
        if stop_grad:
            assert not target_only.requires_grad
        else:
            g = torch.autograd.grad(target_only, obj.backbone.patch_embed.proj.weight)[0]
            assert g.abs().sum() > 0
        out["loss"].backward()
        assert obj.backbone.patch_embed.proj.weight.grad.abs().sum() > 0  # the input path always reaches it


def test_shift_and_mask_switches():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 28, 28)
    a = NepaObjective(shift=True, **tiny_kwargs())
    b = NepaObjective(shift=False, **tiny_kwargs())
    b.load_state_dict(a.state_dict())
    assert abs(a(x)["loss"].item() - b(x)["loss"].item()) > 1e-4
    m = NepaObjective(mask_ratio=0.5, **tiny_kwargs()).train()
    z, _ = m.backbone.embed(x)
    masked = m.mask_inputs(z)
    replaced = (masked != z).any(-1)
    assert not replaced[:, 0].any()  # cls never masked
    assert replaced[:, 1:].sum(1).tolist() == [8, 8]
    with pytest.raises(ValueError):
        NepaObjective(mask_ratio=1.0, **tiny_kwargs())


def test_every_parameter_gets_a_gradient():
    m = make(num_classes=5).train()
    m(torch.randn(2, 3, 28, 28)).sum().backward()
    # zero-initialised head blocks the gradient to the trunk on the first step; give it weights first
    m.zero_grad()
    torch.nn.init.normal_(m.head.weight)
    m(torch.randn(2, 3, 28, 28)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_block_indices_follow_timm():
    from backbones.nepa.model import block_indices

    assert block_indices(12) == (list(range(12)), 11)
    assert block_indices(12, 3) == ([9, 10, 11], 11)
    assert block_indices(12, [-1, 0, 5]) == ([11, 0, 5], 11)
    for bad in (0, 13, [12], [-13], []):
        with pytest.raises(ValueError, match="out of range"):
            block_indices(12, bad)


def test_intermediates_stop_early_and_pruning_give_the_same_taps():
    m = make(depth=4)
    x = torch.randn(2, 3, 28, 35)
    final, taps = m.forward_intermediates(x, output_fmt="NLC")
    torch.testing.assert_close(final, m.forward_features(x))
    assert len(taps) == 4 and taps[0].shape == (2, 4 * 5, 32)
    _, last2 = m.forward_intermediates(x, indices=2, output_fmt="NLC")
    assert all(torch.equal(a, b) for a, b in zip(last2, taps[2:]))
    early, (tap1,) = m.forward_intermediates(x, indices=[1], stop_early=True, output_fmt="NLC")
    assert torch.equal(tap1, taps[1]) and early.shape == (2, 21, 32)
    assert m.forward_intermediates(x, indices=[-3], output_fmt="NLC", intermediates_only=True)[0].equal(taps[1])
    assert m.prune_intermediate_layers([1, -3]) == [1, 1] and len(m.blocks) == 2
    assert torch.equal(m.forward_intermediates(x, indices=[1], output_fmt="NLC", intermediates_only=True)[0], taps[1])


def test_attention_probs_take_the_forward_path():
    """attention_probs uses forward's q/k path: a change to the QK-norm moves both the same way."""
    m = make(causal=False)
    attn = m.blocks[0].attn
    x = torch.randn(1, 17, 32)
    rope = m.rope((4, 4), x.device, num_prefix=1)
    before = attn.attention_probs(x, rope, False)
    with torch.no_grad():
        attn.k_norm.weight.mul_(3.0)
    after = attn.attention_probs(x, rope, False)
    assert (after - before).abs().max() > 1e-3
    _, _, v = attn._qkv(x, rope)
    slow = attn.proj((after @ v).transpose(1, 2).reshape(1, 17, 32))
    torch.testing.assert_close(attn(x, rope, False), slow, atol=1e-5, rtol=1e-5)


def test_factory_device_and_dtype():
    m = NepaViT(**tiny_kwargs(num_classes=3), device="meta", dtype=torch.float64)
    tensors = [*m.parameters(), *m.buffers()]
    assert {t.device.type for t in tensors} == {"meta"}
    assert {t.dtype for t in m.parameters()} == {torch.float64}
    m.eval().reset_classifier(5)
    assert (m.head.weight.device.type, m.head.weight.dtype, m.head.training) == ("meta", torch.float64, False)
    m.reset_classifier(0)
    m.reset_classifier(2)  # fc_norm kept, a new Linear on the model's device and dtype
    assert m.head.weight.dtype == torch.float64 and not any(mod.training for mod in m.modules())


def test_model_file_stays_pure_pytorch():
    """model.py imports only the standard library and torch at run time (the weight door lazily, no cycle)."""
    import ast
    from pathlib import Path

    import backbones.nepa.model as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    names = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "." for n in tree.body if isinstance(n, ast.ImportFrom)]
    roots = {n.split(".")[0] for n in names}
    assert roots <= {"__future__", "contextlib", "math", "os", "dataclasses", "typing", "torch"}, roots
    assert "load_pretrained" in NepaViT.__dict__  # a method of the class, not assigned by an adapter


def test_rope_tables_cached_are_the_tables_computed_afresh():
    """Cached tables (no rescale, or eval) equal fresh ones bit for bit, follow inv_freq changes, come in the
    autocast dtype under autocast, and tables made in inference mode never reach a training step."""
    r = Rope2D(head_dim=16, rescale=None)
    fresh = r.tables((3, 5), torch.device("cpu"), num_prefix=1)
    got = r((3, 5), torch.device("cpu"), num_prefix=1)
    assert all(torch.equal(a, b) for a, b in zip(got, fresh)) and got[0].dtype == torch.float32
    assert r((3, 5), torch.device("cpu"), num_prefix=1)[0] is got[0]  # served from the cache
    with torch.no_grad():
        r.inv_freq.mul_(1.5)
    moved = r((3, 5), torch.device("cpu"), num_prefix=1)
    assert torch.equal(moved[0], r.tables((3, 5), torch.device("cpu"), num_prefix=1)[0])
    assert not torch.equal(moved[0], got[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cb, sb = r((3, 5), torch.device("cpu"), num_prefix=1)
    assert cb.dtype == sb.dtype == torch.bfloat16 and torch.equal(cb, moved[0].to(torch.bfloat16))
    m = make(rope_rescale=None).train()
    x = torch.randn(2, 3, 28, 28)
    with torch.inference_mode():
        m.forward_features(x)
    m.forward_features(x).sum().backward()  # would raise if an inference-mode table were reused
    assert m.blocks[0].attn.qkv.weight.grad is not None
