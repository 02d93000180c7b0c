"""The host side of the Triton kernels: whether they can run here, the launch plan, and the host functions that
allocate buffers and launch them (bnexp/norm/triton_kernels.py holds the kernels; triton_function.py wraps these
host functions in autograd and torch.library custom ops).

Public:
    triton_status() -> (ok, reason)      can Triton run kernels on CUDA tensors here?
    kernels_interpreted() -> bool        were the kernels built for the Triton interpreter (CPU tensors)?
    Tuning, cuda_tuning(sm_count), INTERPRETER_TUNING: the launch sizes the host code plans with
The host functions _stats_impl, _normalize_impl and _backward_impl are the package's own (triton_function.py and
the benchmark scripts call them).

Precision: statistics, workspaces and gradient sums are fp32 for fp32, fp16 and bf16 inputs, fp64 for float64 ones
(the compute dtype, _compute_dtype).

Importing this module imports triton. Set TRITON_INTERPRET=1 before the import to run the kernels on CPU tensors
(the tests do this when there is no GPU).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor


try:  # keep the module importable without triton so triton_status() can explain what is missing
    import triton

    from bnexp.norm import triton_kernels as _k

    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # pragma: no cover - depends on the environment
    triton = None
    _k = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = ["INTERPRETER_TUNING", "Tuning", "cuda_tuning", "kernels_interpreted", "triton_status"]

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


