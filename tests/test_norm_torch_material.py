"""bnexp's BatchNorm2d through PyTorch's own test material for nn.BatchNorm2d, on both backends.

The material is called from torch.testing._internal, not copied:
- the ModuleInfo of nn.BatchNorm2d in common_modules.module_db: its module inputs (constructor arguments and a
  forward input each: the default layer, momentum=None, momentum=0.8, no affine, no running statistics, an empty
  batch, bias=False) and its error inputs (eps=-1 and eps=0 must be refused in the forward);
- the OpInfo of nn.functional.batch_norm in common_methods_invocations.op_db: its samples with 4-D inputs (batch
  statistics or running statistics, momentum=-1, eps=0.5, random weight, bias and running statistics).
All their inputs are small (at most 2x3x6x6), so the Triton interpreter runs them as they are.

Every sample runs in float32 and float64, in training and in eval mode (an OpInfo sample says which), with its input
contiguous, channels_last and non-contiguous, on backend torch and backend triton (the kernels run in the Triton
interpreter without a GPU). The layer is built with the sample's constructor arguments next to nn.BatchNorm2d, for
an OpInfo sample loaded with its weight, bias and running statistics next to F.batch_norm itself. After one step
(forward and backward) the outputs, the input, weight and bias gradients and the buffers must match. Where torch
raises, bnexp must raise the same exception type, and the error inputs' message too.

Then ports, in spirit, of the batchnorm tests of PyTorch's test/test_nn.py and test/test_modules.py (cumulative
average, eval after train, an empty batch, a state_dict round trip, a non-contiguous input, gradgrad), and the
deliberate differences from nn.BatchNorm2d, each of which must stay a clean refusal.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import zlib

import pytest
import torch
from torch import nn

from bnexp.norm import BatchNorm2d

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest: pip install -e '.[dev]'")
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton"]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
LAYOUTS = ["contiguous", "channels_last", "non_contiguous"]
MODES = ["train", "eval"]

(MODULE_INFO,) = [info for info in module_db if info.module_cls is nn.BatchNorm2d]
(BATCH_NORM_OP,) = [op for op in op_db if op.name == "nn.functional.batch_norm" and op.variant_test_name == ""]

# float32: the statistics are summed in another order than torch's (a few ulps of a sum of at most 216 values);
# float64: torch's own default tolerance for float64
TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-7, atol=1e-7)}


def _kernels_available() -> bool:
    from bnexp.norm.triton_function import kernels_interpreted, triton_status

    return kernels_interpreted() if DEVICE == "cpu" else triton_status()[0]


def backend_params():
    needs_kernels = pytest.mark.skipif(not _kernels_available(), reason="Triton cannot run here")
    return [pytest.param("torch"), pytest.param("triton", marks=needs_kernels)]


def module_samples(dtype: torch.dtype, training: bool):
    return MODULE_INFO.module_inputs_func(MODULE_INFO, device=DEVICE, dtype=dtype, requires_grad=False,
                                          training=training)


def op_samples_4d(dtype: torch.dtype):
    return [sample for sample in BATCH_NORM_OP.sample_inputs(DEVICE, dtype, requires_grad=False)
            if sample.input.dim() == 4]


MODULE_SAMPLE_NAMES = [sample.desc or "default" for sample in module_samples(torch.float32, True)]
OP_SAMPLE_NAMES = [f"{'x'.join(map(str, sample.input.shape))}-{'train' if sample.kwargs.get('training') else 'eval'}"
                   for sample in op_samples_4d(torch.float32)]
ERROR_SAMPLE_NAMES = [
    "-".join(f"{key}={value}" for key, value in error.module_error_input.constructor_input.kwargs.items())
    for error in MODULE_INFO.module_error_inputs_func(MODULE_INFO, device=DEVICE, dtype=torch.float32,
                                                      requires_grad=False, training=True)]


def seed_from(request) -> None:
    # make_tensor and the inputs below draw from the global generator: reproducible, and different per case
    torch.manual_seed(zlib.crc32(request.node.name.encode()))


# ---------------------------------------------------------------------------------------------- running a layer
def in_layout(values: torch.Tensor, layout: str) -> torch.Tensor:
    """A fresh leaf holding `values` in the layout: NCHW, channels_last, or strided (every other element of a tensor
    twice as wide), as torch's module tests build non-contiguous inputs."""
    if layout == "channels_last":
        x = values.clone().contiguous(memory_format=torch.channels_last)
    elif layout == "non_contiguous":
        x = torch.repeat_interleave(values, 2, dim=-1)[..., ::2]
        assert values.numel() == 0 or not x.is_contiguous()
    else:
        x = values.clone()
    return x.detach().requires_grad_(values.is_floating_point())


