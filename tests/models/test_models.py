"""Model construction details that the comparison depends on."""
import re

import pytest
import torch

from bnexp.models import build_model, stat_groups_by_layer
from bnexp.norm import BatchNorm2d


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


# airbench at width 0.25: an 8-channel stem, then 16, 16 and four 64-channel norm layers
AIRBENCH_QUARTER_WIDTHS = {"stem.1": 8, "groups.0.norm1": 16, "groups.0.norm2": 16, "groups.1.norm1": 64,
                           "groups.1.norm2": 64, "groups.2.norm1": 64, "groups.2.norm2": 64}


@pytest.mark.parametrize("channels_per_group, expected_groups", [
    (1, [8, 16, 16, 64, 64, 64, 64]),
    (2, [4, 8, 8, 32, 32, 32, 32]),
    (8, [1, 2, 2, 8, 8, 8, 8]),
    (16, [1, 1, 1, 4, 4, 4, 4]),   # the stem is narrower than a group: one group there
    (64, [1, 1, 1, 1, 1, 1, 1]),
    (512, [1, 1, 1, 1, 1, 1, 1]),  # wider than every layer: one statistic everywhere
])
def test_channels_per_group_sets_each_layers_group_count(channels_per_group, expected_groups):
    net = build_model("airbench", "grouped", width=0.25, channels_per_group=channels_per_group)
    groups = stat_groups_by_layer(net)
    assert list(groups) == list(AIRBENCH_QUARTER_WIDTHS)
    assert list(groups.values()) == expected_groups
    # each layer's modules agree with the listing: running statistics hold one entry per group
    for name, module in net.named_modules():
        if name in groups:
            assert module.running_mean.numel() == groups[name]
            assert module.weight.numel() == AIRBENCH_QUARTER_WIDTHS[name]  # gamma/beta stay per channel


def test_stat_groups_by_layer_for_fixed_counts_and_other_norms():
    assert set(stat_groups_by_layer(build_model("airbench", "grouped", width=0.25, stat_groups=8)).values()) == {8}
    assert set(stat_groups_by_layer(build_model("airbench", "shared", width=0.25)).values()) == {1}
    assert stat_groups_by_layer(build_model("airbench", "per_channel", width=0.25)) == AIRBENCH_QUARTER_WIDTHS
    assert stat_groups_by_layer(build_model("airbench", "torch", width=0.25)) == AIRBENCH_QUARTER_WIDTHS
    assert stat_groups_by_layer(build_model("airbench", "none", width=0.25)) == {}


def test_channels_per_group_that_splits_a_layer_unevenly_is_refused_with_a_fix():
    with pytest.raises(ValueError, match=r"channels_per_group=3 does not divide a layer of 8 channels.*2 or 4"):
        build_model("airbench", "grouped", width=0.25, channels_per_group=3)
    # 24 is wider than the 16-channel layers and does not divide them
    with pytest.raises(ValueError, match=r"channels_per_group=24 does not divide a layer of 64 channels"):
        build_model("airbench", "grouped", width=0.25, channels_per_group=24)


GUARD = r"build_model: norm '{norm}' with stat_groups={stat_groups} and channels_per_group={size}: norm 'grouped' " \
        r"takes exactly one of stat_groups"


@pytest.mark.parametrize("kwargs", [
    dict(variant_norm="grouped", stat_groups=2, channels_per_group=4),
    dict(variant_norm="per_channel", channels_per_group=4),
    dict(variant_norm="grouped", channels_per_group=0),
    dict(variant_norm="grouped", channels_per_group="four"),
    dict(variant_norm="grouped", channels_per_group=True),
    dict(variant_norm="grouped"),
])
def test_build_model_called_directly_refuses_a_grouping_the_config_checks_refuse(kwargs):
    """The one guard of build_model's arguments, for a Python caller that bypasses the config checks (which name
    the key and a fix for each of these: tests/config/test_config_rules.py)."""
    message = GUARD.format(norm=kwargs["variant_norm"], stat_groups=kwargs.get("stat_groups"),
                           size=re.escape(repr(kwargs.get("channels_per_group"))))
    with pytest.raises(ValueError, match=message):
        build_model("airbench", width=0.25, **kwargs)


