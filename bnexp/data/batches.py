"""Batches on the training device: a whole split lives there as one uint8 tensor, and augmentation (random crop
with reflect padding, horizontal flip) and normalisation run a batch at a time, with no per-image Python."""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from bnexp.data.dataset import Split

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@functools.cache
def _mean_and_std(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # Made once per device: building them from Python lists every step would be a host-to-device copy.
    return tuple(torch.tensor(values, dtype=dtype).view(1, 3, 1, 1).mul(255).to(device)
                 for values in (CIFAR10_MEAN, CIFAR10_STD))


def normalize(images_uint8: Tensor, dtype=torch.float32) -> Tensor:
    mean, std = _mean_and_std(images_uint8.device, dtype)
    return (images_uint8.to(dtype) - mean) / std


def augment(images: Tensor, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop (reflect padding) and horizontal flip for a whole batch, on the batch's device."""
    batch, _, height, width = images.shape
    device = images.device
    if pad > 0:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
        shift_y = torch.randint(0, 2 * pad + 1, (batch, 1, 1), device=device, generator=generator)
        shift_x = torch.randint(0, 2 * pad + 1, (batch, 1, 1), device=device, generator=generator)
        rows = torch.arange(height, device=device).view(1, height, 1) + shift_y
        cols = torch.arange(width, device=device).view(1, 1, width) + shift_x
        batch_index = torch.arange(batch, device=device).view(batch, 1, 1)
        # Advanced indexing gathers every image's window at once: (B, H, W, C) -> (B, C, H, W).
        images = padded.permute(0, 2, 3, 1)[batch_index, rows, cols].permute(0, 3, 1, 2)
    if flip:
        flip_mask = torch.rand(batch, device=device, generator=generator) < 0.5
        images = torch.where(flip_mask.view(batch, 1, 1, 1), images.flip(3), images)
    return images


class TrainBatches:
    """Shuffled full batches of a device-resident split, augmented on the device."""

    def __init__(self, split: Split, batch_size: int, pad: int, flip: bool, seed: int):
        self.split, self.batch_size, self.pad, self.flip = split, batch_size, pad, flip
        self.generator = torch.Generator(device=split.images.device).manual_seed(seed)
        if len(split) < batch_size:
            raise ValueError(f"train split has {len(split)} images, fewer than train.batch_size={batch_size}; "
                             "lower the batch size or raise data.train_size")

    def __len__(self) -> int:
        return len(self.split) // self.batch_size

    def __iter__(self):
        order = torch.randperm(len(self.split), device=self.split.images.device, generator=self.generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            indices = order[start:start + self.batch_size]
            images = augment(self.split.images[indices], self.pad, self.flip, self.generator)
            yield images, self.split.labels[indices]


def eval_batches(split: Split, batch_size: int):
    for start in range(0, len(split), batch_size):
        yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
