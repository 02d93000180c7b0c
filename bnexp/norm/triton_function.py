"""Triton backend of the grouped BatchNorm functional (same signature as bnexp.norm.functional.torch_grouped_batch_norm).

Public:
    triton_grouped_batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked, *,
                              use_batch_stats, momentum, eps, stat_groups) -> Tensor
    grouped_batch_norm_custom_ops(...)  the same, always through the custom ops (what torch.compile runs)
    triton_status() -> (ok, reason)      can Triton run kernels on CUDA tensors here?
    kernels_interpreted() -> bool        were the kernels built for the Triton interpreter (CPU tensors)?
    Tuning, cuda_tuning(sm_count), INTERPRETER_TUNING: the launch sizes the host code plans with

Precision: statistics, workspaces and gradient sums are fp32 for fp32, fp16 and bf16 inputs, fp64 for float64 ones
(the compute dtype, _compute_dtype). An input without elements (N, H or W = 0) gets the PyTorch path's empty
output (functional.empty_batch_output) without a kernel launch.

Double backward (autograd.grad(..., create_graph=True): gradient penalties, Hessian-vector products): the kernels'
gradients are constants to autograd, so with create_graph the backward of both paths computes the gradients in
differentiable PyTorch ops from the saved input instead (_differentiable_gradients), and their own gradients are
exact. torch.compile does not support double backward through a compiled graph at all (it raises).

Structure. The kernels are driven by three host functions (_stats_impl, _normalize_impl, _backward_impl), reached
two ways:
  * eager (the common case): _GroupedBatchNormFn, a torch.autograd.Function. The custom-op dispatch costs tens of
    microseconds of host time per call, which is more than the GPU time of a small BatchNorm, so eager calls
    skip it.
  * under torch.compile (torch.compiler.is_compiling()): three torch.library custom ops, opaque nodes with fake
    impls, so the graph has no break:
      bnexp::grouped_bn_stats      (2, G) batch mean / invstd from x.detach(); updates the running buffers in
                                   place (a mutating op, hence no autograd formula of its own)
      bnexp::grouped_bn_normalize  y = (x - mean) * invstd * weight + bias; its autograd formula delivers the
                                   FULL BatchNorm gradient (including the paths through the batch statistics,
                                   when use_batch_stats; eps is an argument for the double backward) by calling
      bnexp::grouped_bn_backward   dx and (2, C) dweight / dbias
    Splitting stats from normalize is what lets the running-stat mutation and autograd coexist: torch.library
    refuses an autograd formula on a mutating op.

Importing this module imports triton; bnexp.norm's layer imports it lazily. Set TRITON_INTERPRET=1 before the
import to run the kernels on CPU tensors (the tests do this when there is no GPU).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from bnexp.norm.functional import check_eps, empty_batch_output

try:  # keep the module importable without triton so triton_status() can explain what is missing
    import triton

    from bnexp.norm import triton_kernels as _k

    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # pragma: no cover - depends on the environment
    triton = None
    _k = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = ["INTERPRETER_TUNING", "Tuning", "cuda_tuning", "grouped_batch_norm_custom_ops", "kernels_interpreted",
           "triton_grouped_batch_norm", "triton_status"]

_NUM_WARPS_STREAM = 8
_NUM_WARPS_FINALIZE = 4


def kernels_interpreted() -> bool:
    """True when the kernels were built for the Triton interpreter (TRITON_INTERPRET=1 was set before triton
    decorated them): they then run on CPU tensors, and not on CUDA ones."""
    if _k is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_k.bn_stats_partial_kernel, InterpretedFunction)


def triton_status() -> tuple[bool, str]:
    """(True, "") when Triton kernels can run on CUDA tensors in this process, else (False, why not)."""
    if _IMPORT_ERROR is not None:
        return False, f"triton import failed: {_IMPORT_ERROR}"
    if kernels_interpreted():
        return False, "TRITON_INTERPRET is set: kernels run in the interpreter on CPU tensors only"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    if torch.version.hip is not None:
        return False, "ROCm build: these kernels are only tested on CUDA"
    try:
        from triton.runtime import driver

        driver.active.get_current_target()
    except Exception as exc:  # pragma: no cover - depends on the driver
        return False, f"triton has no usable CUDA driver: {type(exc).__name__}: {exc}"
    return True, ""


# ----------------------------------------------------------------------------------------------------------
# Host-side planning
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Tuning:
    """Launch sizes of the kernels, and their offset width.

    tile: elements of one streaming tile (BLOCK_M x BLOCK_C); programs: how many programs the streaming grid aims
    for (the reduction over positions is split across programs to reach it); finalize_tile: elements of a
    finalize tile (None: 2048, or 8192 when a group has many partials); int64_offsets: address with 64-bit
    offsets even where 32 bits suffice.
    """

    tile: int
    programs: int
    finalize_tile: Optional[int] = None
    int64_offsets: bool = False


def cuda_tuning(sm_count: int) -> Tuning:
    # a few resident programs per SM: enough bytes in flight, and the whole grid is resident so the reverse walk
    # of the second pass finds the first pass's last tiles in L2
    return Tuning(tile=4096, programs=4 * sm_count)


# The interpreter runs one program after another, and each operation costs the same Python overhead whatever
# the tile's size, so it is fastest with the fewest tiles and programs: the largest tile Triton allows (a small
# layer is one tile) and 64-bit offsets, which the interpreter does not re-check for int32 overflow at every
# operation. The kernel tests plan small tiles of their own, so that loops and split reductions still run.
INTERPRETER_TUNING = Tuning(tile=1 << 20, programs=4, int64_offsets=True)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _tuning(x: Tensor) -> Tuning:
    if x.device.type != "cuda":
        return INTERPRETER_TUNING
    return cuda_tuning(_sm_count(x.device.index))  # a CUDA tensor's device always carries its index


def _canonical_view(shape, stride) -> tuple[int, int, int, int, int]:
    """(num_positions, positions_per_image, stride_n, stride_hw, stride_c) of the kernels' (position, channel) view.

    Element (p, c) lives at (p // positions_per_image) * stride_n + (p % positions_per_image) * stride_hw
    + c * stride_c. (N, H, W) are folded into num_positions positions; when n and hw merge into one stride
    (channels_last, H*W == 1, N == 1) positions_per_image becomes 1 and the kernel needs no division at all.
    """
    n, _, h, w = shape
    stride_n, stride_c, stride_h, stride_w = stride
    pixels_per_image = h * w
    if h > 1 and w > 1:
        assert stride_h == w * stride_w, "H and W must be mergeable (NCHW or channels_last)"
    stride_hw = stride_h if w == 1 else stride_w
    num_positions = n * pixels_per_image
    if pixels_per_image == 1:
        return num_positions, 1, stride_n, 0, stride_c
    if n == 1 or stride_n == pixels_per_image * stride_hw:
        return num_positions, 1, stride_hw, 0, stride_c
    return num_positions, pixels_per_image, stride_n, stride_hw, stride_c


class _Plan:
    """Tile sizes and the split of the positions over programs, shared by all streaming kernels of a call."""

    def __init__(self, shape, stride, tuning: Tuning):
        num_channels = shape[1]
        tile = tuning.tile
        self.tuning = tuning
        self.num_channels = num_channels
        (self.num_positions, self.positions_per_image,
         self.stride_n, self.stride_hw, self.stride_c) = _canonical_view(shape, stride)
        # length of the contiguous run along the positions (decides how many channels a tile needs for wide
        # accesses)
        if self.positions_per_image == 1:
            contiguous_run = self.num_positions if self.stride_n == 1 else 1
        else:
            contiguous_run = self.positions_per_image if self.stride_hw == 1 else 1
        if self.stride_c == 1 and num_channels > 1:  # channels are the contiguous axis
            block_c = min(triton.next_power_of_2(num_channels), 64, tile)
        else:
            block_c = min(triton.next_power_of_2(num_channels),
                          triton.next_power_of_2(triton.cdiv(128, min(contiguous_run, 128))), tile)
        block_m = min(max(tile // block_c, 1), triton.next_power_of_2(self.num_positions))
        # few positions: widen the tile along channels
        block_c = min(triton.next_power_of_2(num_channels), max(block_c, tile // block_m))
        self.BLOCK_M, self.BLOCK_C = block_m, block_c
        self.num_channel_blocks = triton.cdiv(num_channels, block_c)
        num_position_tiles = triton.cdiv(self.num_positions, block_m)
        wanted_splits = min(num_position_tiles, max(1, triton.cdiv(tuning.programs, self.num_channel_blocks)))
        self.tiles_per_split = triton.cdiv(num_position_tiles, wanted_splits)
        self.num_splits = triton.cdiv(num_position_tiles, self.tiles_per_split)
        self.positions_per_split = self.tiles_per_split * block_m
        self.grid = (self.num_channel_blocks, self.num_splits)
        numel = math.prod(shape)
        self.USE_INT64 = tuning.int64_offsets or numel >= 2**31 - 1 or max(stride) * max(shape) >= 2**31 - 1

    def finalize_blocks(self, channels_per_group: int) -> tuple[int, int, int]:
        """(BLOCK_S, BLOCK_CG, num_warps) of a finalize program merging num_splits x channels_per_group partials.

        A finalize program walks its group's partials serially; with few groups (one group: all
        num_splits * C partials in one program) a wider tile and more warps keep that walk short.
        """
        many_partials = self.num_splits * channels_per_group > 2048
        tile = self.tuning.finalize_tile or (8192 if many_partials else 2048)
        block_s = min(triton.next_power_of_2(self.num_splits), 256 if many_partials else 128, tile)
        block_cg = min(triton.next_power_of_2(channels_per_group), max(1, tile // block_s))
        return block_s, block_cg, (8 if many_partials else _NUM_WARPS_FINALIZE)


# plans are pure functions of shape / strides / tuning: cache them (host overhead matters for the small shapes,
# where a training step's BatchNorm is launch-bound)
_cached_plan = functools.lru_cache(maxsize=4096)(_Plan)


def _get_plan(x: Tensor) -> _Plan:
    return _cached_plan(x.shape, x.stride(), _tuning(x))


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the statistics and every sum: fp64 for a float64 input, fp32 for the others."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _new_buffer(numel: int, like: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty(numel, device=like.device, dtype=dtype)


def _split_float(value: float) -> tuple[float, float]:
    """value as high + low, both fp32-representable: Triton passes a Python float to a kernel as fp32, and the pair
    keeps 48 bits of it for fp64 statistics (in fp32, high + low rounds back to high)."""
    high = float(np.float32(value))
    return high, (value - high) if math.isfinite(high) else 0.0


def _empty_like(x: Tensor) -> Tensor:
    return torch.empty_like(x)  # x is NCHW- or channels_last-contiguous: same strides


def _as_layout(x: Tensor) -> Tensor:
    """x itself when the kernels can address it (NCHW- or channels_last-contiguous), else an NCHW copy."""
    return x if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last) else x.contiguous()


# ----------------------------------------------------------------------------------------------------------
# Host functions: plan, allocate, launch
# ----------------------------------------------------------------------------------------------------------
# num_groups is stat_groups, an int already (the eager Function and the custom ops' schemas make it one)
def _stats_impl(x, running_mean, running_var, num_batches_tracked, momentum, eps, num_groups) -> Tensor:
    """(2, G) in the compute dtype: batch mean and invstd per group; running buffers updated in place."""
    plan = _get_plan(x)
    channels_per_group = plan.num_channels // num_groups
    compute_dtype = _compute_dtype(x)
    workspace = _new_buffer(2 * plan.num_splits * plan.num_channels, x, compute_dtype)
    stats = _new_buffer(2 * num_groups, x, compute_dtype).view(2, num_groups)
    _k.bn_stats_partial_kernel[plan.grid](
        x, workspace, plan.num_positions, plan.num_channels, plan.stride_n, plan.stride_hw, plan.stride_c,
        plan.positions_per_split, plan.tiles_per_split,
        POSITIONS_PER_IMAGE=plan.positions_per_image, BLOCK_M=plan.BLOCK_M, BLOCK_C=plan.BLOCK_C,
        USE_INT64=plan.USE_INT64, num_warps=_NUM_WARPS_STREAM,
    )
    has_running = running_mean is not None and running_var is not None
    momentum_from_nbt = has_running and momentum is None
    if momentum_from_nbt and num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    block_s, block_cg, finalize_warps = plan.finalize_blocks(channels_per_group)
    # unused pointer arguments get `stats`: any valid tensor will do, the constexpr flags keep them unread
    _k.bn_stats_finalize_kernel[(num_groups,)](
        workspace, stats,
        running_mean if has_running else stats,
        running_var if has_running else stats,
        num_batches_tracked if momentum_from_nbt else stats,
        plan.num_positions, plan.num_channels, channels_per_group, plan.num_splits, plan.positions_per_split,
        *_split_float(momentum or 0.0), *_split_float(eps),
        HAS_RUNNING=has_running, MOMENTUM_FROM_NBT=momentum_from_nbt,
        BLOCK_S=block_s, BLOCK_CG=block_cg, num_warps=finalize_warps,
    )
    return stats


def _eval_stats(running_mean: Tensor, running_var: Tensor, eps: float, compute_dtype: torch.dtype) -> Tensor:
    running_mean, running_var = running_mean.to(compute_dtype), running_var.to(compute_dtype)
    return torch.stack([running_mean, torch.rsqrt(running_var + eps)])


def _normalize_impl(x, stats, weight, bias, num_groups) -> Tensor:
    plan = _get_plan(x)
    y = _empty_like(x)
    _k.bn_normalize_kernel[plan.grid](
        x, y, stats,
        weight if weight is not None else stats,
        bias if bias is not None else stats,
        plan.num_positions, plan.num_channels, plan.num_channels // num_groups, num_groups,
        plan.stride_n, plan.stride_hw, plan.stride_c, plan.positions_per_split, plan.tiles_per_split,
        POSITIONS_PER_IMAGE=plan.positions_per_image, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        BLOCK_M=plan.BLOCK_M, BLOCK_C=plan.BLOCK_C, USE_INT64=plan.USE_INT64,
        num_warps=_NUM_WARPS_STREAM,
    )
    return y


def _backward_impl(grad_y, x, stats, weight, use_batch_stats, num_groups) -> tuple[Tensor, Tensor]:
    """dx (x's strides and dtype) and (2, C) [dweight; dbias] in the compute dtype (stats')."""
    # the kernels address dy through x's strides
    dy = grad_y if grad_y.stride() == x.stride() else torch.empty_like(x, dtype=grad_y.dtype).copy_(grad_y)
    plan = _get_plan(x)
    channels_per_group = plan.num_channels // num_groups
    partials_numel = 2 * plan.num_splits * plan.num_channels
    # partial sums, then the (2, G) dx coefficients
    workspace = _new_buffer(partials_numel + 2 * num_groups, x, stats.dtype)
    dweight_dbias = _new_buffer(2 * plan.num_channels, x, stats.dtype).view(2, plan.num_channels)
    dx = _empty_like(x)
    stream_launch_args = dict(POSITIONS_PER_IMAGE=plan.positions_per_image, BLOCK_M=plan.BLOCK_M,
                              BLOCK_C=plan.BLOCK_C, USE_INT64=plan.USE_INT64, num_warps=_NUM_WARPS_STREAM)
    _k.bn_backward_reduce_kernel[plan.grid](
        x, dy, stats, workspace, plan.num_positions, plan.num_channels, channels_per_group, num_groups,
        plan.stride_n, plan.stride_hw, plan.stride_c, plan.positions_per_split, plan.tiles_per_split,
        **stream_launch_args,
    )
    block_s, block_cg, finalize_warps = plan.finalize_blocks(channels_per_group)
    _k.bn_backward_finalize_kernel[(num_groups,)](
        workspace, weight if weight is not None else stats, dweight_dbias,
        plan.num_positions, plan.num_channels, channels_per_group, plan.num_splits,
        HAS_WEIGHT=weight is not None, BATCH_STATS=bool(use_batch_stats),
        BLOCK_S=block_s, BLOCK_CG=block_cg, num_warps=finalize_warps,
    )
    _k.bn_backward_dx_kernel[plan.grid](
        x, dy, dx, stats, weight if weight is not None else stats, workspace[partials_numel:],
        plan.num_positions, plan.num_channels, channels_per_group, num_groups,
        plan.stride_n, plan.stride_hw, plan.stride_c, plan.positions_per_split, plan.tiles_per_split,
        HAS_WEIGHT=weight is not None, **stream_launch_args,
    )
    return dx, dweight_dbias


# ----------------------------------------------------------------------------------------------------------
# Autograd bookkeeping shared by the eager Function and the custom op's autograd formula
# ----------------------------------------------------------------------------------------------------------
def _save_for_backward(ctx, x, stats, weight, bias, use_batch_stats, stat_groups, eps) -> None:
    # x as the caller passed it (not its NCHW copy, for odd strides): the double backward differentiates through it
    ctx.save_for_backward(x, stats, weight)
    ctx.use_batch_stats = use_batch_stats
    ctx.stat_groups = stat_groups
    ctx.eps = eps
    ctx.weight_dtype = weight.dtype if weight is not None else None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _gradients(ctx, grad_y, backward, needs_x_grad: bool, needs_weight_grad: bool, needs_bias_grad: bool):
    """(dx, dweight, dbias) from backward (_backward_impl or its custom op) on the saved tensors; dweight / dbias
    in the parameters' dtypes (the kernels accumulate in the compute dtype); None where not needed."""
    x, stats, weight = ctx.saved_tensors
    dx, dweight_dbias = backward(grad_y, _as_layout(x), stats, weight, ctx.use_batch_stats, ctx.stat_groups)
    return (dx if needs_x_grad else None, dweight_dbias[0].to(ctx.weight_dtype) if needs_weight_grad else None,
            dweight_dbias[1].to(ctx.bias_dtype) if needs_bias_grad else None)


