"""Activation statistics from forward hooks, armed for the forward pass of a measure step only.

Each statistic is a `ForwardStat`: which modules it watches, whether it reads their input (before the module runs)
or their output, and a function from (module, tensor) to named 0-d tensors. `FORWARD_STATS` is the list a probe
records; a new statistic is one more entry there, nothing else changes. Keys are `<prefix>/<module name>/<name>`.

A statistic is taken once per module and forward, except with `each_call`: a module applied several times in one
forward (airbench's and ResNet's blocks apply one activation module after each of their two norms) is then measured
at every call, and the k-th call (k >= 2) is named `<module name>.call<k>`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

RecordFn = Callable[[list[str], torch.Tensor], None]


def is_norm_layer(module: nn.Module) -> bool:
    """Batch-norm-like layers: torch's _BatchNorm family and bnexp's BatchNorm2d (which has `stat_groups`)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or hasattr(module, "stat_groups")


def is_conv_linear_or_norm(module: nn.Module) -> bool:
    return is_norm_layer(module) or isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))


ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Mish)


def is_activation(module: nn.Module) -> bool:
    return isinstance(module, ACTIVATIONS)


@dataclass(frozen=True)
class ForwardStat:
    prefix: str
    watches: Callable[[nn.Module], bool]
    reads: Literal["input", "output"]
    compute: Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]  # may return {} to skip
    each_call: bool = False  # measure every call of a module within a forward, not only the first


# Ratios of per-channel scales are capped here: a channel of zero scale would make them infinite.
MAX_SCALE_RATIO = 1e6


def _spread(scales: torch.Tensor) -> torch.Tensor:
    """max / min of non-negative per-channel scales, at most MAX_SCALE_RATIO (1 when all are 0)."""
    low, high = torch.aminmax(scales)
    return torch.where(high > 0, high / torch.maximum(low, high / MAX_SCALE_RATIO), torch.ones_like(high))


def channel_dims(x: torch.Tensor) -> list[int]:
    return [d for d in range(x.dim()) if d != 1]


