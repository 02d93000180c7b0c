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


# ---------------------------------------------------------------------------------------------- ports of torch's tests
def per_channel_pair(channels: int, backend: str, dtype=torch.float32, **options):
    """bnexp's layer and nn.BatchNorm2d with the same options and the same random parameters and buffers."""
    reference = randomized(nn.BatchNorm2d(channels, **options, device=DEVICE, dtype=dtype))
    ours = BatchNorm2d(channels, **options, device=DEVICE, dtype=dtype, backend=backend)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


def assert_steps_match(ours, reference, x: torch.Tensor, what: str) -> None:
    """One forward and backward through both layers, in their current modes, on the same input (any layout)."""
    upstream = torch.randn(x.shape, device=DEVICE, dtype=x.dtype)
    outcomes = []
    for layer in (ours, reference):
        x_leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        y = layer(x_leaf)
        (y * upstream).sum().backward()
        outcomes.append(Step(y.detach(), {"input": x_leaf.grad, "weight": layer.weight.grad, "bias": layer.bias.grad},
                             {name: getattr(layer, name).clone() for name in ("running_mean", "running_var",
                                                                              "num_batches_tracked")}))
        layer.zero_grad(set_to_none=True)
    try:
        assert_same_outcome(*outcomes, x.dtype)
    except AssertionError as error:
        raise AssertionError(f"{what}: {error}") from error


@pytest.mark.parametrize("backend", backend_params())
def test_cumulative_average(request, backend):
    """test_nn's cumulative moving average (momentum=None): after batches of different sizes the running buffers are
    the plain average of the batch means and of the unbiased batch variances, as in nn.BatchNorm2d."""
    seed_from(request)
    ours, reference = per_channel_pair(3, backend, momentum=None)
    with torch.no_grad():
        for layer in (ours, reference):
            layer.reset_running_stats()
    means, variances = [], []
    for batch in (2, 5, 3):
        x = torch.randn(batch, 3, 4, 2, device=DEVICE) * torch.tensor([1.0, 3.0, 0.5], device=DEVICE).view(1, 3, 1, 1)
        assert_steps_match(ours, reference, x + batch, f"batch of {batch}")
        per_channel = (x + batch).double().transpose(0, 1).reshape(3, -1)
        means.append(per_channel.mean(dim=1))
        variances.append(per_channel.var(dim=1))
    torch.testing.assert_close(ours.running_mean.double(), torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.running_var.double(), torch.stack(variances).mean(0), rtol=1e-5, atol=1e-6)
    assert int(ours.num_batches_tracked) == 3


@pytest.mark.parametrize("backend", backend_params())
def test_eval_after_train(request, backend):
    """test_nn's batchnorm eval test: after training steps, eval mode normalises with the running statistics, the
    same output for the same input every time, the buffers untouched, and gradients without the batch-statistics
    terms, as nn.BatchNorm2d."""
    seed_from(request)
    ours, reference = per_channel_pair(4, backend)
    for step in range(2):
        assert_steps_match(ours, reference, torch.randn(3, 4, 3, 3, device=DEVICE) * 2 + step, f"train step {step}")
    ours.eval(), reference.eval()
    x = torch.randn(3, 4, 3, 3, device=DEVICE)
    buffers = {name: buffer.clone() for name, buffer in ours.named_buffers()}
    first = ours(x)
    assert_steps_match(ours, reference, x, "eval")
    torch.testing.assert_close(ours(x), first, rtol=0, atol=0)
    for name, buffer in ours.named_buffers():
        assert torch.equal(buffer, buffers[name]), name


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stat_groups", [None, 2, 1], ids=["per_channel", "grouped", "shared"])
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 4, 0, 3)], ids=["no_images", "no_rows"])
def test_empty_batch(backend, mode, stat_groups, shape):
    """test_nn's zero-size batch: an empty output of the input's shape and layout; in training the batch is counted
    (num_batches_tracked + 1, as torch counts it) but the running statistics stay; weight and bias get zero
    gradients. For every statistic grouping."""
    layer = randomized(BatchNorm2d(4, stat_groups=stat_groups, backend=backend, device=DEVICE))
    buffers = {name: buffer.clone() for name, buffer in layer.named_buffers()}
    layer.train(mode == "train")
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(shape, device=DEVICE).contiguous(memory_format=memory_format).requires_grad_()
        y = layer(x)
        assert y.shape == x.shape and y.stride() == x.stride() and y.dtype == x.dtype
        y.sum().backward()
        assert x.grad.shape == x.shape
    assert torch.equal(layer.weight.grad, torch.zeros(4, device=DEVICE))
    assert torch.equal(layer.bias.grad, torch.zeros(4, device=DEVICE))
    assert torch.equal(layer.running_mean, buffers["running_mean"])
    assert torch.equal(layer.running_var, buffers["running_var"])
    assert int(layer.num_batches_tracked) == 3 + (2 if mode == "train" else 0)
    if stat_groups is None:  # nn.BatchNorm2d counts the same
        reference = randomized(nn.BatchNorm2d(4, device=DEVICE)).train(mode == "train")
        reference(torch.randn(shape, device=DEVICE))
        assert int(reference.num_batches_tracked) == 3 + (1 if mode == "train" else 0)


