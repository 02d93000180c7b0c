"""The intervention options of bnexp's BatchNorm2d against a float64 oracle written out here, group by group.

`pooled='mean'` pools only the mean over each channel group (each channel divided by its own std, about its own
mean), `pooled='var'` only the variance (each channel centred on its own mean, divided by the group's pooled
within-channel std), and `freeze_weight=True` keeps gamma at 1. The oracle below computes every statistic with an
explicit loop over the groups and their channels, in float64, from the definitions (the pooled within-channel
variance as the group's summed squared deviations from each channel's own mean over k*n values, unbiased over
k*(n - 1)), and autograd through it gives the reference gradients. The layer runs in float64 on the PyTorch path and
must match to float64 rounding: outputs, gradients of x, weight and bias, running buffers and num_batches_tracked,
step after step in train and eval mode, for NCHW, channels_last and non-contiguous inputs.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from torch import nn

import bnexp.norm.layer as layer_module
from bnexp.norm import BatchNorm2d

FIXED_EXAMPLES = dict(derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclasses.dataclass
class Case:
    shape: tuple[int, int, int, int]
    stat_groups: int
    pooled: str
    freeze_weight: bool
    affine_per_channel: bool
    momentum: float | None
    track_running_stats: bool
    eps: float
    layout: str  # "nchw", "channels_last" or "strided" (a non-contiguous view)
    modes: list[str]
    seed: int


GROUPINGS = ["one group", "grouped", "per channel"]


@st.composite
def cases(draw, pooled: str, grouping: str) -> Case:
    """A random case of one pooling and grouping; the first step trains, so later ones see moved buffers."""
    channels = draw(st.sampled_from({"one group": [1, 2, 4, 6], "grouped": [4, 6, 8],
                                     "per channel": [1, 2, 4, 6]}[grouping]))
    stat_groups = {"one group": 1, "grouped": 2, "per channel": channels}[grouping]
    shape = (draw(st.integers(1, 3)), channels, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    # batch statistics need two values per channel for 'mean'/'var' (a per-channel variance) and per group for 'both'
    values_per_statistic = shape[0] * shape[2] * shape[3] * (channels // stat_groups if pooled == "both" else 1)
    assume(values_per_statistic > 1)
    modes = ["train", *draw(st.lists(st.sampled_from(["train", "eval"]), max_size=3))]
    return Case(shape=shape, stat_groups=stat_groups, pooled=pooled, freeze_weight=draw(st.booleans()),
                affine_per_channel=draw(st.booleans()), momentum=draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
                track_running_stats=draw(st.booleans()), eps=draw(st.sampled_from([1e-5, 0.1])),
                layout=draw(st.sampled_from(["nchw", "channels_last", "strided"])), modes=modes,
                seed=draw(st.integers(0, 2**31 - 1)))


class Float64Oracle:
    """The layer's definition in float64, one group and one channel at a time."""

    def __init__(self, case: Case, weight: torch.Tensor | None, bias: torch.Tensor):
        self.case = case
        channels, groups = case.shape[1], case.stat_groups
        self.weight = None if weight is None else weight.detach().double().clone().requires_grad_()
        self.bias = bias.detach().double().clone().requires_grad_()
        mean_slots = channels if case.pooled == "var" else groups
        var_slots = channels if case.pooled == "mean" else groups
        self.running_mean = torch.zeros(mean_slots, dtype=torch.float64)
        self.running_var = torch.ones(var_slots, dtype=torch.float64)
        self.num_batches_tracked = 0

    def per_channel_affine(self, values: torch.Tensor | None, fill: float) -> list:
        channels = self.case.shape[1]
        if values is None:
            return [torch.tensor(fill, dtype=torch.float64)] * channels
        per_affine = channels // values.numel()
        return [values[channel // per_affine] for channel in range(channels)]

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        case = self.case
        batch, channels, height, width = x.shape
        size = channels // case.stat_groups
        count = batch * height * width  # values of one channel
        use_batch_stats = training or not case.track_running_stats
        updates = training and case.track_running_stats
        if updates:
            self.num_batches_tracked += 1
            factor = 1.0 / self.num_batches_tracked if case.momentum is None else case.momentum
        new_mean, new_var = self.running_mean.clone(), self.running_var.clone()
        gammas, betas = self.per_channel_affine(self.weight, 1.0), self.per_channel_affine(self.bias, 0.0)
        outputs = []
        for group in range(case.stat_groups):
            members = range(group * size, (group + 1) * size)
            block = x[:, group * size:(group + 1) * size]
            channel_mean = {c: x[:, c].sum() / count for c in members}
            # squared deviations of each channel from its own mean, and of the group from the group's mean
            channel_squares = {c: ((x[:, c] - channel_mean[c]) ** 2).sum() for c in members}
            group_mean = block.sum() / (count * size)
            group_squares = ((block - group_mean) ** 2).sum()
            within_squares = sum(channel_squares.values())
            for c in members:
                if use_batch_stats:
                    if case.pooled == "both":
                        mean, var = group_mean, group_squares / (count * size)
                        unbiased = group_squares / (count * size - 1)
                    elif case.pooled == "mean":
                        mean, var = group_mean, channel_squares[c] / count
                        unbiased = channel_squares[c] / (count - 1)
                    else:
                        mean, var = channel_mean[c], within_squares / (count * size)
                        unbiased = within_squares / (size * (count - 1))  # k channels, one mean each
                    mean_slot = c if case.pooled == "var" else group
                    var_slot = c if case.pooled == "mean" else group
                    if updates:
                        new_mean[mean_slot] = (1 - factor) * self.running_mean[mean_slot] + factor * mean.detach()
                        new_var[var_slot] = (1 - factor) * self.running_var[var_slot] + factor * unbiased.detach()
                else:
                    mean = self.running_mean[c if case.pooled == "var" else group]
                    var = self.running_var[c if case.pooled == "mean" else group]
                outputs.append((x[:, c] - mean) / torch.sqrt(var + case.eps) * gammas[c] + betas[c])
        if updates:
            self.running_mean, self.running_var = new_mean, new_var
        return torch.stack(outputs, dim=1)


def make_input(case: Case, generator: torch.Generator) -> torch.Tensor:
    """Channels of different offsets and scales (so a wrong axis or a wrong pooling shows), NCHW contiguous."""
    channels = case.shape[1]
    offset = torch.randn(1, channels, 1, 1, generator=generator, dtype=torch.float64) * 3
    scale = torch.rand(1, channels, 1, 1, generator=generator, dtype=torch.float64) * 4 + 0.2
    return torch.randn(case.shape, generator=generator, dtype=torch.float64) * scale + offset


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A copy of x's values in the layout: NCHW, channels_last, or a non-contiguous view (every other column of a
    tensor twice as wide)."""
    if layout == "channels_last":
        return x.clone().contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x.clone()


def build(case: Case) -> tuple[BatchNorm2d, Float64Oracle, torch.Generator]:
    generator = torch.Generator().manual_seed(case.seed)
    layer = BatchNorm2d(case.shape[1], eps=case.eps, momentum=case.momentum,
                        track_running_stats=case.track_running_stats, stat_groups=case.stat_groups,
                        affine_per_channel=case.affine_per_channel, backend="torch", dtype=torch.float64,
                        pooled=case.pooled, freeze_weight=case.freeze_weight)
    with torch.no_grad():
        if not case.freeze_weight:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64) + 0.5)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator, dtype=torch.float64))
    oracle = Float64Oracle(case, None if case.freeze_weight else layer.weight, layer.bias)
    return layer, oracle, generator


def exact(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(ours, reference.to(ours.dtype), rtol=1e-10, atol=1e-10,
                               msg=lambda text: f"{what}: {text}")


# 'both' is the layer's default, checked at length in test_norm_options.py: here it checks the oracle itself
@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("pooled", ["mean", "var", "both"])
@settings(max_examples=12, **FIXED_EXAMPLES)
@given(data=st.data())
def test_layer_matches_the_float64_oracle_step_after_step(pooled, grouping, data):
    case = data.draw(cases(pooled, grouping))
    # what the examples covered: `pytest --hypothesis-show-statistics` counts these
    event(f"layout {case.layout}")
    event(f"freeze_weight {case.freeze_weight}, momentum {'None' if case.momentum is None else 'float'}")
    event(f"train steps {case.modes.count('train')}, eval {'eval' in case.modes}, track {case.track_running_stats}")
    layer, oracle, generator = build(case)
    for step, mode in enumerate(case.modes):
        layer.train(mode == "train")
        x = make_input(case, generator)
        upstream = torch.randn(case.shape, generator=generator, dtype=torch.float64)
        x_ours, x_oracle = in_layout(x, case.layout).requires_grad_(), x.clone().requires_grad_()
        y, y_oracle = layer(x_ours), oracle(x_oracle, training=mode == "train")
        where = f"step {step} ({mode})"
        if case.layout == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last), where
        if case.layout == "strided":
            assert not x_ours.is_contiguous() or x.numel() <= 1, where
        (y * upstream).sum().backward()
        (y_oracle * upstream).sum().backward()
        exact(y, y_oracle, f"{where} output")
        exact(x_ours.grad, x_oracle.grad, f"{where} input grad")
        exact(layer.bias.grad, oracle.bias.grad, f"{where} bias grad")
        if case.freeze_weight:
            assert "weight" not in dict(layer.named_parameters()) and bool((layer.weight == 1).all()), where
        else:
            exact(layer.weight.grad, oracle.weight.grad, f"{where} weight grad")
        layer.zero_grad()
        oracle.bias.grad = None
        if oracle.weight is not None:
            oracle.weight.grad = None
        if case.track_running_stats:
            assert layer.running_mean.shape == oracle.running_mean.shape, where
            assert layer.running_var.shape == oracle.running_var.shape, where
            exact(layer.running_mean, oracle.running_mean, f"{where} running_mean")
            exact(layer.running_var, oracle.running_var, f"{where} running_var")
            assert int(layer.num_batches_tracked) == oracle.num_batches_tracked, where


@pytest.mark.parametrize("pooled", ["mean", "var"])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_one_channel_per_group_is_per_channel_batch_norm(pooled, momentum, channels_last):
    """With stat_groups=C the pooled statistic is per channel too: nn.BatchNorm2d in float64, exactly."""
    torch.manual_seed(0)
    ours = BatchNorm2d(6, momentum=momentum, stat_groups=6, pooled=pooled, backend="torch", dtype=torch.float64)
    reference = nn.BatchNorm2d(6, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
        ours.bias.normal_()
        reference.load_state_dict(ours.state_dict())  # the same keys and shapes
    for step, mode in enumerate(["train", "train", "eval", "train", "eval"]):
        ours.train(mode == "train"), reference.train(mode == "train")
        x = torch.randn(4, 6, 3, 5, dtype=torch.float64) * torch.linspace(0.1, 5, 6).view(1, 6, 1, 1).double() + 2
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x_ours, x_reference = x.clone().requires_grad_(), x.clone().requires_grad_()
        upstream = torch.randn_like(x)
        y, y_reference = ours(x_ours), reference(x_reference)
        (y * upstream).sum().backward()
        (y_reference * upstream).sum().backward()
        for name, a, b in (("output", y, y_reference), ("input grad", x_ours.grad, x_reference.grad),
                           ("weight grad", ours.weight.grad, reference.weight.grad),
                           ("bias grad", ours.bias.grad, reference.bias.grad),
                           ("running_mean", ours.running_mean, reference.running_mean),
                           ("running_var", ours.running_var, reference.running_var)):
            exact(a, b, f"step {step} ({mode}) {name}")
        assert int(ours.num_batches_tracked) == int(reference.num_batches_tracked)
        ours.zero_grad(), reference.zero_grad()


@pytest.mark.parametrize("pooled", ["mean", "var"])
@pytest.mark.parametrize("stat_groups", [1, 2])
def test_gradcheck_and_gradgradcheck_in_float64(pooled, stat_groups):
    layer = BatchNorm2d(4, stat_groups=stat_groups, pooled=pooled, backend="torch", dtype=torch.float64,
                        track_running_stats=False)
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 4, 2, 3, generator=generator, dtype=torch.float64)
         * torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64).view(1, 4, 1, 1)).requires_grad_()
    weight = (torch.rand(4, generator=generator, dtype=torch.float64) + 0.5).requires_grad_()
    bias = torch.randn(4, generator=generator, dtype=torch.float64).requires_grad_()

    def forward(x, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(forward, (x, weight, bias))
    assert torch.autograd.gradgradcheck(forward, (x, weight, bias))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.slow)])
@pytest.mark.parametrize("stat_groups", [4, 2])  # 4 of 4 channels: the fused per-channel path
def test_frozen_gamma_has_a_second_derivative(stat_groups, backend):
    """The sharpness differentiates the loss twice: with gamma frozen (a bias but no weight), torch's own
    batch_norm double backward raised on the per-channel path."""
    layer = BatchNorm2d(4, stat_groups=stat_groups, freeze_weight=True, backend=backend, dtype=torch.float64,
                        track_running_stats=False)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 2, 3, generator=generator, dtype=torch.float64).requires_grad_()
    bias = torch.randn(4, generator=generator, dtype=torch.float64).requires_grad_()

    def forward(x, bias):
        return torch.func.functional_call(layer, {"bias": bias}, (x,))

    assert torch.autograd.gradgradcheck(forward, (x, bias))


def test_buffers_have_the_shape_of_the_statistic_they_hold():
    shapes = {pooled: (tuple(layer.running_mean.shape), tuple(layer.running_var.shape))
              for pooled in ("both", "mean", "var")
              for layer in [BatchNorm2d(8, stat_groups=2, pooled=pooled)]}
    assert shapes == {"both": ((2,), (2,)), "mean": ((2,), (8,)), "var": ((8,), (2,))}
    layer = BatchNorm2d(8, stat_groups=2, pooled="var")
    layer.running_mean.fill_(3.0)
    layer.reset_running_stats()
    assert bool((layer.running_mean == 0).all()) and layer.running_mean.shape == (8,)


def test_what_each_mode_leaves_per_channel():
    """The point of the options, on channels of very different scales in one group: 'mean' gives every channel
    std 1 and an offset, 'var' gives every channel mean 0 and its scale relative to the group."""
    x = torch.randn(64, 4, 4, 4, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0, 10.0]).view(1, 4, 1, 1).double()
    x = x + torch.tensor([-5.0, 0.0, 2.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)
    per_channel_std = x.std(dim=(0, 2, 3), unbiased=False)
    for pooled in ("mean", "var"):
        y = BatchNorm2d(4, stat_groups=1, pooled=pooled, dtype=torch.float64, eps=0.0 + 1e-12)(x)
        std, mean = y.std(dim=(0, 2, 3), unbiased=False), y.mean(dim=(0, 2, 3))
        if pooled == "mean":
            torch.testing.assert_close(std, torch.ones(4, dtype=torch.float64))
            assert mean.abs().min() > 0.1
        else:
            torch.testing.assert_close(mean, torch.zeros(4, dtype=torch.float64))
            torch.testing.assert_close(std, per_channel_std / per_channel_std.square().mean().sqrt())


def test_frozen_gamma_is_a_buffer_of_ones_that_no_optimizer_moves():
    layer = BatchNorm2d(4, stat_groups=2, freeze_weight=True, backend="torch")
    assert [name for name, _ in layer.named_parameters()] == ["bias"]
    assert set(layer.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5, weight_decay=0.1)
    for _ in range(2):
        layer(torch.randn(3, 4, 2, 2)).pow(3).sum().backward()
        optimizer.step()
    assert bool((layer.weight == 1).all()) and not layer.weight.requires_grad
    assert layer.bias.abs().sum() > 0  # beta trained
    layer.reset_parameters()
    assert bool((layer.weight == 1).all())


def test_frozen_gamma_checkpoint_loads_into_the_stock_layer_and_a_trained_gamma_is_refused():
    frozen = BatchNorm2d(4, freeze_weight=True, backend="torch")
    frozen(torch.randn(5, 4, 3, 3) * 3 + 1)  # running statistics that differ from the initial ones
    with torch.no_grad():
        frozen.bias.normal_()
    stock = nn.BatchNorm2d(4)
    stock.load_state_dict(frozen.state_dict())  # strict: the same keys
    frozen.eval(), stock.eval()
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(frozen(x), stock(x))
    frozen.load_state_dict(stock.state_dict())  # gamma of ones: accepted
    with torch.no_grad():
        stock.weight[1] = 2.0
    with pytest.raises(RuntimeError, match="freeze_weight=True.*not all ones"):
        frozen.load_state_dict(stock.state_dict())
    assert bool((frozen.weight == 1).all())  # nothing half-loaded


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="pooled='channels' is not one of"):
        BatchNorm2d(4, pooled="channels")
    with pytest.raises(ValueError, match="backend='torch'"):
        BatchNorm2d(4, stat_groups=2, pooled="mean", backend="triton")
    with pytest.raises(ValueError, match="affine=True"):
        BatchNorm2d(4, affine=False, freeze_weight=True)
    layer = BatchNorm2d(4, stat_groups=2, pooled="var", backend="torch")
    layer.backend = "triton"  # set after construction: refused in the forward
    with pytest.raises(ValueError, match="backend='torch'"):
        layer(torch.randn(2, 4, 2, 2))


@pytest.mark.parametrize("pooled", ["mean", "var"])
def test_one_value_per_channel_in_training_is_refused_for_per_channel_moments(pooled):
    x = torch.randn(1, 4, 1, 1)
    BatchNorm2d(4, stat_groups=1)(x)  # 'both': four values per statistic, a variance exists
    with pytest.raises(ValueError, match="one value per channel"):
        BatchNorm2d(4, stat_groups=1, pooled=pooled)(x)
    BatchNorm2d(4, stat_groups=1, pooled=pooled).eval()(x)  # running statistics: fine


def test_auto_backend_runs_interventions_on_the_pytorch_path_whatever_the_device(monkeypatch):
    """'auto' never asks which backend the device would get: were it Triton (a CUDA tensor), the layer still
    runs the PyTorch path."""
    def refuse(*_args):
        raise AssertionError("resolve_backend consulted for an intervention")

    monkeypatch.setattr(layer_module, "resolve_backend", refuse)
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    for pooled in ("mean", "var"):
        auto = BatchNorm2d(4, stat_groups=2, pooled=pooled, backend="auto", dtype=torch.float64)
        torch_path = BatchNorm2d(4, stat_groups=2, pooled=pooled, backend="torch", dtype=torch.float64)
        exact(auto(x), torch_path(x), pooled)


@pytest.mark.parametrize("pooled", ["mean", "var"])
def test_empty_batch_and_half_precision_layer(pooled):
    layer = BatchNorm2d(4, stat_groups=2, pooled=pooled)
    before = (layer.running_mean.clone(), layer.running_var.clone())
    assert layer(torch.randn(0, 4, 3, 3)).shape == (0, 4, 3, 3)
    assert int(layer.num_batches_tracked) == 1
    assert torch.equal(layer.running_mean, before[0]) and torch.equal(layer.running_var, before[1])

    half = BatchNorm2d(4, stat_groups=2, pooled=pooled, dtype=torch.bfloat16)
    reference = BatchNorm2d(4, stat_groups=2, pooled=pooled, dtype=torch.float64)
    x = torch.randn(4, 4, 3, 3, dtype=torch.float64) * 2 + 1
    y = half(x.bfloat16())
    assert y.dtype == torch.bfloat16 and half.running_var.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), reference(x), rtol=0.02, atol=0.02)
    torch.testing.assert_close(half.running_var.double(), reference.running_var, rtol=0.01, atol=0.01)


def _kernels_available() -> bool:
    from bnexp.norm.triton_function import kernels_interpreted, triton_status

    return kernels_interpreted() if not torch.cuda.is_available() else triton_status()[0]


@pytest.mark.skipif(not _kernels_available(), reason="Triton cannot run here (no interpreter, no CUDA)")
@pytest.mark.parametrize("stat_groups", [1, 2])
def test_frozen_gamma_on_the_triton_path_matches_the_oracle(stat_groups):
    """freeze_weight only removes gamma, so the kernels run it (weight=None, bias present): fp32 against float64."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    case = Case(shape=(2, 4, 2, 3), stat_groups=stat_groups, pooled="both", freeze_weight=True,
                affine_per_channel=True, momentum=0.1, track_running_stats=True, eps=1e-5, layout="nchw",
                modes=["train", "eval"], seed=3)
    generator = torch.Generator().manual_seed(case.seed)
    layer = BatchNorm2d(4, stat_groups=stat_groups, freeze_weight=True, backend="triton", device=device)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(4, generator=generator))
    oracle = Float64Oracle(case, None, layer.bias.cpu())
    for mode in case.modes:
        layer.train(mode == "train")
        x = make_input(case, generator)
        upstream = torch.randn(case.shape, generator=generator, dtype=torch.float64)
        x_ours, x_oracle = x.float().to(device).requires_grad_(), x.clone().requires_grad_()
        y, y_oracle = layer(x_ours), oracle(x_oracle, training=mode == "train")
        (y * upstream.float().to(device)).sum().backward()
        (y_oracle * upstream).sum().backward()
        for name, a, b in (("output", y, y_oracle), ("input grad", x_ours.grad, x_oracle.grad),
                           ("bias grad", layer.bias.grad, oracle.bias.grad),
                           ("running_mean", layer.running_mean, oracle.running_mean),
                           ("running_var", layer.running_var, oracle.running_var)):
            torch.testing.assert_close(a.detach().cpu().double(), b.detach(), rtol=1e-4, atol=1e-4,
                                       msg=lambda text, name=name: f"{mode} {name}: {text}")
        layer.zero_grad()
        oracle.bias.grad = None
