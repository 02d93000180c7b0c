"""The mechanism metrics (channel-scale spread after each norm layer, dead units after each activation, zero inputs
of the head) against a direct recomputation from the activations, on a tiny model."""
import copy
import math

import pytest
import torch
from torch import nn

from bnexp.instrument import StabilityProbe
from bnexp.instrument.hooks import DEAD_THRESHOLD, MAX_SCALE_RATIO
from bnexp.norm import BatchNorm2d


class MixNet(nn.Module):
    """conv -> shared-statistic bnexp BN (per-channel gamma/beta) -> GELU -> conv -> torch BN -> the same GELU again
    -> conv -> in-place ReLU -> global max-pool -> linear without bias: both norm flavours, an activation module applied twice,
    and an in-place one."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.norm1 = BatchNorm2d(6, stat_groups=1, backend="torch")
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(6)
        self.act = nn.GELU()
        self.conv3 = nn.Conv2d(6, 5, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(5, 4, bias=False)  # as in airbench

    def parts(self, x):
        """Every intermediate tensor of the forward, by name."""
        parts = {"norm1": self.norm1(self.conv1(x))}
        parts["act1"] = self.act(parts["norm1"])
        parts["norm2"] = self.norm2(self.conv2(parts["act1"]))
        parts["act2"] = self.act(parts["norm2"])
        parts["conv3"] = self.conv3(parts["act2"])
        parts["relu"] = torch.relu(parts["conv3"])
        parts["features"] = parts["relu"].amax(dim=(2, 3))
        parts["logits"] = self.head(parts["features"])
        return parts

    def forward(self, x):
        x = self.act(self.norm1(self.conv1(x)))
        x = self.act(self.norm2(self.conv2(x)))
        return self.head(self.relu(self.conv3(x)).amax(dim=(2, 3)))


def make_model(seed=0):
    torch.manual_seed(seed)
    model = MixNet()
    with torch.no_grad():
        model.norm1.weight.uniform_(0.5, 2.0)  # gamma spread known and > 1
        model.norm2.weight.uniform_(0.5, 2.0)
        model.norm2.weight[2] = 0.0  # channel 2 after norm2: constant -30, the GELU after it outputs exactly 0
        model.norm2.bias[2] = -30.0
        model.conv3.weight[1] = 0.0  # channel 1 before the ReLU: constant -1, so the ReLU outputs 0 everywhere
        model.conv3.bias[1] = -1.0
    return model


def inputs(seed=1):
    generator = torch.Generator().manual_seed(seed)
    # channels of very different scales into the shared statistic
    return torch.randn(8, 3, 6, 6, generator=generator) * torch.tensor([0.2, 1.0, 5.0]).view(1, 3, 1, 1)


def measure(model, x):
    probe = StabilityProbe(model, {"every": 1})
    probe.before_forward(0)
    model(x).square().mean().backward()
    probe.after_backward(0)
    probe.after_optimizer_step(0)
    (record,) = probe.readback()
    return record, probe


def by_hand_spread(values):
    low, high = min(values), max(values)
    return high / max(low, high / MAX_SCALE_RATIO)


def test_mechanism_metrics_match_a_direct_computation():
    model = make_model()
    reference = copy.deepcopy(model)
    x = inputs()
    record, probe = measure(model, x)
    with torch.no_grad():
        parts = reference.parts(x)

    def channel_std(y):
        return y.double().transpose(0, 1).reshape(y.shape[1], -1).std(dim=1, unbiased=False).tolist()

    def channel_output_max(y):
        return y.transpose(0, 1).reshape(y.shape[1], -1).max(dim=1).values.tolist()

    # x_hat's per-channel std: the channel's std over its group's (norm1: one group of 6; norm2: per channel)
    conv1_out = reference.conv1(x).double()
    channel_var = conv1_out.transpose(0, 1).reshape(6, -1).var(dim=1, unbiased=False)
    shared_var = conv1_out.var(unbiased=False)
    expected_xhat = (channel_var / (shared_var + reference.norm1.eps)).sqrt().tolist()
    assert record["bn/norm1/xhat_std_ratio"] == pytest.approx(by_hand_spread(expected_xhat), rel=1e-4)
    assert record["bn/norm1/xhat_std_ratio"] > 1.2  # the conv blends the inputs of 0.2 to 5 std
    assert record["bn/norm2/xhat_std_ratio"] == pytest.approx(1.0, abs=1e-3)
    for norm in ("norm1", "norm2"):
        assert record[f"bn/{norm}/out_std_ratio"] == pytest.approx(by_hand_spread(channel_std(parts[norm])), rel=1e-4)
        gammas = getattr(reference, norm).weight.abs().tolist()
        assert record[f"bn/{norm}/gamma_ratio"] == pytest.approx(by_hand_spread(gammas), rel=1e-5)
    # dead units, from the activations' outputs by hand; the probe decides it from their inputs
    for key, pre, post in (("act/act", "norm1", "act1"), ("act/act.call2", "norm2", "act2"),
                           ("act/relu", "conv3", "relu")):
        outputs = channel_output_max(parts[post])
        assert record[f"{key}/dead_frac"] == pytest.approx(sum(m <= DEAD_THRESHOLD for m in outputs) / len(outputs))
        assert record[f"{key}/preact_max"] == pytest.approx(parts[pre].max().item(), rel=1e-5)
    assert record["act/act.call2/dead_frac"] == pytest.approx(1 / 6)  # the channel set to -30 (GELU's exact zero)
    assert record["act/relu/dead_frac"] >= 1 / 5  # the channel set to -1, and any that happen to be dead
    assert record["act/head/in_zero_frac"] == pytest.approx((parts["features"] == 0).double().mean().item())
    assert record["act/head/in_zero_frac"] >= 1 / 5

    summary = probe.summary()
    dead = [record[k] for k in record if k.startswith("act/") and k.endswith("/dead_frac")]
    assert len(dead) == 3
    assert summary["final_dead_frac"] == pytest.approx(sum(dead) / 3)
    assert summary["final_dead_frac_max"] == pytest.approx(max(dead))
    assert summary["final_out_std_ratio"] == pytest.approx(max(record["bn/norm1/out_std_ratio"],
                                                               record["bn/norm2/out_std_ratio"]))
    assert summary["final_xhat_std_ratio"] == pytest.approx(record["bn/norm1/xhat_std_ratio"])
    assert summary["final_xhat_offset_max"] == pytest.approx(max(record["bn/norm1/xhat_offset_max"],
                                                                 record["bn/norm2/xhat_offset_max"]))
    assert record["bn/norm2/xhat_offset_max"] < 1e-4  # per-channel statistics centre every channel
    assert summary["final_zero_input_frac"] == pytest.approx(record["act/head/in_zero_frac"])
    assert summary["final_mechanism_step"] == 0


def test_shared_statistics_spread_channel_scales_and_per_channel_ones_do_not():
    """The mixing made visible: with unit gamma, per-channel statistics give every channel std ~1 (ratio ~1);
    one shared statistic passes the input's channel-scale spread (here 0.2 vs 5) straight through."""
    x = inputs()
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    ratios = {}
    for stat_groups in (3, 1):
        model = nn.Sequential(conv, BatchNorm2d(3, stat_groups=stat_groups, backend="torch"), nn.ReLU(),
                              nn.Flatten(), nn.Linear(3 * 36, 2))
        record, _ = measure(model, x)
        ratios[stat_groups] = (record["bn/1/out_std_ratio"], record["bn/1/xhat_std_ratio"])
    input_spread = by_hand_spread(x.transpose(0, 1).reshape(3, -1).std(1, unbiased=False).tolist())
    assert ratios[3] == (pytest.approx(1.0, rel=1e-3), pytest.approx(1.0, rel=1e-3))
    assert ratios[1] == (pytest.approx(input_spread, rel=1e-3), pytest.approx(input_spread, rel=1e-3))
    assert input_spread > 10