@pytest.mark.parametrize("model_name, norm, message", [
    ("resnet", "per_channel", r"build_model: unknown model 'resnet'; choose one of \['airbench', 'resnet18', 'vgg'\]"),
    ("airbench", "group", r"build_model: unknown norm kind 'group'"),
])
def test_build_model_called_directly_refuses_an_unknown_model_or_norm(model_name, norm, message):
    with pytest.raises(ValueError, match=message):
        build_model(model_name, norm, width=0.25)


def _train_forward(norm, **grouping):
    """Logits, input gradient and first-layer running mean of one training step of a freshly seeded net."""
    torch.manual_seed(0)
    net = build_model("airbench", norm, width=0.25, **grouping).double()
    images = torch.randn(6, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                         requires_grad=True)
    logits = net(images)
    logits.square().sum().backward()
    return logits.detach(), images.grad, net.stem[1].running_mean.clone()


def test_one_channel_per_group_trains_like_per_channel_statistics():
    logits, input_grad, running_mean = _train_forward("grouped", channels_per_group=1)
    ref_logits, ref_grad, ref_running_mean = _train_forward("per_channel")
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(input_grad, ref_grad)
    torch.testing.assert_close(running_mean, ref_running_mean)
    # the comparison can tell groupings apart
    shared_logits, _, _ = _train_forward("grouped", stat_groups=1)
    assert not torch.allclose(logits, shared_logits, atol=1e-4)


@pytest.mark.parametrize("channels_per_group", [64, 1000])
def test_group_at_least_as_wide_as_every_layer_is_one_group(channels_per_group):
    logits, input_grad, running_mean = _train_forward("grouped", channels_per_group=channels_per_group)
    ref_logits, ref_grad, ref_running_mean = _train_forward("grouped", stat_groups=1)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(input_grad, ref_grad)
    torch.testing.assert_close(running_mean, ref_running_mean)


def test_group_size_variant_is_named_by_its_group_size():
    from omegaconf import OmegaConf

    from bnexp.config.compose import compose_train_config

    cfg = compose_train_config(["+variant=grouped_bn_by_size", "variant.channels_per_group=2"])
    variant = OmegaConf.to_container(cfg.variant, resolve=True)
    assert variant["name"] == "grouped_bn_2ch"
    assert (variant["norm"], variant["stat_groups"], variant["channels_per_group"]) == ("grouped", None, 2)
    net = build_model("airbench", variant["norm"], width=0.25, stat_groups=variant["stat_groups"],
                      channels_per_group=variant["channels_per_group"])
    assert stat_groups_by_layer(net)["stem.1"] == 4


@pytest.mark.parametrize("norm", ["per_channel", "grouped", "shared"])
def test_interventions_reach_every_norm_layer(norm):
    model = build_model("airbench", norm, width=0.125, stat_groups=2 if norm == "grouped" else None,
                        pooled="var", freeze_weight=True)
    norms = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    assert norms and all(m.pooled == "var" and m.freeze_weight for m in norms)
    assert all("weight" not in dict(m.named_parameters()) for m in norms)


@pytest.mark.parametrize("norm", ["none", "torch"])
def test_interventions_on_a_norm_without_them_are_refused(norm):
    with pytest.raises(ValueError, match=r"variant\.pooled=mean: an option of bnexp's norm layer"):
        build_model("airbench", norm, width=0.125, pooled="mean")
    with pytest.raises(ValueError, match=r"variant\.freeze_weight=true: an option"):
        build_model("airbench", norm, width=0.125, freeze_weight=True)