def test_state_dict_round_trip_with_torch():
    """A trained layer's state_dict loads into nn.BatchNorm2d and back with every value kept, with and without
    bias; torch's load rules for num_batches_tracked hold (a state dict without it, built by hand or loaded with
    strict=False, keeps the layer's current count)."""
    for bias in (True, False):
        ours = BatchNorm2d(5, bias=bias, device=DEVICE)
        randomized(ours)(torch.randn(4, 5, 3, 3, device=DEVICE))
        reference = torch_batchnorm_with_bias(5, bias)
        reference.load_state_dict(ours.state_dict())
        back = BatchNorm2d(5, bias=bias, device=DEVICE)
        back.load_state_dict(reference.state_dict())
        assert list(back.state_dict()) == list(reference.state_dict()) == list(ours.state_dict())
        for key, value in ours.state_dict().items():
            assert torch.equal(back.state_dict()[key], value) and torch.equal(reference.state_dict()[key], value)

    source = BatchNorm2d(3, device=DEVICE)
    source(torch.randn(4, 3, 2, 2, device=DEVICE))
    without_count = source.state_dict()
    del without_count["num_batches_tracked"]
    hand_built = {key: value for key, value in without_count.items()}  # no metadata: no version
    for state, strict in ((without_count, False), (hand_built, True), (hand_built, False)):
        layers = [BatchNorm2d(3, device=DEVICE), nn.BatchNorm2d(3, device=DEVICE)]
        for layer in layers:
            layer.num_batches_tracked.fill_(7)
            layer.load_state_dict(state, strict=strict)
            assert torch.equal(layer.running_mean, source.running_mean)
        assert [int(layer.num_batches_tracked) for layer in layers] == [7, 7], (strict, layers)
    with pytest.raises(RuntimeError, match="num_batches_tracked"):  # a current checkpoint missing it, strictly
        BatchNorm2d(3, device=DEVICE).load_state_dict(without_count)


def torch_batchnorm_with_bias(channels: int, bias: bool) -> nn.BatchNorm2d:
    """nn.BatchNorm2d(channels, bias=bias) on any torch: before 2.14 it has no `bias` argument, and a layer without
    its bias parameter is the same thing (F.batch_norm takes bias=None)."""
    if "bias" in inspect.signature(nn.BatchNorm2d).parameters:
        return nn.BatchNorm2d(channels, bias=bias, device=DEVICE)
    layer = nn.BatchNorm2d(channels, device=DEVICE)
    if not bias:
        layer.register_parameter("bias", None)
    return layer


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("mode", MODES)
def test_bias_false_on_any_torch(request, backend, mode):
    """bias=False (nn.BatchNorm2d's keyword since torch 2.14) is the layer's own: it works the same whether or not
    the installed torch has it, and matches a torch layer without its bias parameter."""
    seed_from(request)
    ours = BatchNorm2d(3, bias=False, backend=backend, device=DEVICE)
    assert ours.bias is None and "bias" not in ours.state_dict() and "bias=False" in repr(ours)
    reference = randomized(torch_batchnorm_with_bias(3, bias=False))
    ours.load_state_dict(reference.state_dict())
    ours.train(mode == "train"), reference.train(mode == "train")
    x = torch.randn(2, 3, 4, 4, device=DEVICE, requires_grad=True)
    upstream = torch.randn(2, 3, 4, 4, device=DEVICE)
    outcomes = [run_step(lambda layer=layer: layer, mode, x.detach(), upstream, "contiguous")
                for layer in (ours, reference)]
    assert_same_outcome(*outcomes, torch.float32)


