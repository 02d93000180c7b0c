"""The random crop draws every offset in [0, 2 * pad] along each axis, about equally often, and the flip mirrors
about half the images: each augmented image is located exactly among all crops of the reflect-padded original."""
import numpy as np
import pytest
import torch

from bnexp.data.batches import TrainBatches, augment
from bnexp.data.dataset import Split

SIZE = 8
DRAWS = 2000


def distinct_image() -> torch.Tensor:
    """3 x 8 x 8 = 192 pixels, all different: a crop's content says where it was cut."""
    values = np.random.default_rng(0).permutation(3 * SIZE * SIZE).reshape(3, SIZE, SIZE)
    return torch.from_numpy(values.astype(np.uint8))


def all_crops(image: torch.Tensor, pad: int, flip: bool) -> tuple[torch.Tensor, list[tuple[int, int, bool]]]:
    """Every crop of the reflect-padded image (numpy's padding, not the code's), and with `flip` every mirrored one.
    (Near the edges a mirrored crop can equal another crop when 2 * pad is close to the size: hence the flag.)"""
    padded = torch.from_numpy(np.pad(image.numpy(), ((0, 0), (pad, pad), (pad, pad)), mode="reflect"))
    crops, keys = [], []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + SIZE, dx:dx + SIZE]
            for mirrored in ((False, True) if flip else (False,)):
                crops.append(crop.flip(2) if mirrored else crop)
                keys.append((dy, dx, mirrored))
    return torch.stack(crops), keys


def locate(augmented: torch.Tensor, image: torch.Tensor, pad: int, flip: bool) -> list[tuple[int, int, bool]]:
    crops, keys = all_crops(image, pad, flip)
    matches = (augmented.unsqueeze(1) == crops.unsqueeze(0)).flatten(2).all(2)  # (draws, candidates)
    assert matches.sum(1).eq(1).all(), "an augmented image is not exactly one crop of the padded original"
    return [keys[index] for index in matches.int().argmax(1).tolist()]


@pytest.mark.parametrize("pad", [1, 2, 4])
def test_every_crop_offset_is_drawn_about_equally_often(pad):
    image = distinct_image()
    generator = torch.Generator().manual_seed(0)
    located = locate(augment(image.expand(DRAWS, -1, -1, -1), pad, flip=False, generator=generator), image, pad,
                     flip=False)
    offsets = range(2 * pad + 1)
    for axis in (0, 1):
        counts = np.bincount([key[axis] for key in located], minlength=2 * pad + 1)
        assert len(counts) == 2 * pad + 1  # no offset beyond 2 * pad
        expected = DRAWS / len(offsets)
        # deterministic (seeded); each count is binomial with sd < sqrt(expected), so this is > 5 sd wide
        assert all(abs(count - expected) < 5 * np.sqrt(expected) for count in counts), (axis, counts.tolist())
    pairs = {(dy, dx) for dy, dx, _ in located}
    assert pairs == {(dy, dx) for dy in offsets for dx in offsets}


def test_the_flip_mirrors_about_half_and_crops_still_cover_every_offset():
    pad = 2
    image = distinct_image()
    generator = torch.Generator().manual_seed(1)
    located = locate(augment(image.expand(DRAWS, -1, -1, -1), pad, flip=True, generator=generator), image, pad,
                     flip=True)
    mirrored = sum(key[2] for key in located)
    assert abs(mirrored - DRAWS / 2) < 5 * np.sqrt(DRAWS / 4)
    assert {(dy, dx) for dy, dx, _ in located} == {(dy, dx) for dy in range(5) for dx in range(5)}


def test_train_batches_augment_with_the_configured_pad():
    images = distinct_image().expand(400, -1, -1, -1).contiguous()
    batches = TrainBatches(Split(images, torch.zeros(400, dtype=torch.long)), batch_size=200, pad=1, flip=False,
                           seed=0)
    augmented = torch.cat([batch for batch, _ in batches])
    assert {(dy, dx) for dy, dx, _ in locate(augmented, distinct_image(), 1, flip=False)} == \
        {(dy, dx) for dy in range(3) for dx in range(3)}
