"""The PyTorch path of bnexp's BatchNorm2d against nn.BatchNorm2d and a float64 oracle."""
import pytest
import torch
from torch import nn

from bnexp.norm import BatchNorm2d


def random_input(shape, channels_last=False, dtype=torch.float32, seed=None):
    generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    # Non-zero mean and non-unit scale per channel, so a wrong axis shows up.
    channels = shape[1]
    offset = torch.randn(1, channels, 1, 1, generator=generator) * 3
    scale = torch.rand(1, channels, 1, 1, generator=generator) * 4 + 0.5
    x = torch.randn(*shape, generator=generator) * scale + offset
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def randomize_affine(layer, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator))


SHAPES = [(4, 3, 5, 7), (2, 8, 4, 4), (3, 16, 3, 3), (8, 1, 2, 2), (2, 6, 1, 9)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_per_channel_matches_torch_batchnorm(shape, channels_last, momentum):
    channels = shape[1]
    ours = BatchNorm2d(channels, momentum=momentum, backend="torch")
    randomize_affine(ours, seed=shape[1])
    reference = nn.BatchNorm2d(channels, momentum=momentum)
    reference.load_state_dict(ours.state_dict())

    for step in range(3):  # several steps, so running stats and the cumulative average are exercised
        x = random_input(shape, channels_last, seed=step)
        x_ours = x.clone().requires_grad_()
        x_ref = x.clone().requires_grad_()
        y_ours, y_ref = ours(x_ours), reference(x_ref)
        torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-5)
        assert y_ours.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        upstream = torch.randn_like(y_ref)
        (y_ours * upstream).sum().backward()
        (y_ref * upstream).sum().backward()
        torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.bias.grad, reference.bias.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.running_mean, reference.running_mean)
        torch.testing.assert_close(ours.running_var, reference.running_var)
        assert int(ours.num_batches_tracked) == int(reference.num_batches_tracked) == step + 1

    ours.eval(), reference.eval()
    x = random_input(shape, channels_last, seed=99)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def test_state_dict_round_trips_with_torch_batchnorm():
    ours = BatchNorm2d(5, backend="torch")
    randomize_affine(ours, seed=1)
    ours(random_input((4, 5, 3, 3), seed=2))
    reference = nn.BatchNorm2d(5)
    reference.load_state_dict(ours.state_dict())
    back = BatchNorm2d(5)
    back.load_state_dict(reference.state_dict())
    assert set(ours.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value)


def test_old_checkpoint_without_num_batches_tracked_loads_like_in_torch():
    """A version-1 BatchNorm checkpoint (from before num_batches_tracked) loads into both layers alike."""
    source = nn.Sequential(nn.BatchNorm2d(3))
    source(random_input((4, 3, 2, 2), seed=4))
    old = source.state_dict()
    del old["0.num_batches_tracked"]
    old._metadata["0"]["version"] = 1
    reference, ours = nn.Sequential(nn.BatchNorm2d(3)), nn.Sequential(BatchNorm2d(3))
    reference.load_state_dict(old)
    ours.load_state_dict(old)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)
    assert int(ours[0].num_batches_tracked) == 0
    del old._metadata["0"]["version"]  # a current checkpoint missing the key is still an error
    old._metadata["0"]["version"] = 2
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        nn.Sequential(BatchNorm2d(3)).load_state_dict(old)


def test_no_running_stats_matches_torch():
    ours = BatchNorm2d(4, track_running_stats=False, affine=False)
    reference = nn.BatchNorm2d(4, track_running_stats=False, affine=False)
    assert set(ours.state_dict()) == set(reference.state_dict()) == set()
    ours.eval(), reference.eval()
    x = random_input((3, 4, 2, 5), seed=3)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_tracking_switched_off_after_build_matches_torch(momentum):
    """track_running_stats=False on a built layer (test-time adaptation): nn.BatchNorm2d then normalises with batch
    statistics in training without touching its buffers, and with the buffers it still has in evaluation."""
    ours, reference = BatchNorm2d(4, momentum=momentum), nn.BatchNorm2d(4, momentum=momentum)
    for layer in (ours, reference):
        layer.train()(random_input((3, 4, 2, 5), seed=5))  # buffers away from their initial values
        layer.track_running_stats = False
    x = random_input((3, 4, 2, 5), seed=4)
    for mode in ("train", "eval", "train"):
        getattr(ours, mode)(), getattr(reference, mode)()
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours, name), getattr(reference, name), msg=f"{mode}: {name}")


