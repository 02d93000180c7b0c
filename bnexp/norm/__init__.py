"""The norm layer: per-channel, grouped and shared BatchNorm statistics, with PyTorch and Triton backends."""
from bnexp.norm.functional import torch_grouped_batch_norm
from bnexp.norm.layer import BatchNorm2d, resolve_backend

__all__ = ["BatchNorm2d", "resolve_backend", "torch_grouped_batch_norm"]
