"""The PyTorch path of the grouped BatchNorm: the reference the Triton kernels must match.

Statistics are pooled over `stat_groups` contiguous groups of channels:
stat_groups == C is ordinary per-channel BatchNorm, stat_groups == 1 pools one
mean and one variance over all of N*C*H*W.

We reuse `F.batch_norm`. For G == C it is called on x itself (ordinary per-channel
BatchNorm, affine fused, any layout). For G < C it runs on an (N, G, C/G*H*W) view,
the "view trick", exact but slow on a GPU (that slowness is why the Triton path
exists), and the per-channel affine follows.

`pooled` chooses which statistic a group shares, for interventions that separate the two effects of pooling:
'both' (the default) pools mean and variance; 'mean' pools the mean and keeps each channel's own variance (about
its own mean); 'var' keeps each channel's own mean and pools the variance (the mean over the group's channels of
each channel's variance about its own mean: the pooled within-channel variance). These two are plain tensor
arithmetic (`partially_pooled_batch_norm`), exact in float64, with no kernel behind them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_eps(eps: float, use_batch_stats: bool, where: str = "batch_norm") -> None:
    """F.batch_norm's rule, checked here so that both backends and every torch version keep it: eps > 0 with batch
    statistics (a constant channel has variance 0), eps >= 0 with running ones (a NaN eps passes, as in torch)."""
    if use_batch_stats and eps <= 0.0:
        raise ValueError(f"{where}: eps must be positive during training (batch statistics), got eps={eps}. "
                         "Use a small positive eps such as 1e-5.")
    if eps < 0.0:
        raise ValueError(f"{where}: eps must be non-negative, got eps={eps}. Use a small positive eps such as 1e-5.")


def empty_batch_output(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """F.batch_norm's result for an input without elements (N, H or W is 0): an empty output in x's dtype and
    layout, running statistics untouched, and weight and bias in the graph, so their gradients are zeros as torch's
    are."""
    channel_view = (1, x.shape[1], 1, 1)
    y = x * weight.view(channel_view) if weight is not None else x.clone()
    if bias is not None:
        y = y + bias.view(channel_view)
    return y.to(x.dtype)


POOLED = ("both", "mean", "var")


def running_average_factor(momentum: float | None, num_batches_tracked: Tensor | None, running_dtype: torch.dtype,
                           compute_dtype: torch.dtype) -> float | Tensor:
    """The weight of this batch in the running statistics: `momentum`, or for momentum=None the cumulative average's
    1/num_batches_tracked, read on the device (no host sync) in the statistics' precision at least, so float64
    buffers average exactly as nn.BatchNorm2d's do."""
    if momentum is not None:
        return momentum
    return 1.0 / num_batches_tracked.to(torch.promote_types(running_dtype, compute_dtype))


def torch_grouped_batch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    *,
    use_batch_stats: bool,
    momentum: float | None,
    eps: float,
    stat_groups: int,
    pooled: str = "both",
) -> Tensor:
    """Grouped BatchNorm in plain PyTorch.

    x is (N, C, H, W) in any layout; weight/bias are per channel (C,) or None;
    running_mean/var are (stat_groups,) or None, in any float dtype. With use_batch_stats the
    running buffers are updated in place (unbiased variance); momentum=None means
    a cumulative average with factor 1/num_batches_tracked, read on the device.
    Returns y in x's dtype and memory format. pooled='mean' or 'var' goes to `partially_pooled_batch_norm`.
    """
    check_eps(eps, use_batch_stats)
    if x.numel() == 0:
        return empty_batch_output(x, weight, bias)
    if pooled != "both":
        return partially_pooled_batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked,
                                           use_batch_stats=use_batch_stats, momentum=momentum, eps=eps,
                                           stat_groups=stat_groups, pooled=pooled)
    batch, channels, height, width = x.shape
    updates_running = use_batch_stats and running_mean is not None
    # Statistics in fp32 even for half inputs, as the Triton kernels do (float64 stays float64).
    compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    buffers_in_compute_dtype = running_mean is None or running_mean.dtype == compute_dtype
    fused_running_update = buffers_in_compute_dtype and not (updates_running and momentum is None)
    if stat_groups == channels and x.dtype == compute_dtype and fused_running_update:
        # Per-channel statistics are F.batch_norm itself: one fused call, in x's own layout, with no view,
        # no separate affine passes and no layout copies.
        if weight is None and bias is not None:
            # torch's double backward of batch_norm fails for a bias without a weight (a frozen gamma): the same
            # function with a weight of ones keeps Hessian-vector products (the sharpness) working
            weight = torch.ones_like(bias)
        return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, momentum or 0.0, eps)

    was_channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    grouped = x.to(compute_dtype).reshape(batch, stat_groups, -1)

    if updates_running and not fused_running_update:
        # The update F.batch_norm cannot fuse: the cumulative average (F.batch_norm wants a Python float, and
        # 1/num_batches_tracked would need a host sync), or buffers in another dtype than the statistics (a
        # half-precision layer).
        factor = running_average_factor(momentum, num_batches_tracked, running_mean.dtype, compute_dtype)
        with torch.no_grad():
            count = grouped.shape[0] * grouped.shape[2]
            var, mean = torch.var_mean(grouped, dim=(0, 2), correction=0)
            running_mean.lerp_(mean.to(running_mean.dtype), factor)
            running_var.lerp_((var * (count / max(count - 1, 1))).to(running_var.dtype), factor)
        running_mean = running_var = None  # updated: F.batch_norm below only normalises with the batch statistics
    elif not buffers_in_compute_dtype:  # eval, buffers in another dtype: read them in the statistics' dtype
        running_mean, running_var = running_mean.to(compute_dtype), running_var.to(compute_dtype)
    y = F.batch_norm(grouped, running_mean, running_var, None, None, use_batch_stats, momentum or 0.0, eps)

    y = y.reshape(batch, channels, height, width)
    if weight is not None:
        y = y * weight.view(1, channels, 1, 1)
    if bias is not None:
        y = y + bias.view(1, channels, 1, 1)
    y = y.to(x.dtype)
    return y.contiguous(memory_format=torch.channels_last) if was_channels_last else y


