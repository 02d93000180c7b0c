"""Correctness of the Triton grouped BatchNorm (bnexp.norm.triton_function).

Without CUDA the kernels run in the Triton interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1
before anything imports triton); bnexp.norm.triton_function is therefore imported inside the `tbn` fixture only.
In the interpreter the `tbn` fixture shrinks the tiles and the target program count so that the small shapes used
here still walk several tiles per program and split every reduction over several programs (the paths the GPU
takes on big inputs). Every buffer the kernels must write is filled with NaN first, so an unwritten element fails.

References: a float64 computation written here (with autograd for the gradients), the PyTorch path
bnexp.norm.functional.torch_grouped_batch_norm, and torch's own batch_norm / nn.BatchNorm2d for per-channel mode.
"""
import zlib

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.fixture(scope="module")
def tbn():
    """bnexp.norm.triton_function, its host side (triton_launch) with every buffer the kernels must write (outputs and workspaces) filled with NaN
    first, so that an element a kernel forgets to write fails the comparison; in the interpreter, with tiles of 64
    elements and 5 programs, so that the small shapes here walk several tiles per program and split every reduction
    over several programs (the paths a GPU takes on big inputs), with the GPU's 32-bit offsets."""
    from bnexp.norm import triton_function as tf
    from bnexp.norm import triton_launch as launch

    allocate_buffer, allocate_like = launch._new_buffer, launch._empty_like
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(launch, "_new_buffer",
                      lambda numel, like, dtype: allocate_buffer(numel, like, dtype).fill_(float("nan")))
        patch.setattr(launch, "_empty_like", lambda x: allocate_like(x).fill_(float("nan")))
        patch.setattr(launch, "INTERPRETER_TUNING", launch.Tuning(tile=64, programs=5))
        yield tf


@pytest.fixture(autouse=True)
def _seed(request):
    # a different but reproducible stream of inputs for every test
    torch.manual_seed(zlib.crc32(request.node.name.encode()))


# ------------------------------------------------------------------------------------------------ helpers
def make_input(shape, layout="nchw", dtype=torch.float32, requires_grad=True):
    """Random activations with a per-channel mean far from 0 and non-unit per-channel scale."""
    n, c, h, w = shape
    scale = 0.5 + 2.5 * torch.rand(c, device=DEVICE)
    shift = 3.0 * torch.randn(c, device=DEVICE) + 1.0
    x = torch.randn(shape, device=DEVICE) * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1)
    x = x.to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(requires_grad)


def make_affine(c, affine=True):
    if not affine:
        return None, None
    weight = (0.5 + torch.rand(c, device=DEVICE)) * torch.where(torch.rand(c, device=DEVICE) < 0.2, -1.0, 1.0)
    bias = torch.randn(c, device=DEVICE)
    return weight.requires_grad_(True), bias.requires_grad_(True)


def make_running(g):
    return torch.randn(g, device=DEVICE), 0.5 + torch.rand(g, device=DEVICE)


