"""Activation statistics from forward hooks, armed for the forward pass of a measure step only.

Each statistic is a `ForwardStat`: which modules it watches, whether it reads their input (before the module runs)
or their output, and a function from (module, tensor) to named 0-d tensors. `FORWARD_STATS` is the list a probe
records; a new statistic is one more entry there, nothing else changes. Keys are `<prefix>/<module name>/<name>`.
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


@dataclass(frozen=True)
class ForwardStat:
    prefix: str
    watches: Callable[[nn.Module], bool]
    reads: Literal["input", "output"]
    compute: Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]  # may return {} to skip


def norm_input_stats(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel batch statistics of a norm layer's input, summarised over channels, and how far the running
    statistics (read before this batch updates them: what eval mode would use now) are from this batch's, at the
    layer's own statistic granularity."""
    if x.dim() < 2:
        return {}
    x = x if x.dtype == torch.float32 else x.float()  # fp32 statistics under autocast
    channel_var, channel_mean = torch.var_mean(x, dim=[d for d in range(x.dim()) if d != 1], unbiased=False)
    mean_min, mean_max = torch.aminmax(channel_mean)
    var_min, var_max = torch.aminmax(channel_var)
    stats = {"mean_mean": channel_mean.mean(), "mean_min": mean_min, "mean_max": mean_max,
             "var_mean": channel_var.mean(), "var_min": var_min, "var_max": var_max}

    running_mean, running_var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
    if torch.is_tensor(running_mean) and torch.is_tensor(running_var):
        groups, channels = running_mean.numel(), channel_mean.numel()
        if groups > 0 and channels % groups == 0:
            group_mean = channel_mean.view(groups, -1).mean(1)
            # E[x^2] per group from per-channel var + mean^2 (every channel has the same count)
            group_square_mean = (channel_var + channel_mean.square()).view(groups, -1).mean(1)
            group_var = (group_square_mean - group_mean.square()).clamp_min(0)
            eps = float(getattr(module, "eps", 1e-5))
            stats["running_mean_gap"] = ((running_mean.float() - group_mean).abs() / (group_var + eps).sqrt()).mean()
            stats["running_var_logratio"] = ((running_var.float() + eps) / (group_var + eps)).log().abs().mean()
    return stats


def output_rms(_module: nn.Module, y: torch.Tensor) -> dict[str, torch.Tensor]:
    # vector_norm accumulates in fp32 without materialising a squared (or upcast) copy
    return {"rms": torch.linalg.vector_norm(y, dtype=torch.float32) / math.sqrt(max(y.numel(), 1))}


FORWARD_STATS = (
    ForwardStat("bn", is_norm_layer, "input", norm_input_stats),
    ForwardStat("act", is_conv_linear_or_norm, "output", output_rms),
)


class ForwardHooks:
    """Arms one hook per (statistic, watched module) for a forward pass; each hook hands its values to `record`."""

    def __init__(self, model: nn.Module, record: RecordFn, stats: tuple[ForwardStat, ...] = FORWARD_STATS):
        self.record = record
        self.watched = [(stat, name, module) for stat in stats for name, module in model.named_modules()
                        if stat.watches(module)]
        self._handles: list = []
        self._measured: set[int] = set()  # indices into `watched` measured in this forward

    def arm(self) -> None:
        self.disarm()
        self._measured = set()
        for index, (stat, _name, module) in enumerate(self.watched):
            if stat.reads == "input":
                handle = module.register_forward_pre_hook(functools.partial(self._on_input, index))
            else:
                handle = module.register_forward_hook(functools.partial(self._on_output, index))
            self._handles.append(handle)

    def disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _on_input(self, index: int, _module, inputs) -> None:
        self._measure(index, inputs[0] if inputs else None)

    def _on_output(self, index: int, _module, _inputs, output) -> None:
        self._measure(index, output)

    def _measure(self, index: int, tensor) -> None:
        # once per forward, even if the module runs twice (weight sharing, checkpointing)
        if not torch.is_tensor(tensor) or index in self._measured:
            return
        self._measured.add(index)
        stat, name, module = self.watched[index]
        with torch.no_grad():
            values = stat.compute(module, tensor.detach())
        if values:
            self.record([f"{stat.prefix}/{name}/{key}" for key in values], torch.stack(list(values.values())))
