"""What every source hands the trainer: a Dataset of a train and a test Split (uint8 images, int64 labels), and the
DatasetError a source raises when its data is missing or unreadable, saying how to fix it."""
from __future__ import annotations

import lzma
import pickle
import tarfile
import zipfile
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

# The class folder names of a CIFAR-10 image tree, in label order (they sort into it); a run's models have ten outputs.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# What reading a source or a cache can raise when the data is missing, truncated or corrupt. Only these become a
# DatasetError (exit code 2): a kill (the trainer's SIGTERM exception, Ctrl-C) must pass through as itself.
READ_ERRORS = (OSError, EOFError, ValueError, KeyError, tarfile.TarError, lzma.LZMAError, zlib.error,
               zipfile.BadZipFile, pickle.UnpicklingError)


class DatasetError(RuntimeError):
    """A dataset that is missing or unreadable; the message says how to fix it."""


@dataclass
class Split:
    images: Tensor  # (N, 3, 32, 32) uint8
    labels: Tensor  # (N,) int64

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, size: int | None, seed: int) -> "Split":
        """A fixed random subset (the same for every variant), or the whole split when size is None."""
        if size is not None and size > len(self):
            raise ValueError(f"a subset of {size} images was asked of a split of {len(self)}")
        if size is None or size == len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:size]
        return Split(self.images[order], self.labels[order])


@dataclass
class Dataset:
    train: Split
    test: Split
    source: str  # said in summaries and reports: original CIFAR-10, the JPEG copy, or synthetic


def how_to_fix(path) -> str:
    return (f"Fix it by one of: (1) data=cifar10 data.data_dir=<dir> on a machine with network, to download "
            f"CIFAR-10; (2) data=cifar10_folder data.path=<folder or .tar.xz archive of "
            f"{{train,test}}/<class>/*.jpg> (e.g. /path/to/cifar10-jpeg.tar.xz); "
            f"(3) data=synthetic for random images. (path: {path})")


def check_subset_sizes(train_images: int, test_images: int, train_size: int | None, test_size: int | None,
                       source) -> None:
    """A subset larger than the split it is cut from is a config error naming what the source holds (it is
    never clamped: a run must train on the number of images its config says)."""
    from bnexp.config.compose import ConfigError

    for key, asked, available in (("data.train_size", train_size, train_images),
                                  ("data.test_size", test_size, test_images)):
        if asked is not None and asked > available:
            raise ConfigError(f"{key}={asked} is more than the {available} images the source holds "
                              f"({source}); use {key}={available} or less, or {key}=null for all of them")