@pytest.mark.parametrize("backend", backend_params())
def test_non_contiguous_inputs(request, backend):
    """test_nn's non-contiguous batchnorm inputs: an NCHW tensor with H and W swapped, a channels_last tensor with
    every other channel dropped, and one with a batch stride of its own, in training then in eval."""
    seed_from(request)
    ours, reference = per_channel_pair(3, backend)
    inputs = [torch.randn(2, 3, 5, 4, device=DEVICE).transpose(2, 3),
              torch.randn(2, 6, 3, 3, device=DEVICE).contiguous(memory_format=torch.channels_last)[:, ::2],
              torch.randn(4, 3, 3, 3, device=DEVICE)[::2]]
    for mode in MODES:
        ours.train(mode == "train"), reference.train(mode == "train")
        for index, x in enumerate(inputs):
            assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
            assert_steps_match(ours, reference, x, f"{mode}, input {index}")


# ---------------------------------------------------------------------------------------------- second derivatives
def layer_function(layer: BatchNorm2d):
    """The layer as a function of (input, weight, bias), for gradcheck: every call gets fresh copies of the running
    buffers, so the numerical derivatives see the same function each time and no saved buffer changes under a
    graph."""
    buffers = {name: buffer.clone() for name, buffer in layer.named_buffers()}

    def function(x, weight, bias):
        state = {"weight": weight, "bias": bias, **{name: buffer.clone() for name, buffer in buffers.items()}}
        return torch.func.functional_call(layer, state, (x,))
    return function


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stat_groups", [None, 2], ids=["per_channel", "grouped"])
def test_gradgrad_float64(request, backend, mode, stat_groups):
    """test_modules' gradgrad: gradcheck and gradgradcheck in float64, on both backends (the Triton path's double
    backward recomputes the gradients in differentiable PyTorch ops), with the ModuleInfo's gradcheck mode."""
    seed_from(request)
    layer = randomized(BatchNorm2d(4, stat_groups=stat_groups, backend=backend, device=DEVICE, dtype=torch.float64))
    layer.train(mode == "train")
    inputs = (torch.randn(2, 4, 3, 2, device=DEVICE, dtype=torch.float64, requires_grad=True),
              layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_())
    function = layer_function(layer)
    fast_mode = MODULE_INFO.gradcheck_fast_mode if MODULE_INFO.gradcheck_fast_mode is not None else True
    assert torch.autograd.gradcheck(function, inputs, fast_mode=fast_mode)
    assert torch.autograd.gradgradcheck(function, inputs, fast_mode=fast_mode)