def _differentiable_gradients(ctx, grad_y, needs_x_grad: bool, needs_weight_grad: bool, needs_bias_grad: bool):
    """(dx, dweight, dbias) as _gradients gives them, in differentiable PyTorch ops, for a backward with
    create_graph=True: the normalisation is recomputed from the saved input (batch statistics from x itself, so
    that their dependence on x is in the graph; running statistics are the saved constants) and differentiated by
    autograd, so the gradients carry a graph to x, weight and grad_y and second derivatives are exact."""
    x, stats, weight = ctx.saved_tensors
    batch, channels = x.shape[:2]
    grouped = x.to(stats.dtype).reshape(batch, ctx.stat_groups, -1)
    if ctx.use_batch_stats:
        var, mean = torch.var_mean(grouped, dim=(0, 2), correction=0, keepdim=True)
        invstd = torch.rsqrt(var + ctx.eps)
    else:
        mean, invstd = stats[0].view(1, -1, 1), stats[1].view(1, -1, 1)
    normalized = ((grouped - mean) * invstd).reshape(x.shape)
    scaled = normalized * weight.view(1, channels, 1, 1) if weight is not None else normalized
    wanted = [tensor for tensor, needed in ((x, needs_x_grad), (weight, needs_weight_grad)) if needed]
    grads = iter(torch.autograd.grad(scaled, wanted, grad_y.to(scaled.dtype), create_graph=True) if wanted else ())
    dx = next(grads) if needs_x_grad else None
    dweight = next(grads).to(ctx.weight_dtype) if needs_weight_grad else None
    dbias = grad_y.sum(dim=(0, 2, 3), dtype=stats.dtype).to(ctx.bias_dtype) if needs_bias_grad else None
    return dx, dweight, dbias


