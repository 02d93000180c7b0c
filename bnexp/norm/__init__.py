"""The norm layer: per-channel, grouped and shared BatchNorm statistics, with PyTorch and Triton backends, and
interventions that pool only the mean or only the variance, or freeze gamma at 1."""
from bnexp.norm.functional import torch_grouped_batch_norm
from bnexp.norm.layer import BatchNorm2d, resolve_backend

__all__ = ["BatchNorm2d", "resolve_backend", "torch_grouped_batch_norm"]
