"""The synthetic source is what its docstring says: a per-class colour and stripe pattern under pixel noise of
standard deviation 40, so that a class is told from one image (a pipeline check that can learn in a few steps)."""
import torch

from bnexp.data.sources import make_synthetic


def test_synthetic_images_are_a_class_pattern_under_noise_of_40():
    data = make_synthetic(2000, 500, seed=0)
    images, labels = data.train.images.float(), data.train.labels
    class_means = torch.stack([images[labels == k].mean(0) for k in range(10)])  # (10, 3, 32, 32)
    # the noise around each class's pattern: sd 40, a little less where the clamp to [0, 255] cuts it
    residual_sd = (images - class_means[labels]).std().item()
    assert 34 < residual_sd < 40.5
    # the pattern tells the class: the nearest class mean names almost every held-out image
    test_images, test_labels = data.test.images.float(), data.test.labels
    distances = torch.cdist(test_images.flatten(1), class_means.flatten(1))
    assert (distances.argmin(1) == test_labels).float().mean().item() > 0.95


def test_each_class_has_horizontal_stripes_of_its_own_width():
    data = make_synthetic(3000, 10, seed=0)
    images, labels = data.train.images.float(), data.train.labels
    widths = []
    for k in range(10):
        class_mean = images[labels == k].mean(0)  # (3, 32, 32): colour + stripes, the noise averaged out
        assert class_mean.mean(0).std(dim=1).max() < 5  # constant along each row, up to the averaged noise
        rows = class_mean.mean(dim=(0, 2))
        high = rows > (rows.max() + rows.min()) / 2
        assert rows[high].mean() - rows[~high].mean() > 25  # 40 less what the clamp at 255 cuts off
        assert rows[high].std() < 3 and rows[~high].std() < 3
        # bands of `width` rows, dark first: row y is bright when (y // width) is odd
        width = next(w for w in range(1, 33) if high[w])
        assert 1 <= width <= 5
        assert high.tolist() == [(y // width) % 2 == 1 for y in range(32)]
        widths.append(width)
    assert len(set(widths)) >= 3
