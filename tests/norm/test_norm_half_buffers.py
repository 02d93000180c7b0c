"""A half-precision layer (`BatchNorm2d(C, dtype=torch.bfloat16)` or float16): its running buffers are in that
dtype, while the statistics are computed in fp32. The buffers after a few training steps must match the running
average written out in float64 on the same inputs, and nn.BatchNorm2d in the same dtype for per-channel
statistics, to the half dtype's rounding (bf16 keeps 8 significant bits: 2% covers a few roundings per step).

Moving averages are checked with an input whose mean and variance sit far from the buffers' start (0 and 1), so
that a wrong update factor (e.g. 1 - momentum for momentum) moves the buffers by many times the tolerance. And
momentum=0.0 keeps the buffers where they are, whatever their dtype."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bnexp.norm import BatchNorm2d

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CHANNELS = 8
STEPS = 3
HALF_DTYPES = [torch.bfloat16, torch.float16]
TOLERANCE = dict(rtol=2e-2, atol=2e-2)


def _kernels_available() -> bool:
    try:
        from bnexp.norm.triton_launch import kernels_interpreted, triton_status
    except Exception:
        return False
    return kernels_interpreted() if DEVICE == "cpu" else triton_status()[0]


# Both dtypes on the PyTorch path; bf16 (what autocast makes) on the Triton kernels, which store into the buffers'
# dtype themselves. In the interpreter each kernel case costs seconds, hence one dtype there.
BACKEND_AND_DTYPE = [("torch", torch.bfloat16), ("torch", torch.float16),
                     pytest.param("triton", torch.bfloat16, marks=pytest.mark.skipif(
                         not _kernels_available(), reason="Triton cannot run here (no interpreter, no CUDA)"))]


def batches(dtype: torch.dtype) -> list[torch.Tensor]:
    """Small batches whose channels have means 2..5 and standard deviations 2..4, different at every step."""
    generator = torch.Generator().manual_seed(0)
    means = torch.linspace(2, 5, CHANNELS).view(1, CHANNELS, 1, 1)
    stds = torch.linspace(2, 4, CHANNELS).view(1, CHANNELS, 1, 1)
    return [(torch.randn(4, CHANNELS, 3, 3, generator=generator) * stds * (1 + step / 4) + means - step)
            .to(dtype).to(DEVICE) for step in range(STEPS)]


def float64_running_stats(inputs: list[torch.Tensor], stat_groups: int, momentum: float | None):
    """The running mean and unbiased variance per group after each input, in float64 from the inputs as given."""
    running_mean = torch.zeros(stat_groups, dtype=torch.float64)
    running_var = torch.ones(stat_groups, dtype=torch.float64)
    for count, x in enumerate(inputs, start=1):
        grouped = x.double().cpu().reshape(x.shape[0], stat_groups, -1).transpose(0, 1).reshape(stat_groups, -1)
        factor = momentum if momentum is not None else 1 / count
        running_mean = (1 - factor) * running_mean + factor * grouped.mean(1)
        running_var = (1 - factor) * running_var + factor * grouped.var(1, correction=1)
    return running_mean, running_var


@pytest.mark.parametrize("backend, dtype", BACKEND_AND_DTYPE, ids=str)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("stat_groups", [CHANNELS, 2])
def test_half_precision_buffers_follow_the_float64_running_average(backend, dtype, momentum, stat_groups):
    layer = BatchNorm2d(CHANNELS, momentum=momentum, stat_groups=stat_groups, backend=backend, dtype=dtype,
                        device=DEVICE)
    inputs = batches(dtype)
    for x in inputs:
        y = layer(x)
        assert y.dtype == dtype
    assert layer.running_mean.dtype == layer.running_var.dtype == dtype
    assert int(layer.num_batches_tracked) == STEPS
    expected_mean, expected_var = float64_running_stats(inputs, stat_groups, momentum)
    torch.testing.assert_close(layer.running_mean.double().cpu(), expected_mean, **TOLERANCE)
    torch.testing.assert_close(layer.running_var.double().cpu(), expected_var, **TOLERANCE)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_half_precision_buffers_match_nn_batchnorm_in_the_same_dtype(dtype, momentum):
    ours = BatchNorm2d(CHANNELS, momentum=momentum, backend="torch", dtype=dtype, device=DEVICE)
    theirs = nn.BatchNorm2d(CHANNELS, momentum=momentum, dtype=dtype, device=DEVICE)
    for x in batches(dtype):
        ours(x)
        theirs(x)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(ours, name).double(), getattr(theirs, name).double(), **TOLERANCE,
                                   msg=lambda text, name=name: f"{name}: {text}")


@pytest.mark.parametrize("backend, dtype", BACKEND_AND_DTYPE, ids=str)
def test_evaluation_normalises_with_the_half_precision_buffers(backend, dtype):
    layer = BatchNorm2d(CHANNELS, stat_groups=2, backend=backend, dtype=dtype, device=DEVICE)
    inputs = batches(dtype)
    for x in inputs:
        layer(x)
    layer.eval()
    x = inputs[0]
    mean = layer.running_mean.double().repeat_interleave(CHANNELS // 2).view(1, CHANNELS, 1, 1)
    var = layer.running_var.double().repeat_interleave(CHANNELS // 2).view(1, CHANNELS, 1, 1)
    expected = (x.double() - mean) / torch.sqrt(var + layer.eps)
    torch.testing.assert_close(layer(x).double(), expected, rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("stat_groups", [CHANNELS, 2])
def test_momentum_zero_leaves_the_buffers_as_they_were(dtype, stat_groups):
    """momentum=0.0 is a number, not None (the cumulative average): training must not move the buffers, in the
    layer's own dtype or another; nn.BatchNorm2d does the same."""
    layer = BatchNorm2d(CHANNELS, momentum=0.0, stat_groups=stat_groups, backend="torch", dtype=dtype, device=DEVICE)
    with torch.no_grad():
        layer.running_mean.fill_(0.5)
        layer.running_var.fill_(2.0)
    for x in batches(dtype):
        layer(x)
    assert torch.equal(layer.running_mean, torch.full_like(layer.running_mean, 0.5))
    assert torch.equal(layer.running_var, torch.full_like(layer.running_var, 2.0))
    assert int(layer.num_batches_tracked) == STEPS