@dataclasses.dataclass
class Step:
    output: torch.Tensor
    grads: dict[str, torch.Tensor | None]  # input, weight, bias
    buffers: dict[str, torch.Tensor | None]  # after the step


def run_step(build, mode: str, values: torch.Tensor, upstream: torch.Tensor, layout: str):
    """Build a layer and run one forward and backward: the step, or the exception raised on the way."""
    try:
        layer = build()
        layer.train(mode == "train")
        x = in_layout(values, layout)
        y = layer(x)
        (y * upstream).sum().backward()
        grads = {"input": x.grad}
        for name in ("weight", "bias"):
            parameter = getattr(layer, name, None)
            grads[name] = None if parameter is None else parameter.grad
        buffers = {name: getattr(layer, name, None) for name in ("running_mean", "running_var", "num_batches_tracked")}
        return Step(y.detach(), grads, buffers)
    except Exception as error:  # an outcome to compare, like a result
        return error


def assert_same_outcome(ours, reference, dtype: torch.dtype,
                        compare_buffers=("running_mean", "running_var", "num_batches_tracked")) -> None:
    if isinstance(reference, Exception):
        assert isinstance(ours, Exception), f"torch raised {reference!r}, bnexp did not"
        assert type(ours) is type(reference), f"torch raised {reference!r}, bnexp {ours!r}"
        return
    if isinstance(ours, Exception):
        raise AssertionError(f"bnexp raised where torch did not: {ours!r}") from ours
    tolerance = TOLERANCES[dtype]
    assert ours.output.dtype == reference.output.dtype and ours.output.shape == reference.output.shape
    for memory_format in (torch.contiguous_format, torch.channels_last):
        assert (ours.output.is_contiguous(memory_format=memory_format)
                == reference.output.is_contiguous(memory_format=memory_format)), f"output layout ({memory_format})"
    torch.testing.assert_close(ours.output, reference.output, **tolerance, msg=lambda text: f"output: {text}")
    for name, expected in reference.grads.items():
        assert (ours.grads[name] is None) == (expected is None), f"{name} grad: {ours.grads[name]} vs {expected}"
        if expected is not None:
            torch.testing.assert_close(ours.grads[name], expected, **tolerance,
                                       msg=lambda text, name=name: f"{name} grad: {text}")
    for name in compare_buffers:
        expected = reference.buffers[name]
        assert (ours.buffers[name] is None) == (expected is None), f"{name}: {ours.buffers[name]} vs {expected}"
        if expected is not None:
            torch.testing.assert_close(ours.buffers[name], expected, **tolerance,
                                       msg=lambda text, name=name: f"{name}: {text}")


def randomized(layer: nn.Module) -> nn.Module:
    """The layer with random affine parameters and running statistics, and 3 batches already counted: torch's start
    at 1, 0, 0, 1 and 0, which would hide a swapped or missing one, and make the first step of a cumulative average
    (momentum=None, factor 1/num_batches_tracked) a plain copy of the batch statistics."""
    with torch.no_grad():
        if getattr(layer, "weight", None) is not None:
            layer.weight.copy_(torch.randn_like(layer.weight) + 0.5)
        if getattr(layer, "bias", None) is not None:
            layer.bias.copy_(torch.randn_like(layer.bias))
        if getattr(layer, "running_mean", None) is not None:
            layer.running_mean.copy_(torch.randn_like(layer.running_mean))
            layer.running_var.copy_(torch.rand_like(layer.running_var) + 0.5)
            layer.num_batches_tracked.fill_(3)
    return layer