@pytest.mark.parametrize("stat_groups", [1, 2])
def test_tracking_switched_off_after_build_leaves_grouped_buffers_alone(stat_groups):
    layer = BatchNorm2d(4, stat_groups=stat_groups)
    layer.train()(random_input((3, 4, 2, 5), seed=5))
    layer.track_running_stats = False
    buffers = {name: buffer.clone() for name, buffer in layer.named_buffers()}
    x = random_input((3, 4, 2, 5), seed=4)
    expected, _, _ = float64_grouped_reference(x, layer.weight, layer.bias, stat_groups, layer.eps)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)  # batch statistics
    layer.eval()(x)
    for name, buffer in layer.named_buffers():
        assert torch.equal(buffer, buffers[name]), name


def float64_grouped_reference(x, weight, bias, stat_groups, eps):
    """Direct float64 computation of grouped BatchNorm (the oracle for grouped/shared modes)."""
    batch, channels, height, width = x.shape
    x64 = x.double().reshape(batch, stat_groups, channels // stat_groups, height, width)
    mean = x64.mean(dim=(0, 2, 3, 4), keepdim=True)
    var = ((x64 - mean) ** 2).mean(dim=(0, 2, 3, 4), keepdim=True)
    y = ((x64 - mean) / torch.sqrt(var + eps)).reshape(batch, channels, height, width)
    count = x64.numel() // stat_groups
    return (y * weight.double().view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1),
            mean.flatten(), var.flatten() * count / (count - 1))