def rel_err(out, ref):
    out = out.detach().double().cpu()
    ref = ref.detach().double().cpu()
    assert torch.isfinite(out).all(), "non-finite values (unwritten output?)"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def f64_reference(x, weight, bias, running_mean, running_var, dy, *, use_batch_stats, momentum_factor, eps, groups):
    """float64 grouped BN written out by hand; returns y, dx, dweight, dbias, new running mean / var."""
    xd = x.detach().double().requires_grad_(True)
    wd = weight.detach().double().requires_grad_(True) if weight is not None else None
    bd = bias.detach().double().requires_grad_(True) if bias is not None else None
    n, c, h, w = xd.shape
    grouped = xd.reshape(n, groups, (c // groups) * h * w)
    count = grouped.shape[0] * grouped.shape[2]
    new_rm = new_rv = None
    if use_batch_stats:
        mean = grouped.mean(dim=(0, 2), keepdim=True)
        var = ((grouped - mean) ** 2).mean(dim=(0, 2), keepdim=True)
        if running_mean is not None:
            f = momentum_factor
            new_rm = (1 - f) * running_mean.double() + f * mean.detach().flatten()
            new_rv = (1 - f) * running_var.double() + f * var.detach().flatten() * count / (count - 1)
    else:
        mean = running_mean.double().view(1, groups, 1)
        var = running_var.double().view(1, groups, 1)
    y = ((grouped - mean) / torch.sqrt(var + eps)).reshape(n, c, h, w)
    if wd is not None:
        y = y * wd.view(1, c, 1, 1)
    if bd is not None:
        y = y + bd.view(1, c, 1, 1)
    y.backward(dy.double())
    return (y.detach(), xd.grad, wd.grad if wd is not None else None, bd.grad if bd is not None else None,
            new_rm, new_rv)


def run_triton(tbn, x, weight, bias, rm, rv, nbt, dy, **kw):
    for t in (x, weight, bias):
        if t is not None:
            t.grad = None
    y = tbn.triton_grouped_batch_norm(x, weight, bias, rm, rv, nbt, **kw)
    y.backward(dy)
    return y, x.grad, (weight.grad if weight is not None else None), (bias.grad if bias is not None else None)


# Shapes (N, C, H, W), stat groups, layout, affine. Covers C=1, C=3, C not a power of two, 1x1, 3x3, 4x4, 5x7,
# 32x32, and G in {1, middle, C}.
TRAIN_CASES = [
    ((4, 6, 5, 7), 2, "nchw", True),
    ((4, 6, 5, 7), 3, "cl", True),
    ((4, 6, 5, 7), 6, "nchw", True),
    ((4, 6, 5, 7), 1, "cl", False),
    ((3, 1, 3, 3), 1, "nchw", True),
    ((3, 1, 3, 3), 1, "cl", True),
    ((5, 3, 3, 3), 3, "cl", True),
    ((5, 3, 3, 3), 1, "nchw", True),
    ((6, 4, 1, 1), 2, "nchw", True),
    ((6, 4, 1, 1), 4, "cl", True),
    ((2, 8, 4, 4), 4, "cl", True),
    ((2, 8, 4, 4), 8, "nchw", False),
    ((2, 3, 32, 32), 3, "nchw", True),
    ((2, 3, 32, 32), 1, "cl", True),
    ((1, 12, 5, 7), 4, "nchw", True),
]


def _case_id(case):
    shape, g, layout, affine = case
    return f"{'x'.join(map(str, shape))}-G{g}-{layout}-{'affine' if affine else 'noaffine'}"


# ------------------------------------------------------------------------------------------------ training mode
@pytest.fixture(params=["autograd_fn", "custom_ops"])
def path(request, tbn, monkeypatch):
    """Both host paths: the eager autograd.Function and the custom ops torch.compile uses."""
    if request.param == "custom_ops":
        monkeypatch.setattr(tbn, "triton_grouped_batch_norm", tbn.grouped_batch_norm_custom_ops)
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize("case", TRAIN_CASES, ids=_case_id)
def test_training_matches_float64_and_torch_path(tbn, case):
    _check_training_case(tbn, case)


@pytest.mark.parametrize("case", [TRAIN_CASES[i] for i in (0, 3, 6, 8)], ids=_case_id)
def test_training_both_host_paths(tbn, path, case):
    _check_training_case(tbn, case)


def _check_training_case(tbn, case):
    from bnexp.norm.functional import torch_grouped_batch_norm

    shape, groups, layout, affine = case
    x = make_input(shape, layout)
    weight, bias = make_affine(shape[1], affine)
    rm, rv = make_running(groups)
    dy = torch.randn_like(x)
    kw = dict(use_batch_stats=True, momentum=0.1, eps=1e-5, stat_groups=groups)

    rm_t, rv_t = rm.clone(), rv.clone()
    y, dx, dw, db = run_triton(tbn, x, weight, bias, rm_t, rv_t, None, dy, **kw)
    ref_y, ref_dx, ref_dw, ref_db, ref_rm, ref_rv = f64_reference(
        x, weight, bias, rm, rv, dy, use_batch_stats=True, momentum_factor=0.1, eps=1e-5, groups=groups)

    assert y.dtype == x.dtype and y.shape == x.shape and y.stride() == x.stride()
    assert rel_err(y, ref_y) < 1e-5
    assert rel_err(dx, ref_dx) < 1e-5
    if affine:
        assert rel_err(dw, ref_dw) < 1e-5
        assert rel_err(db, ref_db) < 1e-5
    assert rel_err(rm_t, ref_rm) < 1e-6
    assert rel_err(rv_t, ref_rv) < 1e-6

    # bnexp's PyTorch path (torch_grouped_batch_norm): the same function
    xp = x.detach().clone().requires_grad_(True)
    wp = weight.detach().clone().requires_grad_(True) if affine else None
    bp = bias.detach().clone().requires_grad_(True) if affine else None
    rm_p, rv_p = rm.clone(), rv.clone()
    yp = torch_grouped_batch_norm(xp, wp, bp, rm_p, rv_p, None, **kw)
    yp.backward(dy)
    assert rel_err(y, yp) < 1e-5
    assert rel_err(dx, xp.grad) < 1e-4
    if affine:
        assert rel_err(dw, wp.grad) < 1e-4
        assert rel_err(db, bp.grad) < 1e-4
    assert rel_err(rm_t, rm_p) < 1e-5
    assert rel_err(rv_t, rv_p) < 1e-5


@pytest.mark.parametrize("use_batch_stats", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", [TRAIN_CASES[i] for i in (0, 3, 10)], ids=_case_id)
def test_float64_input_computes_in_float64(tbn, case, use_batch_stats):
    """A float64 input gets fp64 statistics and sums (and eps, momentum to 48 bits): float64 rounding against the
    float64 reference, through tiles and split reductions, where fp32 statistics would be off by 1e-7."""
    shape, groups, layout, affine = case
    x = make_input(shape, layout, dtype=torch.float64).detach().requires_grad_(True)
    weight, bias = make_affine(shape[1], affine)
    if affine:
        weight, bias = (t.detach().double().requires_grad_(True) for t in (weight, bias))
    rm, rv = (t.double() for t in make_running(groups))
    dy = torch.randn_like(x)
    kw = dict(use_batch_stats=use_batch_stats, momentum=0.1, eps=1e-5, stat_groups=groups)
    rm_t, rv_t = rm.clone(), rv.clone()
    outputs = run_triton(tbn, x, weight, bias, rm_t, rv_t, None, dy, **kw)
    reference = f64_reference(x, weight, bias, rm, rv, dy, use_batch_stats=use_batch_stats, momentum_factor=0.1,
                              eps=1e-5, groups=groups)
    for out, expected in zip((*outputs, rm_t, rv_t), reference):
        if expected is not None:
            assert out.dtype == torch.float64
            assert rel_err(out, expected) < 1e-12


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_per_channel_matches_torch_batchnorm2d(tbn, layout):
    """G == C is ordinary BatchNorm: compare with nn.BatchNorm2d over two training steps and an eval step."""
    shape = (5, 6, 3, 5)
    bn = torch.nn.BatchNorm2d(6, momentum=0.2).to(DEVICE)
    with torch.no_grad():
        bn.weight.copy_(0.5 + torch.rand(6))
        bn.bias.copy_(torch.randn(6))
    weight = bn.weight.detach().clone().requires_grad_(True)
    bias = bn.bias.detach().clone().requires_grad_(True)
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    for _ in range(2):
        x = make_input(shape, layout)
        dy = torch.randn_like(x)
        y, dx, dw, db = run_triton(tbn, x, weight, bias, rm, rv, None, dy,
                                   use_batch_stats=True, momentum=0.2, eps=bn.eps, stat_groups=6)
        xr = x.detach().clone().requires_grad_(True)
        bn.zero_grad()
        yr = bn(xr)
        yr.backward(dy)
        assert rel_err(y, yr) < 1e-5
        assert rel_err(dx, xr.grad) < 1e-4
        assert rel_err(dw, bn.weight.grad) < 1e-4
        assert rel_err(db, bn.bias.grad) < 1e-4
        assert rel_err(rm, bn.running_mean) < 1e-5
        assert rel_err(rv, bn.running_var) < 1e-5
    bn.eval()
    x = make_input(shape, layout)
    dy = torch.randn_like(x)
    y, dx, _, _ = run_triton(tbn, x, weight, bias, rm, rv, None, dy,
                             use_batch_stats=False, momentum=0.2, eps=bn.eps, stat_groups=6)
    xr = x.detach().clone().requires_grad_(True)
    yr = bn(xr)
    yr.backward(dy)
    assert rel_err(y, yr) < 1e-5
    assert rel_err(dx, xr.grad) < 1e-5
    # functional per-channel, no affine, against F.batch_norm
    x = make_input(shape, layout)
    y = tbn.triton_grouped_batch_norm(x, None, None, None, None, None,
                                      use_batch_stats=True, momentum=0.1, eps=1e-3, stat_groups=6)
    yr = torch.nn.functional.batch_norm(x.detach(), None, None, training=True, eps=1e-3)
    assert rel_err(y, yr) < 1e-5


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_cumulative_average_momentum_none(tbn, path, groups):
    """momentum=None: factor 1/num_batches_tracked read from the device tensor the layer increments."""
    shape = (3, 6, 3, 3)
    rm, rv = make_running(groups)
    nbt = torch.tensor(0, dtype=torch.long, device=DEVICE)
    means, vars_unbiased = [], []
    for step in range(3):
        nbt += 1  # the layer does this before calling
        x = make_input(shape, "cl" if step % 2 else "nchw", requires_grad=False)
        tbn.triton_grouped_batch_norm(x, None, None, rm, rv, nbt,
                                      use_batch_stats=True, momentum=None, eps=1e-5, stat_groups=groups)
        grouped = x.double().reshape(shape[0], groups, -1)
        means.append(grouped.mean(dim=(0, 2)))
        vars_unbiased.append(grouped.permute(1, 0, 2).reshape(groups, -1).var(dim=1, unbiased=True))
    # the averaged means can nearly cancel: absolute tolerance at fp32 rounding of the per-step means
    torch.testing.assert_close(rm.double(), torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rv.double(), torch.stack(vars_unbiased).mean(0), rtol=1e-5, atol=1e-6)
    if groups == shape[1]:  # per-channel: torch's own cumulative average
        bn = torch.nn.BatchNorm2d(6, momentum=None, affine=False).to(DEVICE)
        torch.manual_seed(1)
        xs = [make_input(shape, requires_grad=False) for _ in range(3)]
        rm2, rv2 = bn.running_mean.clone(), bn.running_var.clone()
        nbt2 = torch.tensor(0, dtype=torch.long, device=DEVICE)
        for x in xs:
            nbt2 += 1
            bn(x)
            tbn.triton_grouped_batch_norm(x, None, None, rm2, rv2, nbt2,
                                          use_batch_stats=True, momentum=None, eps=1e-5, stat_groups=6)
        torch.testing.assert_close(rm2, bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rv2, bn.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [((4, 6, 5, 7), 2, "nchw"), ((4, 6, 5, 7), 6, "cl"), ((3, 1, 3, 3), 1, "cl"),
                                  ((6, 4, 1, 1), 1, "nchw")], ids=lambda c: f"{c[0]}-G{c[1]}-{c[2]}")
def test_eval_mode_uses_running_stats(tbn, path, case):
    shape, groups, layout = case
    x = make_input(shape, layout)
    weight, bias = make_affine(shape[1])
    rm, rv = make_running(groups)
    rm0, rv0 = rm.clone(), rv.clone()
    dy = torch.randn_like(x)
    y, dx, dw, db = run_triton(tbn, x, weight, bias, rm, rv, None, dy,
                               use_batch_stats=False, momentum=0.1, eps=1e-5, stat_groups=groups)
    ref_y, ref_dx, ref_dw, ref_db, _, _ = f64_reference(
        x, weight, bias, rm, rv, dy, use_batch_stats=False, momentum_factor=0.1, eps=1e-5, groups=groups)
    assert y.stride() == x.stride()
    assert rel_err(y, ref_y) < 1e-5
    assert rel_err(dx, ref_dx) < 1e-5
    assert rel_err(dw, ref_dw) < 1e-5
    assert rel_err(db, ref_db) < 1e-5
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)


def test_large_mean_small_spread(tbn):
    """A mean 1000x the spread must not lose the variance to cancellation."""
    shape = (4, 4, 5, 5)
    x = (torch.randn(shape, device=DEVICE) * 0.05 + 50.0).requires_grad_(True)
    dy = torch.randn_like(x)
    y, dx, _, _ = run_triton(tbn, x, None, None, None, None, None, dy,
                             use_batch_stats=True, momentum=0.1, eps=1e-5, stat_groups=2)
    ref_y, ref_dx, _, _, _, _ = f64_reference(x, None, None, None, None, dy, use_batch_stats=True,
                                              momentum_factor=0.1, eps=1e-5, groups=2)
    assert rel_err(y, ref_y) < 1e-4
    assert rel_err(dx, ref_dx) < 1e-4


@pytest.mark.parametrize("tuning", [dict(tile=16, programs=1), dict(tile=32, programs=64, finalize_tile=4),
                                    dict(tile=4096, programs=3), dict(tile=64, programs=5, int64_offsets=True)],
                         ids=["tile16-1prog", "tile32-64prog-fin4", "tile4096", "tile64-int64"])
def test_tilings_agree(tbn, tuning, monkeypatch):
    """Different tile sizes / split counts compute the same function (exercises the partial merges)."""
    from bnexp.norm import triton_launch as launch

    monkeypatch.setattr(launch, "_tuning", lambda x: tbn.Tuning(**tuning))
    for shape, groups, layout in [((3, 6, 4, 5), 3, "nchw"), ((3, 6, 4, 5), 1, "cl")]:
        x = make_input(shape, layout)
        weight, bias = make_affine(6)
        rm, rv = make_running(groups)
        dy = torch.randn_like(x)
        rm_t, rv_t = rm.clone(), rv.clone()
        y, dx, dw, db = run_triton(tbn, x, weight, bias, rm_t, rv_t, None, dy,
                                   use_batch_stats=True, momentum=0.3, eps=1e-5, stat_groups=groups)
        ref = f64_reference(x, weight, bias, rm, rv, dy, use_batch_stats=True, momentum_factor=0.3,
                            eps=1e-5, groups=groups)
        for out, r in zip((y, dx, dw, db, rm_t, rv_t), ref):
            assert rel_err(out, r) < 1e-5


def test_other_strides_and_mismatched_grad_layout(tbn):
    """A non-contiguous slice is handled (copied to NCHW); a grad in another layout than x is accepted."""
    base = make_input((4, 10, 5, 6), requires_grad=False)
    x = base[:, ::2, :, 1:].detach().requires_grad_(True)  # (4, 5, 5, 5), not contiguous in any format
    dy = torch.randn(x.shape, device=DEVICE)
    y, dx, _, _ = run_triton(tbn, x, None, None, None, None, None, dy,
                             use_batch_stats=True, momentum=0.1, eps=1e-5, stat_groups=5)
    ref_y, ref_dx, _, _, _, _ = f64_reference(x, None, None, None, None, dy, use_batch_stats=True,
                                              momentum_factor=0.1, eps=1e-5, groups=5)
    assert rel_err(y, ref_y) < 1e-5 and rel_err(dx, ref_dx) < 1e-5

    x = make_input((3, 6, 4, 4), "cl")
    dy = torch.randn(x.shape, device=DEVICE)  # NCHW-contiguous grad for a channels_last x
    y, dx, _, _ = run_triton(tbn, x, None, None, None, None, None, dy,
                             use_batch_stats=True, momentum=0.1, eps=1e-5, stat_groups=3)
    ref_y, ref_dx, _, _, _, _ = f64_reference(x, None, None, None, None, dy, use_batch_stats=True,
                                              momentum_factor=0.1, eps=1e-5, groups=3)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref_y) < 1e-5 and rel_err(dx, ref_dx) < 1e-5


# ------------------------------------------------------------------------------------------------ op plumbing
def test_fake_impls_give_shapes_and_layout(tbn):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(4, 6, 3, 5).contiguous(memory_format=torch.channels_last)
        w = torch.empty(6)
        rm, rv = torch.empty(3), torch.empty(3)
        stats = torch.ops.bnexp.grouped_bn_stats(x, rm, rv, None, 0.1, 1e-5, 3)
        assert stats.shape == (2, 3) and stats.dtype == torch.float32
        y = torch.ops.bnexp.grouped_bn_normalize(x, stats, w, w, True, 3, 1e-5)
        assert y.shape == x.shape and y.stride() == x.stride()
        dx, dwb = torch.ops.bnexp.grouped_bn_backward(y, x, stats, w, True, 3)
        assert dx.stride() == x.stride() and dwb.shape == (2, 6)


def test_opcheck(tbn):
    x = make_input((2, 4, 3, 3), "cl", requires_grad=False)
    w = torch.rand(4, device=DEVICE) + 0.5
    rm, rv = make_running(2)
    torch.library.opcheck(torch.ops.bnexp.grouped_bn_stats.default, (x, rm, rv, None, 0.1, 1e-5, 2),
                          test_utils=("test_schema", "test_faketensor"))
    stats = torch.ops.bnexp.grouped_bn_stats(x, None, None, None, 0.1, 1e-5, 2)
    torch.library.opcheck(torch.ops.bnexp.grouped_bn_normalize.default,
                          (x.clone().requires_grad_(True), stats, w.clone().requires_grad_(True), w, True, 2, 1e-5),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    torch.library.opcheck(torch.ops.bnexp.grouped_bn_backward.default, (torch.randn_like(x), x, stats, w, True, 2),
                          test_utils=("test_schema", "test_faketensor"))


def assert_compiled_matches_eager(tbn, shape, stat_groups, head, grad_tolerance, loss_tolerance=None,
                                  **compile_options):
    """torch.compile(fullgraph=True) of a training step through the layer: no graph break, and the same
    gradients and running buffers as the eager step (and the same loss, when loss_tolerance is given)."""
    x = make_input(shape, "cl")
    weight, bias = make_affine(shape[1])
    rm, rv = make_running(stat_groups)

    def step(x, weight, bias, rm, rv):
        y = tbn.triton_grouped_batch_norm(x, weight, bias, rm, rv, None, use_batch_stats=True,
                                          momentum=0.1, eps=1e-5, stat_groups=stat_groups)
        return head(y).sum()

    rm_c, rv_c = rm.clone(), rv.clone()
    loss = torch.compile(step, fullgraph=True, **compile_options)(x, weight, bias, rm_c, rv_c)
    loss.backward()
    grads = [t.grad.clone() for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None
    rm_e, rv_e = rm.clone(), rv.clone()
    loss_e = step(x, weight, bias, rm_e, rv_e)
    loss_e.backward()
    if loss_tolerance is not None:
        assert rel_err(loss, loss_e) < loss_tolerance
    for g, t in zip(grads, (x, weight, bias)):
        assert rel_err(g, t.grad) < grad_tolerance
    assert rel_err(rm_c, rm_e) < 1e-6 and rel_err(rv_c, rv_e) < 1e-6


def test_compile_fullgraph_cpu_aot_eager(tbn, monkeypatch):
    """No graph break: dynamo traces the custom ops through their fake impls (aot_eager keeps it cheap on CPU). The
    backward is the kernels' (a first-order backward never takes the double-backward path, compiled or eager)."""
    def no_double_backward(*args, **kwargs):
        raise AssertionError("a first-order backward took the double-backward path")

    monkeypatch.setattr(tbn, "_differentiable_gradients", no_double_backward)
    assert_compiled_matches_eager(tbn, (3, 4, 3, 3), 2, lambda y: y.relu() * 1.5, grad_tolerance=1e-6,
                                  loss_tolerance=1e-6, backend="aot_eager")


def test_triton_status_reports(tbn):
    ok, reason = tbn.triton_status()
    assert isinstance(ok, bool) and isinstance(reason, str)
    if CUDA:
        assert ok, reason
    else:
        assert not ok and reason


# ------------------------------------------------------------------------------------------------ CUDA only
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("shape_groups", [((8, 6, 5, 7), 2), ((16, 64, 8, 8), 64), ((4, 32, 32, 32), 1),
                                          ((32, 24, 3, 3), 8)], ids=lambda s: f"{s[0]}-G{s[1]}")
def test_half_precision_cuda(tbn, dtype, layout, shape_groups):
    x, outputs, ref = _training_step_vs_float64(tbn, *shape_groups, layout, dtype)
    y, dx, dw = outputs[:3]
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == torch.float32
    assert y.stride() == x.stride() and dx.stride() == x.stride()
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    for name, out, r in zip(("y", "dx", "dw", "db"), outputs[:4], ref[:4]):
        assert rel_err(out, r) < tol, name
    assert rel_err(outputs[4], ref[4]) < 1e-5 and rel_err(outputs[5], ref[5]) < 1e-5


def _training_step_vs_float64(tbn, shape, groups, layout, dtype=torch.float32):
    """One training forward + backward of the Triton path on fresh inputs, and the float64 reference.

    Returns (x, (y, dx, dweight, dbias, running_mean, running_var), reference in the same order).
    """
    x = make_input(shape, layout, dtype)
    weight, bias = make_affine(shape[1])
    rm, rv = make_running(groups)
    dy = torch.randn_like(x)
    rm_t, rv_t = rm.clone(), rv.clone()
    y, dx, dw, db = run_triton(tbn, x, weight, bias, rm_t, rv_t, None, dy,
                               use_batch_stats=True, momentum=0.1, eps=1e-5, stat_groups=groups)
    ref = f64_reference(x, weight, bias, rm, rv, dy, use_batch_stats=True, momentum_factor=0.1, eps=1e-5,
                        groups=groups)
    return x, (y, dx, dw, db, rm_t, rv_t), ref


@requires_cuda
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("shape_groups", [((64, 64, 16, 16), 64), ((64, 64, 16, 16), 8), ((128, 256, 3, 3), 1),
                                          ((96, 96, 7, 7), 96), ((256, 3, 15, 15), 3)], ids=lambda s: f"{s[0]}-G{s[1]}")
def test_fp32_real_tiles_cuda(tbn, layout, shape_groups):
    """Larger fp32 inputs with the production tile sizes and program counts."""
    _, outputs, ref = _training_step_vs_float64(tbn, *shape_groups, layout)
    for name, out, r in zip(("y", "dx", "dw", "db", "rm", "rv"), outputs, ref):
        assert rel_err(out, r) < 2e-5, name


@requires_cuda
def test_compile_fullgraph_inductor_cuda(tbn):
    assert_compiled_matches_eager(tbn, (8, 16, 6, 6), 4, lambda y: torch.nn.functional.gelu(y) * 2,
                                  grad_tolerance=1e-5)