# ---------------------------------------------------------------------------------------------- ModuleInfo samples
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sample", range(len(MODULE_SAMPLE_NAMES)), ids=MODULE_SAMPLE_NAMES)
def test_module_inputs_match_torch(request, sample, dtype, mode, layout, backend):
    seed_from(request)
    dtype = DTYPES[dtype]
    module_input = module_samples(dtype, mode == "train")[sample]
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    x = module_input.forward_input.args[0]
    upstream = torch.randn_like(x)
    reference_layer = randomized(nn.BatchNorm2d(*args, **kwargs, device=DEVICE, dtype=dtype))

    def build_ours():
        layer = BatchNorm2d(*args, **kwargs, device=DEVICE, dtype=dtype, backend=backend)
        layer.load_state_dict(reference_layer.state_dict())
        return layer

    ours = run_step(build_ours, mode, x, upstream, layout)
    reference = run_step(lambda: reference_layer, mode, x, upstream, layout)
    assert_same_outcome(ours, reference, dtype)


# ---------------------------------------------------------------------------------------------- ModuleInfo errors
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sample", range(len(ERROR_SAMPLE_NAMES)), ids=ERROR_SAMPLE_NAMES)
def test_module_error_inputs_match_torch(request, sample, dtype, mode, backend):
    """In training (a freshly built layer, as torch's test_errors runs them) the error inputs must raise torch's
    exception type with its message; in eval bnexp must do what nn.BatchNorm2d does (eps=0 is fine there)."""
    seed_from(request)
    dtype = DTYPES[dtype]
    error_input = MODULE_INFO.module_error_inputs_func(MODULE_INFO, device=DEVICE, dtype=dtype, requires_grad=False,
                                                       training=mode == "train")[sample]
    module_input = error_input.module_error_input
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    x = module_input.forward_input.args[0]
    upstream = torch.randn_like(x)
    ours = run_step(lambda: BatchNorm2d(*args, **kwargs, device=DEVICE, dtype=dtype, backend=backend), mode, x,
                    upstream, "contiguous")
    reference = run_step(lambda: nn.BatchNorm2d(*args, **kwargs, device=DEVICE, dtype=dtype), mode, x, upstream,
                         "contiguous")
    if mode == "train":
        assert error_input.error_on in (ModuleErrorEnum.FORWARD_ERROR, ModuleErrorEnum.CONSTRUCTION_ERROR)
        assert isinstance(ours, error_input.error_type), f"expected {error_input.error_type.__name__}, got {ours!r}"
        assert re.search(error_input.error_regex, str(ours)), str(ours)
    assert_same_outcome(ours, reference, dtype)


# ---------------------------------------------------------------------------------------------- OpInfo samples
class FunctionalBatchNorm(nn.Module):
    """The OpInfo's own op (F.batch_norm) on one sample's running statistics, weight and bias, as a module."""

    def __init__(self, sample):
        super().__init__()
        running_mean, running_var, weight, bias = sample.args
        self.kwargs = sample.kwargs
        self.weight = nn.Parameter(weight.clone()) if weight is not None else None
        self.bias = nn.Parameter(bias.clone()) if bias is not None else None
        self.register_buffer("running_mean", running_mean.clone())
        self.register_buffer("running_var", running_var.clone())

    def forward(self, x):
        return BATCH_NORM_OP.op(x, self.running_mean, self.running_var, self.weight, self.bias, **self.kwargs)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sample", range(len(OP_SAMPLE_NAMES)), ids=OP_SAMPLE_NAMES)
def test_functional_samples_match_torch(request, sample, dtype, layout, backend):
    """F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps) is the layer with those
    buffers and parameters, in training mode when `training`, else in eval mode."""
    seed_from(request)
    dtype = DTYPES[dtype]
    op_sample = op_samples_4d(dtype)[sample]
    reference_layer = FunctionalBatchNorm(op_sample)
    channels = op_sample.input.shape[1]
    kwargs = op_sample.kwargs
    mode = "train" if kwargs.get("training", False) else "eval"
    defaults = inspect.signature(BATCH_NORM_OP.op).parameters

    def build_ours():
        layer = BatchNorm2d(channels, eps=kwargs.get("eps", defaults["eps"].default),
                            momentum=kwargs.get("momentum", defaults["momentum"].default), device=DEVICE,
                            dtype=dtype, backend=backend)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(layer, name).copy_(getattr(reference_layer, name))
        return layer

    upstream = torch.randn_like(op_sample.input)
    ours = run_step(build_ours, mode, op_sample.input, upstream, layout)
    reference = run_step(lambda: reference_layer, mode, op_sample.input, upstream, layout)
    assert_same_outcome(ours, reference, dtype, compare_buffers=("running_mean", "running_var"))
