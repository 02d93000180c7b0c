"""data=cifar10 through torchvision, without its download: torchvision's CIFAR10 gives (N, 32, 32, 3) uint8 arrays
and a list of labels; bnexp turns them into (N, 3, 32, 32) splits, and a dataset torchvision cannot load into a
DatasetError that says what to do."""
import numpy as np
import pytest
import torch
import torchvision

from bnexp.data.dataset import DatasetError
from bnexp.data.sources import load_torchvision_cifar10


class CIFAR10Arrays:
    """What torchvision.datasets.CIFAR10 holds after loading: `data` (N, H, W, C) uint8 and `targets`."""

    def __init__(self, root, train, download):
        rng = np.random.default_rng(0 if train else 1)
        size = 6 if train else 4
        self.data = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
        self.targets = list(rng.integers(0, 10, size))


def test_torchvisions_arrays_become_channel_first_splits(monkeypatch, tmp_path):
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", CIFAR10Arrays)
    dataset = load_torchvision_cifar10(str(tmp_path), download=False)
    for split, train in ((dataset.train, True), (dataset.test, False)):
        expected = CIFAR10Arrays(None, train, False)
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
        assert torch.equal(split.images, torch.from_numpy(expected.data.transpose(0, 3, 1, 2).copy()))
        assert split.labels.tolist() == [int(label) for label in expected.targets]
    assert "torchvision" in dataset.source


def test_a_dataset_torchvision_cannot_load_is_a_dataset_error(monkeypatch, tmp_path):
    def no_network(root, train, download):
        raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_network)
    with pytest.raises(DatasetError, match=r"Could not load CIFAR-10 into .* with torchvision \(download=False\)"):
        load_torchvision_cifar10(str(tmp_path), download=False)
