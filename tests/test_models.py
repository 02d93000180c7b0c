"""Model construction details that the comparison depends on."""
import pytest
import torch

from bnexp.models import build_model


@pytest.mark.parametrize("model_name", ["airbench", "vgg", "resnet18"])
def test_unnormalised_nets_keep_their_signal_at_init(model_name):
    """He init: without BatchNorm the features neither vanish nor explode, so no_bn can train at all."""
    torch.manual_seed(0)
    net = build_model(model_name, "none", width=0.25)
    features = {}
    last_conv = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    last_conv.register_forward_hook(lambda module, inputs, output: features.setdefault("out", output))
    net(torch.randn(16, 3, 32, 32))
    rms = features["out"].pow(2).mean().sqrt().item()
    assert 0.1 < rms < 10, f"last conv output RMS {rms:.3g} at init"


def test_convs_have_bias_only_without_normalisation():
    with_norm = build_model("vgg", "per_channel", width=0.125)
    without = build_model("vgg", "none", width=0.125)
    assert all(m.bias is None for m in with_norm.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(m.bias is not None for m in without.modules() if isinstance(m, torch.nn.Conv2d))