# ----------------------------------------------------------------------------------------------------------
# Eager path: autograd.Function
# ----------------------------------------------------------------------------------------------------------
class _GroupedBatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, num_batches_tracked,
                use_batch_stats, momentum, eps, stat_groups):
        x_for_kernels = _as_layout(x)
        if use_batch_stats:
            stats = _stats_impl(x_for_kernels, running_mean, running_var, num_batches_tracked, momentum, eps,
                                stat_groups)
        else:
            stats = _eval_stats(running_mean, running_var, eps, _compute_dtype(x))
        y = _normalize_impl(x_for_kernels, stats, weight, bias, stat_groups)
        _save_for_backward(ctx, x, stats, weight, bias, use_batch_stats, stat_groups, eps)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        needs_grad = ctx.needs_input_grad  # forward's inputs: x, weight, bias, then seven without gradients
        # grad mode is on in a backward exactly when it was asked for with create_graph=True
        gradients = _differentiable_gradients if torch.is_grad_enabled() else functools.partial(
            _gradients, backward=_backward_impl)
        return (*gradients(ctx, grad_y, needs_x_grad=needs_grad[0], needs_weight_grad=needs_grad[1],
                           needs_bias_grad=needs_grad[2]),
                None, None, None, None, None, None, None)


# ----------------------------------------------------------------------------------------------------------
# torch.compile path: custom ops
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("bnexp::grouped_bn_stats", mutates_args=("running_mean", "running_var"))
def _stats_op(
    x: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    num_batches_tracked: Optional[Tensor],
    momentum: Optional[float],
    eps: float,
    stat_groups: int,
) -> Tensor:
    return _stats_impl(_as_layout(x), running_mean, running_var, num_batches_tracked, momentum, eps, stat_groups)


