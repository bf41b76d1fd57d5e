"""The public release's own outputs, reproduced through our weight door (float32, 1e-4)."""
import torch
from safetensors.torch import load_file

from backbones.nepa import from_pretrained, nepa_loss


def test_pretrain_fixture_matches_release(official_dir):
    d = official_dir / "nepa_tiny_pretrain_causal"
    exp = load_file(str(d / "expected.safetensors"))
    model = from_pretrained(d, verbose=False)
    assert model.causal and not model.training and model.num_classes == 0
    with torch.no_grad():
        z, grid = model.embed(exp["pixel_values"])
        h = model.forward_features(exp["pixel_values"])
        loss = nepa_loss(h, z)
    torch.testing.assert_close(z, exp["input_embedding"], atol=1e-4, rtol=0)
    torch.testing.assert_close(h, exp["last_hidden_state"], atol=1e-4, rtol=0)
    assert abs(loss.item() - exp["loss"].item()) < 1e-4


def test_classifier_fixture_matches_release(official_dir):
    d = official_dir / "nepa_tiny_cls_bidirectional"
    exp = load_file(str(d / "expected.safetensors"))
    model = from_pretrained(d, verbose=False)
    assert not model.causal and model.num_classes == 10
    with torch.no_grad():
        logits = model(exp["pixel_values"])
    torch.testing.assert_close(logits, exp["logits"], atol=1e-4, rtol=0)


def test_parity_is_sensitive(official_dir):
    """The fixture really exercises attention, RoPE and the mask: breaking either moves the output."""
    d = official_dir / "nepa_tiny_pretrain_causal"
    exp = load_file(str(d / "expected.safetensors"))
    model = from_pretrained(d, verbose=False)
    with torch.no_grad():
        assert (model.forward_features(exp["pixel_values"], causal=False) - exp["last_hidden_state"]).abs().max() > 1e-2
        model.rope.inv_freq.mul_(1.01)
        assert (model.forward_features(exp["pixel_values"]) - exp["last_hidden_state"]).abs().max() > 1e-4