@pytest.mark.parametrize("path", ["eager", "custom_ops"])
@pytest.mark.parametrize("mode", MODES)
def test_triton_hessian_vector_product_matches_torch(request, monkeypatch, path, mode):
    """A gradient penalty and a Hessian-vector product through the Triton path in float32, both host paths, against
    the PyTorch path: the gradient carries a graph, and its derivatives are the PyTorch path's."""
    if not _kernels_available():
        pytest.skip("Triton cannot run here")
    from bnexp.norm import triton_function

    if path == "custom_ops":
        monkeypatch.setattr(triton_function, "triton_grouped_batch_norm",
                            triton_function.grouped_batch_norm_custom_ops)
    seed_from(request)
    x = torch.randn(3, 4, 3, 3, device=DEVICE) * 2 + 1
    direction = torch.randn_like(x)
    state = randomized(BatchNorm2d(4, stat_groups=2, device=DEVICE)).state_dict()
    results = []
    for backend in BACKENDS:
        layer = BatchNorm2d(4, stat_groups=2, backend=backend, device=DEVICE).train(mode == "train")
        layer.load_state_dict(state)
        x_leaf = x.clone().requires_grad_()
        loss = layer(x_leaf).sin().sum()
        input_grad, weight_grad = torch.autograd.grad(loss, (x_leaf, layer.weight), create_graph=True)
        assert input_grad.requires_grad and weight_grad.requires_grad
        penalty = (input_grad * direction).sum() + weight_grad.square().sum()
        results.append(torch.autograd.grad(penalty, (x_leaf, layer.weight, layer.bias)))
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_compiled_double_backward_is_refused(request):
    """torch.compile has no double backward (aot_autograd raises): through the layer's custom ops it is a clear
    error, not a silently wrong second derivative."""
    if not _kernels_available():
        pytest.skip("Triton cannot run here")
    seed_from(request)
    layer = BatchNorm2d(4, stat_groups=2, backend="triton", device=DEVICE)
    compiled = torch.compile(layer, backend="aot_eager" if DEVICE == "cpu" else "inductor", fullgraph=True)
    x = torch.randn(3, 4, 3, 3, device=DEVICE, requires_grad=True)
    (input_grad,) = torch.autograd.grad(compiled(x).sin().sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        input_grad.square().sum().backward()


# ---------------------------------------------------------------------------------------------- deliberate differences
@dataclasses.dataclass
class KnownDifference:
    """Where bnexp's layer differs from nn.BatchNorm2d on purpose: what torch does, and the clean refusal bnexp gives
    instead (its exception type and message, which names the layer and the fix)."""
    build: dict  # constructor arguments of both layers
    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    torch_outcome: type[Exception] | None  # None: torch computes something
    ours: type[Exception]
    message: str  # regex the message of ours must match
    on_construction: bool = False


KNOWN_DIFFERENCES = {
    # torch's F.batch_norm reports the running_mean size; bnexp names the layer and the width it needs
    "wrong_channel_count": KnownDifference(
        dict(num_features=3), (2, 4, 3, 3), torch.float32, RuntimeError, ValueError,
        r"built for 3 channels but got input with 4 channels.*num_features=4"),
    # without running statistics and affine parameters torch's layer works on any width; bnexp's still checks it
    "wrong_channel_count_without_state": KnownDifference(
        dict(num_features=3, affine=False, track_running_stats=False), (2, 4, 3, 3), torch.float32, None,
        ValueError, r"built for 3 channels but got input with 4 channels"),
    # torch builds a layer of no channels and fails in its forward; bnexp refuses to build it
    "no_channels": KnownDifference(
        dict(num_features=0), (2, 0, 3, 3), torch.float32, IndexError, ValueError,
        r"num_features must be positive", on_construction=True),
    # torch's dispatcher has no integer batch_norm; bnexp says so before any kernel reads the integers as floats
    "integer_input": KnownDifference(
        dict(num_features=3), (2, 3, 3, 3), torch.int64, NotImplementedError, TypeError,
        r"expects a floating-point input, got torch.int64.*\.float\(\)"),
}


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("name", KNOWN_DIFFERENCES)
def test_known_differences_are_clean_refusals(name, backend):
    """Each deliberate difference still stands as recorded: torch still behaves as listed (else the list is stale),
    and bnexp refuses with the listed exception and a message naming the problem and the fix."""
    difference = KNOWN_DIFFERENCES[name]
    x = torch.ones(difference.input_shape, dtype=difference.input_dtype)
    try:  # torch's layer on the CPU, where its behaviour was recorded
        nn.BatchNorm2d(**difference.build)(x)
        torch_raised = None
    except Exception as error:
        torch_raised = type(error)
    assert torch_raised is difference.torch_outcome
    with pytest.raises(difference.ours, match=difference.message):
        layer = BatchNorm2d(**difference.build, backend=backend, device=DEVICE, layer_name="stem.norm")
        assert not difference.on_construction, "built a layer that should have been refused"
        layer(x.to(DEVICE))