@_stats_op.register_fake
def _stats_fake(x, running_mean, running_var, num_batches_tracked, momentum, eps, stat_groups):
    return x.new_empty((2, int(stat_groups)), dtype=_compute_dtype(x))


@torch.library.custom_op("bnexp::grouped_bn_normalize", mutates_args=())
def _normalize_op(
    x: Tensor,
    stats: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    use_batch_stats: bool,
    stat_groups: int,
    eps: float,
) -> Tensor:
    return _normalize_impl(_as_layout(x), stats, weight, bias, stat_groups)


@_normalize_op.register_fake
def _normalize_fake(x, stats, weight, bias, use_batch_stats, stat_groups, eps):
    return torch.empty_like(_as_layout(x))


@torch.library.custom_op("bnexp::grouped_bn_backward", mutates_args=())
def _backward_op(
    grad_y: Tensor,
    x: Tensor,
    stats: Tensor,
    weight: Optional[Tensor],
    use_batch_stats: bool,
    stat_groups: int,
) -> tuple[Tensor, Tensor]:
    return _backward_impl(grad_y, _as_layout(x), stats, weight, use_batch_stats, stat_groups)


@_backward_op.register_fake
def _backward_fake(grad_y, x, stats, weight, use_batch_stats, stat_groups):
    return torch.empty_like(_as_layout(x)), x.new_empty((2, x.shape[1]), dtype=stats.dtype)


