"""bnexp's BatchNorm2d used as one would use nn.BatchNorm2d, over random shapes, groupings and constructor options.

Every example builds a layer with random options (stat_groups, momentum as a float or None, affine and
affine_per_channel, track_running_stats, eps), and runs a random sequence of training and eval steps on random
inputs in NCHW or channels_last, each with a backward pass. After every step the output, the input and parameter
gradients, and the running buffers must match an oracle fed the same steps: nn.BatchNorm2d in float64 for
per-channel statistics, the float64 computation below for grouped and shared ones.

- PyTorch path: the layer in float64, so it must match to float64 rounding (1e-10 relative; averaging factors or
  statistics computed in float32 anywhere are off by about 1e-8).
- Triton path (the interpreter on the CPU, the kernels on CUDA): the layer in float32, whose statistics are fp32;
  errors are measured as a norm over the whole tensor against the float64 oracle.

The examples are derandomized (the same ones on every run); `pytest --hypothesis-seed=N` explores others.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from torch import nn

from bnexp.norm import BatchNorm2d

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclasses.dataclass
class Case:
    shape: tuple[int, int, int, int]
    stat_groups: int | None
    momentum: float | None
    affine: bool
    affine_per_channel: bool
    track_running_stats: bool
    eps: float
    channels_last: bool
    modes: list[str]  # "train" or "eval", one per step
    seed: int

    @property
    def groups(self) -> int:
        return self.shape[1] if self.stat_groups is None else self.stat_groups


GROUPINGS = ["per-channel", "grouped", "shared"]


@st.composite
def cases(draw, grouping: str) -> Case:
    """A random case with statistics per channel (stat_groups None or C), grouped (1 < G < C) or shared (G = 1)."""
    channels = draw(st.sampled_from({"per-channel": [1, 2, 3, 4, 6, 8, 12], "grouped": [4, 6, 8, 12],
                                     "shared": [1, 2, 3, 4, 6, 8]}[grouping]))
    if grouping == "per-channel":
        stat_groups = draw(st.sampled_from([None, channels]))
    elif grouping == "grouped":
        stat_groups = draw(st.sampled_from([g for g in range(2, channels) if channels % g == 0]))
    else:
        stat_groups = 1
    groups = channels if stat_groups is None else stat_groups
    shape = (draw(st.integers(1, 4)), channels, draw(st.integers(1, 4)), draw(st.integers(1, 5)))
    modes = draw(st.lists(st.sampled_from(["train", "eval"]), min_size=1, max_size=4))
    track_running_stats = draw(st.booleans())
    # a batch statistic of one value has no variance: nn.BatchNorm2d and this layer both refuse it (tested elsewhere)
    uses_batch_stats = "train" in modes or not track_running_stats
    assume(not uses_batch_stats or shape[0] * shape[2] * shape[3] * (channels // groups) > 1)
    return Case(shape=shape, stat_groups=stat_groups,
                momentum=draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
                affine=draw(st.booleans()), affine_per_channel=draw(st.booleans()),
                track_running_stats=track_running_stats, eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
                channels_last=draw(st.booleans()), modes=modes, seed=draw(st.integers(0, 2**31 - 1)))


class Float64GroupedBatchNorm(nn.Module):
    """Grouped BatchNorm written out in float64: statistics over (N, C/G, H, W) of each group of C/G channels."""

    def __init__(self, case: Case, weight: torch.Tensor | None, bias: torch.Tensor | None):
        super().__init__()
        self.case = case
        self.weight = nn.Parameter(weight.double()) if weight is not None else None
        self.bias = nn.Parameter(bias.double()) if bias is not None else None
        groups = case.groups
        self.running_mean = torch.zeros(groups, dtype=torch.float64, device=DEVICE)
        self.running_var = torch.ones(groups, dtype=torch.float64, device=DEVICE)
        self.num_batches_tracked = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        case, groups = self.case, self.case.groups
        batch, channels, height, width = x.shape
        grouped = x.double().reshape(batch, groups, -1)
        if self.training or not case.track_running_stats:
            mean = grouped.mean(dim=(0, 2))
            var = ((grouped - mean.view(1, groups, 1)) ** 2).mean(dim=(0, 2))
            if self.training and case.track_running_stats:
                self.num_batches_tracked += 1
                factor = 1.0 / self.num_batches_tracked if case.momentum is None else case.momentum
                count = grouped.shape[0] * grouped.shape[2]
                with torch.no_grad():
                    self.running_mean = (1 - factor) * self.running_mean + factor * mean
                    self.running_var = (1 - factor) * self.running_var + factor * var * count / (count - 1)
        else:
            mean, var = self.running_mean, self.running_var
        y = ((grouped - mean.view(1, groups, 1)) / torch.sqrt(var.view(1, groups, 1) + case.eps))
        y = y.reshape(batch, channels, height, width)
        channels_per_affine = channels // self.weight.numel() if self.weight is not None else 1
        if self.weight is not None:
            y = y * self.weight.repeat_interleave(channels_per_affine).view(1, channels, 1, 1)
            y = y + self.bias.repeat_interleave(channels_per_affine).view(1, channels, 1, 1)
        return y


def build_pair(case: Case, dtype: torch.dtype, backend: str):
    """The layer under test with random affine parameters, and its float64 oracle holding the same ones."""
    generator = torch.Generator().manual_seed(case.seed)
    layer = BatchNorm2d(case.shape[1], eps=case.eps, momentum=case.momentum, affine=case.affine,
                        track_running_stats=case.track_running_stats, stat_groups=case.stat_groups,
                        affine_per_channel=case.affine_per_channel, backend=backend, device=DEVICE, dtype=dtype)
    if case.affine:
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) + 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator))
    if case.groups == case.shape[1]:
        oracle = nn.BatchNorm2d(case.shape[1], eps=case.eps, momentum=case.momentum, affine=case.affine,
                                track_running_stats=case.track_running_stats, device=DEVICE, dtype=torch.float64)
        if case.affine:
            with torch.no_grad():
                oracle.weight.copy_(layer.weight)
                oracle.bias.copy_(layer.bias)
    else:
        oracle = Float64GroupedBatchNorm(case, layer.weight.detach() if case.affine else None,
                                         layer.bias.detach() if case.affine else None)
    return layer, oracle, generator


def step_inputs(case: Case, generator: torch.Generator, dtype: torch.dtype):
    """An input with a per-channel offset and scale (so a wrong axis shows), and an upstream gradient."""
    channels = case.shape[1]
    offset = torch.randn(1, channels, 1, 1, generator=generator) * 3
    scale = torch.rand(1, channels, 1, 1, generator=generator) * 2 + 0.5
    x = (torch.randn(case.shape, generator=generator) * scale + offset).to(DEVICE, dtype)
    upstream = torch.randn(case.shape, generator=generator).to(DEVICE, dtype)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, upstream


def check_against_oracle(case: Case, dtype: torch.dtype, backend: str, compare) -> None:
    # what the examples covered: `pytest --hypothesis-show-statistics` counts these
    event(f"momentum {'None' if case.momentum is None else 'float'}")
    event(f"affine {case.affine}" + ("" if not case.affine else f", per channel {case.affine_per_channel}"))
    event(f"track_running_stats {case.track_running_stats}")
    event("channels_last" if case.channels_last else "NCHW")
    event(f"steps {len(case.modes)}" + (", with eval" if "eval" in case.modes else ""))
    layer, oracle, generator = build_pair(case, dtype, backend)
    for step, mode in enumerate(case.modes):
        layer.train(mode == "train")
        oracle.train(mode == "train")
        x, upstream = step_inputs(case, generator, dtype)
        x_ours = x.clone().requires_grad_()
        x_oracle = x.double().requires_grad_()
        y, y_oracle = layer(x_ours), oracle(x_oracle)
        assert y.dtype == dtype and y.shape == x.shape
        if case.channels_last:
            assert y.is_contiguous(memory_format=torch.channels_last)
        (y * upstream).sum().backward()
        (y_oracle * upstream.double()).sum().backward()
        where = f"step {step} ({mode})"
        # Gradients can cancel to nearly 0 (two values per statistic give an input gradient of exactly 0 without
        # eps), so their errors are measured against the size of the upstream gradient they are made from.
        gradient_scale = upstream.double().norm().item()
        compare(y, y_oracle, f"{where} output")
        compare(x_ours.grad, x_oracle.grad, f"{where} input grad", gradient_scale)
        if case.affine:
            compare(layer.weight.grad, oracle.weight.grad, f"{where} weight grad", gradient_scale)
            compare(layer.bias.grad, oracle.bias.grad, f"{where} bias grad", gradient_scale)
            layer.zero_grad(), oracle.zero_grad()
        if case.track_running_stats:
            compare(layer.running_mean, oracle.running_mean, f"{where} running_mean")
            compare(layer.running_var, oracle.running_var, f"{where} running_var")
            assert int(layer.num_batches_tracked) == int(oracle.num_batches_tracked), where
        else:
            assert layer.running_mean is None and layer.running_var is None


def float64_exact(ours, reference, what, scale=0.0):
    torch.testing.assert_close(ours, reference.to(ours.dtype), rtol=1e-10, atol=1e-10,
                               msg=lambda text: f"{what}: {text}")


def fp32_close(ours, reference, what, scale=0.0):
    """Relative error over the whole tensor (an element near 0 does not make fp32 rounding look large), against
    the tensor's own norm or `scale`, whichever is larger."""
    ours, reference = ours.detach().double(), reference.detach().double()
    assert torch.isfinite(ours).all(), f"{what}: not finite"
    error = (ours - reference).norm().item() / max(reference.norm().item(), scale, 1e-6)
    assert error < 1e-4, f"{what}: relative error {error:.2e}"


# the same examples on every run, and no example database left behind
FIXED_EXAMPLES = dict(derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("grouping", GROUPINGS)
@settings(max_examples=40, **FIXED_EXAMPLES)
@given(data=st.data())
def test_pytorch_path_in_float64_matches_the_oracle(grouping, data):
    check_against_oracle(data.draw(cases(grouping)), torch.float64, "torch", float64_exact)


def _kernels_available() -> bool:
    from bnexp.norm.triton_function import kernels_interpreted, triton_status

    return kernels_interpreted() if DEVICE == "cpu" else triton_status()[0]


@pytest.mark.slow
@pytest.mark.skipif(not _kernels_available(), reason="Triton cannot run here (no interpreter, no CUDA)")
@pytest.mark.parametrize("grouping", GROUPINGS)
@settings(max_examples=10, **FIXED_EXAMPLES)
@given(data=st.data())
def test_triton_path_in_float32_matches_the_oracle(grouping, data):
    check_against_oracle(data.draw(cases(grouping)), torch.float32, "triton", fp32_close)
