"""The CIFAR-10 sources a run can train on, and `load_dataset`, which builds the configured one and cuts its subsets.

- cifar10:        torchvision's CIFAR10 with download=True (the path real users take).
- cifar10_folder: a {train,test}/<class>/*.jpg|png tree, or a .tar/.tar.gz/.tar.xz archive of one
                  (bnexp/data/folder.py: decoded once, in parallel, and cached).
- synthetic:      random images with CIFAR's shapes (class-dependent colour, so it is learnable).

Every source hands over uint8 tensors (bnexp/data/dataset.py); bnexp/data/batches.py batches them on the device.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from bnexp.data.dataset import READ_ERRORS, Dataset, DatasetError, Split, check_subset_sizes, how_to_fix
from bnexp.data.folder import load_image_folder


def load_torchvision_cifar10(data_dir: str, download: bool) -> Dataset:
    import torchvision

    def load(train: bool) -> Split:
        try:
            dataset = torchvision.datasets.CIFAR10(root=data_dir, train=train, download=download)
        except (*READ_ERRORS, RuntimeError) as error:  # no network, a corrupt file, a missing dir
            raise DatasetError(f"Could not load CIFAR-10 into {data_dir!r} with torchvision "
                               f"(download={download}): {error}. {how_to_fix(data_dir)}") from error
        images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
        return Split(images, torch.tensor(dataset.targets, dtype=torch.int64))

    return Dataset(load(True), load(False), source="CIFAR-10 (original, torchvision)")


def make_synthetic(train_size: int, test_size: int, seed: int, num_classes: int = 10) -> Dataset:
    """Noise plus a per-class colour and stripe pattern: CIFAR's shapes, learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    class_colours = torch.rand(num_classes, 3, 1, 1, generator=generator) * 160 + 48
    class_stripes = torch.randint(1, 6, (num_classes,), generator=generator)

    def split(size: int) -> Split:
        labels = torch.randint(0, num_classes, (size,), generator=generator)
        noise = torch.randn(size, 3, 32, 32, generator=generator) * 40
        rows = torch.arange(32).view(1, 1, 32, 1)
        stripes = ((rows // class_stripes[labels].view(-1, 1, 1, 1)) % 2) * 40
        images = (class_colours[labels] + noise + stripes).clamp(0, 255).to(torch.uint8)
        return Split(images, labels)

    return Dataset(split(train_size), split(test_size), source="synthetic")


def load_dataset(data_cfg, classes: Sequence[str] | None = None) -> Dataset:
    """Build the configured source, then cut the configured subsets. Both are fixed by data.subset_seed, not the
    run seed: runs with different seeds see the same images (only init, order and augmentation change).
    `classes`: the class folders an image tree must hold (a run asks for CIFAR-10's ten, CIFAR10_CLASSES); the
    other sources always have CIFAR-10's ten classes."""
    name = data_cfg.name
    subset_seed = data_cfg.get("subset_seed", 0)
    train_size, test_size = data_cfg.get("train_size"), data_cfg.get("test_size")
    if name == "cifar10":
        dataset = load_torchvision_cifar10(data_cfg.data_dir, data_cfg.get("download", True))
    elif name == "cifar10_folder":
        # the config check refuses this first; load_dataset called on its own (scripts, tests) must too
        if "path" not in data_cfg or not data_cfg["path"]:  # a DictConfig has no key whose value is ??? (unset)
            raise DatasetError(f"data=cifar10_folder needs data.path. {how_to_fix(None)}")
        dataset = load_image_folder(data_cfg.path, data_cfg.data_dir, data_cfg.get("decode_workers"),
                                    train_size=train_size, test_size=test_size, classes=classes)
    elif name == "synthetic":
        dataset = make_synthetic(train_size or 50_000, test_size or 10_000, subset_seed)
    else:
        raise DatasetError(f"unknown data source {name!r}: use data=cifar10, data=cifar10_folder or data=synthetic")
    check_subset_sizes(len(dataset.train), len(dataset.test), train_size, test_size, dataset.source)
    return Dataset(dataset.train.subset(train_size, subset_seed),
                   dataset.test.subset(test_size, subset_seed + 1), dataset.source)