def _normalize_backward(ctx, grad_y):
    needs_grad = ctx.needs_input_grad  # the op's inputs: x, stats, weight, bias, then three without gradients
    # grad mode is on in a backward exactly when it was asked for with create_graph=True (an eager call of the
    # custom ops; torch.compile refuses double backward before it gets here)
    gradients = _differentiable_gradients if torch.is_grad_enabled() else functools.partial(
        _gradients, backward=torch.ops.bnexp.grouped_bn_backward)
    dx, dweight, dbias = gradients(ctx, grad_y, needs_x_grad=needs_grad[0], needs_weight_grad=needs_grad[2],
                                   needs_bias_grad=needs_grad[3])
    # stats were computed from x.detach() (or are running buffers): their influence on the loss is already
    # inside dx, so they get no gradient of their own
    return dx, None, dweight, dbias, None, None, None


# the op's inputs are _save_for_backward's arguments, in its order
_normalize_op.register_autograd(_normalize_backward,
                                setup_context=lambda ctx, inputs, output: _save_for_backward(ctx, *inputs))


# ----------------------------------------------------------------------------------------------------------
# Public functional
# ----------------------------------------------------------------------------------------------------------
def triton_grouped_batch_norm(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    num_batches_tracked: Optional[Tensor],
    *,
    use_batch_stats: bool,
    momentum: Optional[float],
    eps: float,
    stat_groups: int,
) -> Tensor:
    """Grouped BatchNorm with Triton kernels; same signature and semantics as torch_grouped_batch_norm.

    x: (N, C, H, W) fp32/fp16/bf16 (fp32 statistics) or float64 (fp64 statistics), NCHW or channels_last (other
    strides are copied to contiguous first).
    Statistics over groups of C // stat_groups consecutive channels; running buffers (G,) updated in place
    when use_batch_stats (momentum, or 1 / num_batches_tracked read on device when momentum is None).
    Returns y in x's dtype and memory format. Eager calls go through an autograd.Function; under torch.compile
    the same kernels are reached through the custom ops (grouped_batch_norm_custom_ops).
    """
    check_eps(eps, use_batch_stats)
    if x.numel() == 0:
        return empty_batch_output(x, weight, bias)
    if torch.compiler.is_compiling():
        return grouped_batch_norm_custom_ops(x, weight, bias, running_mean, running_var, num_batches_tracked,
                                             use_batch_stats=use_batch_stats, momentum=momentum, eps=eps,
                                             stat_groups=stat_groups)
    return _GroupedBatchNormFn.apply(x, weight, bias, running_mean, running_var, num_batches_tracked,
                                     bool(use_batch_stats), momentum, float(eps), int(stat_groups))


def grouped_batch_norm_custom_ops(x, weight, bias, running_mean, running_var, num_batches_tracked, *,
                                  use_batch_stats, momentum, eps, stat_groups) -> Tensor:
    """triton_grouped_batch_norm (same arguments) through the bnexp:: custom ops, as torch.compile captures it."""
    check_eps(eps, use_batch_stats)
    if x.numel() == 0:
        return empty_batch_output(x, weight, bias)
    if use_batch_stats:
        stats = torch.ops.bnexp.grouped_bn_stats(
            x.detach(), running_mean, running_var, num_batches_tracked, momentum, float(eps), int(stat_groups))
    else:
        stats = _eval_stats(running_mean, running_var, eps, _compute_dtype(x))
    return torch.ops.bnexp.grouped_bn_normalize(x, stats, weight, bias, bool(use_batch_stats), int(stat_groups),
                                                float(eps))