@pytest.mark.parametrize("shape,stat_groups", [((4, 6, 3, 5), 1), ((4, 6, 3, 5), 2), ((4, 6, 3, 5), 3),
                                                ((2, 16, 4, 4), 4), ((2, 16, 4, 4), 1), ((3, 12, 2, 2), 6)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_grouped_and_shared_match_float64(shape, stat_groups, channels_last):
    channels = shape[1]
    layer = BatchNorm2d(channels, stat_groups=stat_groups, momentum=0.3, backend="torch")
    randomize_affine(layer, seed=7)
    x = random_input(shape, channels_last, seed=11)
    x64 = x.double().requires_grad_()
    y = layer(x.clone().requires_grad_())
    expected, mean, unbiased_var = float64_grouped_reference(x64, layer.weight.detach(), layer.bias.detach(),
                                                             stat_groups, layer.eps)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.running_mean.double(), 0.3 * mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.running_var.double(), 0.7 + 0.3 * unbiased_var, rtol=1e-5, atol=1e-6)
    assert layer.running_mean.shape == (stat_groups,)


@pytest.mark.parametrize("stat_groups", [1, 2, 6])
def test_grouped_gradients_match_float64_autograd(stat_groups):
    layer = BatchNorm2d(6, stat_groups=stat_groups, backend="torch")
    randomize_affine(layer, seed=5)
    x = random_input((3, 6, 4, 3), seed=13).requires_grad_()
    upstream = torch.randn(3, 6, 4, 3)
    (layer(x) * upstream).sum().backward()

    x64 = x.detach().double().requires_grad_()
    weight64 = layer.weight.detach().double().requires_grad_()
    bias64 = layer.bias.detach().double().requires_grad_()
    expected, _, _ = float64_grouped_reference(x64, weight64, bias64, stat_groups, layer.eps)
    (expected * upstream.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad.double(), weight64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad.double(), bias64.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stat_groups", [1, 3, 6])
def test_gradcheck_float64(stat_groups):
    layer = BatchNorm2d(6, stat_groups=stat_groups, backend="torch", dtype=torch.float64)
    randomize_affine(layer, seed=3)
    x = random_input((2, 6, 3, 2), seed=17).double().requires_grad_()
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()

    def layer_with(inp, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (inp,))

    assert torch.autograd.gradcheck(layer_with, (x, weight, bias))


def test_group_shared_affine_has_one_gamma_per_group():
    layer = BatchNorm2d(8, stat_groups=1, affine_per_channel=False)
    assert layer.weight.shape == (1,) and layer.bias.shape == (1,)
    randomize_affine(layer, seed=2)
    x = random_input((4, 8, 3, 3), seed=21)
    expected, _, _ = float64_grouped_reference(x, layer.weight.detach().expand(8), layer.bias.detach().expand(8),
                                               1, layer.eps)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_stat_groups_equal_to_channels_is_per_channel():
    grouped = BatchNorm2d(6, stat_groups=6, backend="torch")
    randomize_affine(grouped, seed=8)
    reference = nn.BatchNorm2d(6)
    reference.load_state_dict(grouped.state_dict())
    x = random_input((4, 6, 3, 3), seed=4)
    torch.testing.assert_close(grouped(x), reference(x), rtol=1e-5, atol=1e-5)


def test_channel_mismatch_names_layer_and_counts():
    layer = BatchNorm2d(32, layer_name="blocks.2.norm")
    with pytest.raises(ValueError, match=r"blocks\.2\.norm.*32 channels.*64 channels"):
        layer(torch.randn(2, 64, 4, 4))


def test_non_4d_input_is_rejected():
    with pytest.raises(ValueError, match="4-D"):
        BatchNorm2d(3)(torch.randn(2, 3, 4))


def test_one_value_per_statistic_in_training_is_rejected():
    with pytest.raises(ValueError, match="one value per statistic"):
        BatchNorm2d(3)(torch.randn(1, 3, 1, 1))
    layer = BatchNorm2d(3).eval()
    assert layer(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)  # eval uses running stats: fine


def test_stat_groups_must_divide_channels():
    with pytest.raises(ValueError, match="must divide num_features=6"):
        BatchNorm2d(6, stat_groups=4)


def test_stat_groups_must_be_a_whole_number():
    """A fractional group count is an error, not truncated; an integral float (2.0) is that integer."""
    with pytest.raises(ValueError, match=r"stat_groups=2\.5 is not a whole number.*divides num_features=8"):
        BatchNorm2d(8, stat_groups=2.5)
    layer = BatchNorm2d(8, stat_groups=2.0)
    assert layer.stat_groups == 2 and isinstance(layer.stat_groups, int) and layer.running_mean.shape == (2,)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the kernels are compiled, not interpreted")
def test_triton_backend_runs_cpu_tensors_in_the_interpreter():
    """With TRITON_INTERPRET=1 (tests/conftest.py, without a GPU) backend='triton' runs the kernels on CPU tensors,
    and backend='auto' keeps the PyTorch path there."""
    from bnexp.norm import layer as layer_module
    from bnexp.norm import triton_function

    x = random_input((4, 6, 3, 5), seed=6)
    assert layer_module.resolve_backend("triton", x) == "triton"
    assert layer_module.resolve_backend("auto", x) == "torch"
    ours = BatchNorm2d(6, stat_groups=3, backend="triton")
    reference = BatchNorm2d(6, stat_groups=3, backend="torch")
    randomize_affine(ours, seed=9)
    reference.load_state_dict(ours.state_dict())
    calls = []
    normalize = triton_function._normalize_impl
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(triton_function, "_normalize_impl", lambda *args: calls.append(1) or normalize(*args))
        y = ours(x)
    assert len(calls) == 1  # the kernels ran
    torch.testing.assert_close(y, reference(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, reference.running_mean)
    torch.testing.assert_close(ours.running_var, reference.running_var)


def test_triton_backend_on_cpu_tensor_without_the_interpreter_is_a_clear_error(monkeypatch):
    from bnexp.norm import layer as layer_module

    monkeypatch.setattr(layer_module, "_triton_interpreting", lambda: False)
    with pytest.raises(ValueError, match="CUDA tensor.*TRITON_INTERPRET=1"):
        BatchNorm2d(3, backend="triton")(torch.randn(2, 3, 2, 2))


def test_cuda_input_without_usable_triton_falls_back_once_or_raises(monkeypatch):
    """The error path for a CUDA tensor when Triton is broken, checked without a GPU: the input only
    needs to say it is on CUDA, and Triton's status is set to unusable."""
    import warnings
    from types import SimpleNamespace

    from bnexp.norm import layer as layer_module

    monkeypatch.setattr(layer_module, "_triton_status", lambda: (False, "triton import failed: simulated"))
    monkeypatch.setattr(layer_module, "_warned_fallback", False)
    cuda_input = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert layer_module.resolve_backend("auto", cuda_input) == "torch"
        assert layer_module.resolve_backend("auto", cuda_input) == "torch"
    fallback_warnings = [w for w in caught if "falling back to the PyTorch path" in str(w.message)]
    assert len(fallback_warnings) == 1 and "simulated" in str(fallback_warnings[0].message)
    with pytest.raises(RuntimeError, match=r"backend='triton'.*not usable: triton import failed: simulated"):
        layer_module.resolve_backend("triton", cuda_input)
    assert layer_module.resolve_backend("torch", cuda_input) == "torch"