def test_a_dead_last_layer_zeroes_the_head_input_and_every_gradient():
    """The collapse: every channel before the max-pool and the head at GELU's exact zero -> the head sees zeros,
    its gradient is 0, and so is every gradient below it."""
    model = make_model()
    with torch.no_grad():
        model.norm2.weight.zero_()
        model.norm2.bias.fill_(-30.0)  # every channel: GELU(-30) == 0 exactly
        model.conv3.bias.zero_()
    record, probe = measure(model, inputs())
    assert record["act/act.call2/dead_frac"] == 1.0 and record["act/act.call2/preact_max"] == -30.0
    assert record["act/relu/dead_frac"] == 1.0
    assert record["act/head/in_zero_frac"] == 1.0
    assert record["grad_norm/global"] == 0.0


def test_a_channel_of_zero_scale_caps_the_ratio_and_nothing_is_infinite():
    model = make_model()
    with torch.no_grad():
        model.norm1.weight[0] = 0.0  # that channel's output is its beta: std 0, |gamma| 0
    record, probe = measure(model, inputs())
    assert record["bn/norm1/out_std_ratio"] == pytest.approx(MAX_SCALE_RATIO)
    assert record["bn/norm1/gamma_ratio"] == pytest.approx(MAX_SCALE_RATIO)
    assert all(math.isfinite(value) for value in record.values())


