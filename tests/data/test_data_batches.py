"""The batches the trainer reads: evaluation walks the split once, in order, the last batch short; training gives
len(batches) full shuffled batches per epoch; `normalize` is the per-channel (x / 255 - mean) / std of CIFAR-10."""
import pytest
import torch

from bnexp.data.batches import CIFAR10_MEAN, CIFAR10_STD, TrainBatches, eval_batches, normalize
from bnexp.data.dataset import Split


def numbered_split(size: int) -> Split:
    """Image i is filled with i (mod 256), and its label is i: a batch says which images it holds."""
    images = (torch.arange(size) % 256).to(torch.uint8).view(size, 1, 1, 1).expand(size, 3, 4, 4).contiguous()
    return Split(images, torch.arange(size))


@pytest.mark.parametrize("size, batch_size", [(10, 4), (12, 4), (3, 8)])
def test_evaluation_batches_walk_the_split_once_in_order(size, batch_size):
    split = numbered_split(size)
    batches = list(eval_batches(split, batch_size))
    assert [len(labels) for _, labels in batches] == \
        [min(batch_size, size - start) for start in range(0, size, batch_size)]
    for images, labels in batches:
        assert len(images) == len(labels) and torch.equal(images[:, 0, 0, 0].long(), labels % 256)
    assert torch.cat([labels for _, labels in batches]).tolist() == list(range(size))


def test_an_epoch_is_len_full_batches_of_distinct_images():
    split = numbered_split(23)
    batches = TrainBatches(split, batch_size=5, pad=0, flip=False, seed=0)
    assert len(batches) == 4  # 23 // 5: the 3 left over wait for another epoch
    for _epoch in range(2):
        epoch = list(batches)
        assert len(epoch) == 4 and all(len(images) == len(labels) == 5 for images, labels in epoch)
        labels = torch.cat([labels for _, labels in epoch])
        assert len(set(labels.tolist())) == 20
        for images, batch_labels in epoch:
            assert torch.equal(images[:, 0, 0, 0].long(), batch_labels % 256)


def test_normalize_is_the_per_channel_standardisation():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
    expected = (images.double() / 255 - mean) / std
    for dtype in (torch.float32, torch.float64):
        normalized = normalize(images, dtype)
        assert normalized.dtype == dtype and normalized.shape == images.shape
        torch.testing.assert_close(normalized.double(), expected, rtol=1e-6, atol=1e-6)


def test_normalisation_constants_are_cifar10s_training_set_statistics():
    """The per-channel mean and std of CIFAR-10's 50,000 training images (RGB, pixels in [0, 1]), as published to
    four digits; the normalisation test above takes them as given, so they are pinned here."""
    assert CIFAR10_MEAN == pytest.approx((0.4914, 0.4822, 0.4465), abs=5e-5)
    assert CIFAR10_STD == pytest.approx((0.2470, 0.2435, 0.2616), abs=5e-5)