def partially_pooled_batch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    *,
    use_batch_stats: bool,
    momentum: float | None,
    eps: float,
    stat_groups: int,
    pooled: str,
) -> Tensor:
    """BatchNorm with one statistic pooled over `stat_groups` channel groups and the other per channel:

    - pooled='mean': y_c = (x_c - mean_g) / sqrt(var_c + eps), var_c about the channel's own mean, so every channel
      leaves with std 1 (up to eps) as with per-channel statistics, shifted by its offset from the group's mean;
    - pooled='var': y_c = (x_c - mean_c) / sqrt(var_g + eps), var_g the mean of the group's channel variances (each
      about its own mean), so every channel is centred and keeps its scale relative to the group.

    running_mean and running_var hold what is used: (stat_groups,) for the pooled statistic, (C,) for the
    per-channel one. Their update is nn.BatchNorm2d's: `momentum`, or the cumulative average for momentum=None,
    with the variance made unbiased by n / (n - 1), n = N*H*W the values of one channel. For the pooled variance
    that is the pooled within-channel variance with k*(n - 1) degrees of freedom (k channels, each with its own
    mean estimated), i.e. the mean of the channels' unbiased variances.
    """
    batch, channels, height, width = x.shape
    if pooled not in ("mean", "var"):
        raise ValueError(f"pooled={pooled!r} is not one of {POOLED}")
    compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    was_channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    values = x.to(compute_dtype)
    mean_groups = stat_groups if pooled == "mean" else channels
    var_groups = stat_groups if pooled == "var" else channels
    if use_batch_stats:
        channel_var, channel_mean = torch.var_mean(values, dim=(0, 2, 3), correction=0)
        # every channel of a group has the same count, so the group's mean is the mean of its channels' means
        mean = channel_mean.view(mean_groups, -1).mean(1)
        var = channel_var.view(var_groups, -1).mean(1)
        if running_mean is not None:
            count = batch * height * width
            factor = running_average_factor(momentum, num_batches_tracked, running_mean.dtype, compute_dtype)
            with torch.no_grad():
                running_mean.lerp_(mean.to(running_mean.dtype), factor)
                running_var.lerp_((var * (count / max(count - 1, 1))).to(running_var.dtype), factor)
    else:
        mean, var = running_mean.to(compute_dtype), running_var.to(compute_dtype)
    channel_view = (1, channels, 1, 1)
    subtracted = mean.repeat_interleave(channels // mean_groups).view(channel_view)
    inverse_std = torch.rsqrt(var.repeat_interleave(channels // var_groups) + eps).view(channel_view)
    y = (values - subtracted) * inverse_std
    if weight is not None:
        y = y * weight.view(channel_view)
    if bias is not None:
        y = y + bias.view(channel_view)
    y = y.to(x.dtype)
    return y.contiguous(memory_format=torch.channels_last) if was_channels_last else y