def statistics_in_use(module: nn.Module, channel_mean: torch.Tensor, channel_var: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch mean and variance a norm layer in training subtracts from and divides each channel by, as (C,)
    tensors, from the per-channel moments of its input; None when its running buffers do not say how it groups.

    The grouping is read off the running buffers (one entry per statistic), and bnexp's `pooled` says which
    statistic a group shares: 'both' the group's mean and its variance about that mean (the channels' spread of
    means included), 'mean' the group's mean and each channel's own variance, 'var' each channel's own mean and the
    mean of the group's channel variances. torch's layers are per channel ('both' with groups of one)."""
    running_mean, running_var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
    if not (torch.is_tensor(running_mean) and torch.is_tensor(running_var)):
        return None
    channels, mean_groups, var_groups = channel_mean.numel(), running_mean.numel(), running_var.numel()
    if not (0 < mean_groups and 0 < var_groups and channels % mean_groups == 0 and channels % var_groups == 0):
        return None
    # every channel has the same count, so a group's moments are the means of its channels'
    group_mean = channel_mean.view(mean_groups, -1).mean(1).repeat_interleave(channels // mean_groups)
    if getattr(module, "pooled", "both") == "both":
        # E[x^2] per group from per-channel var + mean^2
        square_mean = (channel_var + channel_mean.square()).view(var_groups, -1).mean(1)
        group_var = (square_mean.repeat_interleave(channels // var_groups) - group_mean.square()).clamp_min(0)
    else:  # each channel's variance about its own mean, pooled over a group when 'var', per channel when 'mean'
        group_var = channel_var.view(var_groups, -1).mean(1).repeat_interleave(channels // var_groups)
    return group_mean, group_var


def norm_input_stats(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel batch statistics of a norm layer's input, summarised over channels; how far the running
    statistics (read before this batch updates them: what eval mode would use now) are from this batch's, at the
    layer's own statistic granularity; and what normalising does to each channel before gamma/beta, i.e. to
    x_hat_c = (x_c - m_c) / sqrt(v_c + eps) with (m_c, v_c) the statistics the layer uses for channel c
    (`statistics_in_use`):

    - `xhat_std_ratio`: the largest over the smallest per-channel std of x_hat, std_c / sqrt(v_c + eps): about 1
      whenever each channel is divided by its own std (per-channel statistics, pooled='mean'), the channels' own
      std spread within a group when the variance is pooled (pooled 'both' and 'var'), i.e. the scale mixing;
    - `xhat_offset_max`: the largest |mean| of a channel of x_hat, |mu_c - m_c| / sqrt(v_c + eps): 0 whenever
      each channel is centred on its own mean (per-channel statistics, pooled='var'), the channels' offsets from
      their group's mean when the mean is pooled (pooled 'both' and 'mean'), i.e. the offset mixing."""
    # fp32 statistics under autocast (.float() of an fp32 tensor is the tensor itself)
    channel_var, channel_mean = torch.var_mean(x.float(), dim=channel_dims(x), unbiased=False)
    mean_min, mean_max = torch.aminmax(channel_mean)
    var_min, var_max = torch.aminmax(channel_var)
    stats = {"mean_mean": channel_mean.mean(), "mean_min": mean_min, "mean_max": mean_max,
             "var_mean": channel_var.mean(), "var_min": var_min, "var_max": var_max}

    in_use = statistics_in_use(module, channel_mean, channel_var)
    if in_use is not None:
        used_mean, used_var = in_use
        channels = channel_mean.numel()
        eps = float(getattr(module, "eps", 1e-5))
        used_std = (used_var + eps).sqrt()
        # the running statistics expanded to channels like the batch ones: with equal groups a mean over channels
        # is the mean over statistics
        running_mean = module.running_mean.float().repeat_interleave(channels // module.running_mean.numel())
        running_var = module.running_var.float().repeat_interleave(channels // module.running_var.numel())
        stats["running_mean_gap"] = ((running_mean - used_mean).abs() / used_std).mean()
        stats["running_var_logratio"] = ((running_var + eps) / (used_var + eps)).log().abs().mean()
        stats["xhat_std_ratio"] = _spread(channel_var.sqrt() / used_std)
        stats["xhat_offset_max"] = ((channel_mean - used_mean).abs() / used_std).max()
    return stats


def output_rms(_module: nn.Module, y: torch.Tensor) -> dict[str, torch.Tensor]:
    # vector_norm accumulates in fp32 without materialising a squared (or upcast) copy
    return {"rms": torch.linalg.vector_norm(y, dtype=torch.float32) / math.sqrt(max(y.numel(), 1))}


def norm_output_spread(module: nn.Module, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """How unequal the channels leave a norm layer: `out_std_ratio` is the largest over the smallest per-channel
    standard deviation of the output (over the batch and positions). With per-channel statistics each channel
    leaves with std |gamma_c| (up to eps), so it stays near `gamma_ratio` (max |gamma| / min |gamma|, recorded
    beside it when the layer has per-channel gamma); with statistics shared across channels every channel keeps
    its input's scale relative to the others, so low-variance channels are squashed and large ones dominate."""
    stats = {"out_std_ratio": _spread(torch.var(y.float(), dim=channel_dims(y), unbiased=False).sqrt())}
    weight = getattr(module, "weight", None)
    if torch.is_tensor(weight) and weight.numel() > 1:
        stats["gamma_ratio"] = _spread(weight.detach().float().abs())
    return stats


# A unit is dead when its output never exceeds this anywhere in the batch (see activation_deadness).
DEAD_THRESHOLD = 1e-6


def activation_deadness(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """From an activation's input (its pre-activation), per channel over the batch and positions:

    - `dead_frac`: the fraction of channels whose output never exceeds DEAD_THRESHOLD (1e-6) at any position of any
      image. After ReLU that is an output of exactly 0 everywhere; after GELU a pre-activation never above ~2e-6, so
      the unit passes only GELU's negative tail (>= -0.17, exactly 0 in fp32 below about -5.5). The activations
      here are increasing wherever they are positive, so a channel's largest output is the activation of its
      largest input, and one max over the input decides it.
    - `preact_max`: the largest pre-activation in the batch. At or below 0 in the activation before the head, the
      layer has no positive output left anywhere (every channel dead)."""
    if x.dim() < 2:
        return {}
    channel_max = x.amax(dim=channel_dims(x)).float()
    # forward, not __call__: the module's own (armed) hooks must not see this; a copy: ReLU(inplace=True) overwrites
    largest_output = module.forward(channel_max.clone())
    return {"dead_frac": (largest_output <= DEAD_THRESHOLD).float().mean(), "preact_max": channel_max.max()}


def input_zero_fraction(_module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """`in_zero_frac`: the fraction of exactly-zero entries in a linear layer's input. At 1 (the head of a net whose
    last activation is dead, behind a max-pool that picks GELU's exact zeros) the layer's weight gradient is exactly
    0, and so is every gradient below it: the network cannot recover."""
    return {"in_zero_frac": (x == 0).float().mean()}


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


FORWARD_STATS = (
    ForwardStat("bn", is_norm_layer, "input", norm_input_stats),
    ForwardStat("act", is_conv_linear_or_norm, "output", output_rms),
    ForwardStat("bn", is_norm_layer, "output", norm_output_spread),
    ForwardStat("act", is_activation, "input", activation_deadness, each_call=True),
    ForwardStat("act", is_linear, "input", input_zero_fraction),
)


class ForwardHooks:
    """Arms one hook per (statistic, watched module) for a forward pass; each hook hands its values to `record`."""

    def __init__(self, model: nn.Module, record: RecordFn, stats: tuple[ForwardStat, ...] = FORWARD_STATS):
        self.record = record
        self.watched = [(stat, name, module) for stat in stats for name, module in model.named_modules()
                        if stat.watches(module)]
        self._handles: list = []
        self._calls: dict[int, int] = {}  # index into `watched` -> calls measured in this forward

    def arm(self) -> None:
        self.disarm()
        self._calls = {}
        for index, (stat, _name, module) in enumerate(self.watched):
            register = module.register_forward_pre_hook if stat.reads == "input" else module.register_forward_hook
            self._handles.append(register(functools.partial(self._measure, index)))

    def disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _measure(self, index: int, _module, inputs, output=None) -> None:
        """The hook of `watched[index]`: a forward pre-hook (called without `output`) or a forward hook."""
        stat, name, module = self.watched[index]
        tensor = output if stat.reads == "output" else (inputs[0] if inputs else None)
        calls = self._calls.get(index, 0)
        # once per forward (weight sharing, checkpointing), unless the statistic wants every call
        if not torch.is_tensor(tensor) or (calls and not stat.each_call):
            return
        self._calls[index] = calls + 1
        name = f"{name}.call{calls + 1}" if calls else name
        with torch.no_grad():
            values = stat.compute(module, tensor.detach())
        if values:
            self.record([f"{stat.prefix}/{name}/{key}" for key in values], torch.stack(list(values.values())))