def test_the_activation_module_is_measured_at_each_call_and_only_while_armed():
    model = make_model()
    probe = StabilityProbe(model, {"every": 2})
    for step in range(3):
        probe.before_forward(step)
        model(inputs(step)).sum().backward()
        probe.after_backward(step)
        probe.after_optimizer_step(step)
    records = probe.readback()
    assert [r["step"] for r in records] == [0, 2]
    for record in records:
        assert {key for key in record if key.endswith("dead_frac")} == \
            {"act/act/dead_frac", "act/act.call2/dead_frac", "act/relu/dead_frac"}


@pytest.mark.parametrize("pooled", ["both", "mean", "var"])
def test_x_hat_is_what_the_layer_divides_and_subtracts_in_each_pooling(pooled):
    """x_hat_c = (x_c - m_c) / sqrt(v_c + eps) with the statistics the layer uses: a pooled variance keeps the channels'
    scale spread (xhat_std_ratio), a pooled mean keeps their offsets (xhat_offset_max); the running-statistic gaps
    compare each buffer, whatever its shape, with the batch statistic it stands for. By hand, in float64, against
    the layer's own output."""
    x = inputs() + torch.tensor([-2.0, 0.5, 3.0]).view(1, 3, 1, 1)
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    norm = BatchNorm2d(3, stat_groups=1, pooled=pooled, backend="torch", affine=False)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():  # running statistics away from their initial values
        norm.running_mean.copy_(torch.randn(norm.running_mean.shape, generator=generator))
        norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=generator) + 0.5)
    running_mean, running_var = norm.running_mean.double().clone(), norm.running_var.double().clone()
    record, _ = measure(nn.Sequential(conv, norm, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 2)), x)

    values = x.double().transpose(0, 1).reshape(3, -1)
    channel_mean, channel_var = values.mean(1), values.var(1, unbiased=False)
    used_mean = channel_mean if pooled == "var" else values.mean().expand(3)
    used_var = {"both": values.var(unbiased=False).expand(3), "mean": channel_var,
                "var": channel_var.mean().expand(3)}[pooled]
    used_std = (used_var + norm.eps).sqrt()
    x_hat = (values - used_mean[:, None]) / used_std[:, None]
    with torch.no_grad():  # the layer's own output is that x_hat (affine=False), in training mode
        torch.testing.assert_close(norm.train()(x).double().transpose(0, 1).reshape(3, -1), x_hat,
                                   rtol=1e-5, atol=1e-5)
    assert record["bn/1/xhat_std_ratio"] == pytest.approx(by_hand_spread(x_hat.std(1, unbiased=False).tolist()),
                                                          rel=1e-4)
    assert record["bn/1/xhat_offset_max"] == pytest.approx(x_hat.mean(1).abs().max().item(), rel=1e-4, abs=1e-5)
    # one buffer entry per statistic: 3 for a per-channel one, 1 for the pooled one(s)
    assert (running_mean.numel(), running_var.numel()) == {"both": (1, 1), "mean": (1, 3), "var": (3, 1)}[pooled]
    running_mean = running_mean.repeat_interleave(3 // running_mean.numel())
    running_var = running_var.repeat_interleave(3 // running_var.numel())
    assert record["bn/1/running_mean_gap"] == pytest.approx(((running_mean - used_mean).abs() / used_std).mean().item(),
                                                            rel=1e-4)
    assert record["bn/1/running_var_logratio"] == pytest.approx(
        ((running_var + norm.eps) / (used_var + norm.eps)).log().abs().mean().item(), rel=1e-4)
    # what each pooling is for: equal scales with a per-channel variance, no offsets with a per-channel mean
    assert (record["bn/1/xhat_std_ratio"] < 1.001) == (pooled == "mean")  # (eps lifts the 0.2-std channel)
    assert (record["bn/1/xhat_offset_max"] < 1e-5) == (pooled == "var")
