"""The optimiser a run trains with, with its parameter groups, and its learning-rate schedule.

The trainer and scripts/bench_train.py both build them here, so that a benchmark times the update a run makes."""
from __future__ import annotations

import functools
import math

import torch
from omegaconf import DictConfig


def build_optimizer(model: torch.nn.Module, optim_cfg: DictConfig) -> torch.optim.Optimizer:
    # No weight decay on norm affine parameters and biases (1-D tensors), as is usual for BN nets.
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": optim_cfg.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov)
    if optim_cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas))
    # The one name check outside the schema: a run's config was checked by the schema (train() validates it even
    # when built in Python), but a script or test may call this with an optim config the schema never saw.
    raise ValueError(f"unknown optimizer {optim_cfg.name!r}; use optim=sgd or optim=adamw")


def _cosine_decay(progress: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * progress))


def _linear_decay(progress: float) -> float:
    return 1 - progress


# optim.schedule -> the decay after warmup (the schema allows these names only)
DECAYS = {"cosine": _cosine_decay, "linear": _linear_decay}


def lr_multiplier(step: int, total_steps: int, warmup_frac: float, schedule: str) -> float:
    """Linear warmup from 0, then cosine or linear decay to 0."""
    decay = DECAYS.get(schedule)  # looked up first: LambdaLR calls this for step 0 when it is built
    if decay is None:  # as for the optimizer: a caller may pass a config the schema never saw
        raise ValueError(f"unknown schedule {schedule!r}; use optim.schedule=cosine or linear")
    warmup_steps = max(1, int(round(total_steps * warmup_frac)))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return decay(progress)


def build_lr_schedule(optimizer: torch.optim.Optimizer, optim_cfg: DictConfig,
                      total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    # the settings are bound once: OmegaConf lookups cost microseconds, and this runs every step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_multiplier, total_steps=total_steps, warmup_frac=optim_cfg.warmup_frac, schedule=optim_cfg.schedule))
