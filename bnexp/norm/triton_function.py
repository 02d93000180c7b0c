"""Triton backend of the grouped BatchNorm functional (same signature as bnexp.norm.functional.torch_grouped_batch_norm).

Public:
    triton_grouped_batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked, *,
                              use_batch_stats, momentum, eps, stat_groups) -> Tensor
    grouped_batch_norm_custom_ops(...)  the same, always through the custom ops (what torch.compile runs)
    triton_status, kernels_interpreted, Tuning, cuda_tuning, INTERPRETER_TUNING: re-exported from triton_launch.py,
    the host side (can the kernels run here, the launch plan, the host functions that launch them)

Precision: statistics, workspaces and gradient sums are fp32 for fp32, fp16 and bf16 inputs, fp64 for float64 ones
(the compute dtype, _compute_dtype). An input without elements (N, H or W = 0) gets the PyTorch path's empty
output (functional.empty_batch_output) without a kernel launch.

Double backward (autograd.grad(..., create_graph=True): gradient penalties, Hessian-vector products): the kernels'
gradients are constants to autograd, so with create_graph the backward of both paths computes the gradients in
differentiable PyTorch ops from the saved input instead (_differentiable_gradients), and their own gradients are
exact. torch.compile does not support double backward through a compiled graph at all (it raises).

Structure. The kernels are driven by three host functions (_stats_impl, _normalize_impl, _backward_impl, in
triton_launch.py), reached two ways:
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

Importing this module imports triton (through triton_launch.py); bnexp.norm's layer imports it lazily. Set
TRITON_INTERPRET=1 before the import to run the kernels on CPU tensors (the tests do this when there is no GPU).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from bnexp.norm.functional import check_eps, empty_batch_output
from bnexp.norm.triton_launch import (INTERPRETER_TUNING, Tuning, _as_layout, _backward_impl, _compute_dtype,
                                      _eval_stats, _normalize_impl, _stats_impl, cuda_tuning, kernels_interpreted,
                                      triton_status)

__all__ = ["INTERPRETER_TUNING", "Tuning", "cuda_tuning", "grouped_batch_norm_custom_ops", "kernels_interpreted",
           "triton_grouped_batch_norm", "triton_status"]


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
