"""Data sources: image folders and archives, the cache, subsets and on-device augmentation."""
import os
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

from bnexp.data.batches import TrainBatches, augment
from bnexp.data.dataset import DatasetError, Split
from bnexp.data.folder import load_image_folder
from bnexp.data.sources import make_synthetic


def write_tree(root, per_class=3, classes=("cat", "dog", "ship"), seed=0):
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for name in classes:
            folder = root / "tree" / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index:04d}.png")
    return root / "tree"


def test_folder_and_archive_give_the_same_arrays(tmp_path):
    tree = write_tree(tmp_path)
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(tree, arcname="tree")
    from_folder = load_image_folder(str(tree), str(tmp_path / "cache_a"))
    from_archive = load_image_folder(str(archive), str(tmp_path / "cache_b"))
    assert from_folder.train.images.shape == (9, 3, 32, 32) and from_folder.train.images.dtype == torch.uint8
    assert torch.equal(from_folder.train.images, from_archive.train.images)
    assert from_folder.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    png = np.array(Image.open(tree / "train" / "dog" / "0001.png"))
    assert torch.equal(from_folder.train.images[4].permute(1, 2, 0), torch.from_numpy(png))


def test_cache_is_reused_then_rebuilt_when_the_source_changes(tmp_path):
    tree = write_tree(tmp_path)
    cache = tmp_path / "cache"
    first = load_image_folder(str(tree), str(cache))
    cache_files = list(cache.glob("*.npz"))
    assert len(cache_files) == 1 and not list(cache.glob("*.tmp*"))
    again = load_image_folder(str(tree), str(cache))
    assert torch.equal(first.train.images, again.train.images)

    changed = tree / "train" / "cat" / "0000.png"
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(changed)
    os.utime(changed, (time.time() + 5, time.time() + 5))
    rebuilt = load_image_folder(str(tree), str(cache))
    assert (rebuilt.train.images[0] == 7).all()
    assert len(list(cache.glob("*.npz"))) == 1  # the stale cache is gone


def test_unwritable_cache_dir_is_a_clear_error(tmp_path):
    tree = write_tree(tmp_path)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(DatasetError, match="writable folder"):
        load_image_folder(str(tree), str(blocker / "cache"))


def test_missing_and_unreadable_sources_name_the_path_and_fixes(tmp_path):
    with pytest.raises(DatasetError, match=r"nope.*data=cifar10.*data.path.*data=synthetic"):
        load_image_folder(str(tmp_path / "nope"), str(tmp_path))
    broken = tmp_path / "broken.tar.xz"
    broken.write_bytes(b"not an archive")
    with pytest.raises(DatasetError, match="Could not read"):
        load_image_folder(str(broken), str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        load_image_folder(str(tmp_path / "empty"), str(tmp_path))


def test_augment_crops_within_padding_and_flips():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).view(2, 3, 32, 32).to(torch.uint8)
    generator = torch.Generator().manual_seed(0)
    no_change = augment(images, pad=0, flip=False, generator=generator)
    assert torch.equal(no_change, images)
    cropped = augment(images, pad=4, flip=True, generator=generator)
    assert cropped.shape == images.shape and cropped.dtype == torch.uint8
    # The centre of every augmented image comes from the original, at most 4 px away, maybe mirrored.
    for index in range(2):
        centre = cropped[index, :, 12:20, 12:20]
        matches = [torch.equal(centre, candidate[index, :, 12 + dy:20 + dy, 12 + dx:20 + dx])
                   for candidate in (images, images.flip(3)) for dy in range(-4, 5) for dx in range(-4, 5)]
        assert any(matches)


def test_train_batches_cover_the_split_once_per_epoch():
    split = Split(torch.zeros(10, 3, 32, 32, dtype=torch.uint8), torch.arange(10))
    batches = TrainBatches(split, batch_size=5, pad=0, flip=False, seed=0)
    labels = torch.cat([labels for _, labels in batches])
    assert sorted(labels.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        TrainBatches(split, batch_size=11, pad=0, flip=False, seed=0)


def test_synthetic_subset_is_fixed():
    """A subset depends on its own seed only, not on the global RNG state the run seed sets."""
    data = make_synthetic(100, 20, seed=1)
    assert data.train.images.shape == (100, 3, 32, 32)
    torch.manual_seed(0)
    first = data.train.subset(30, 0)
    torch.manual_seed(1)
    again = data.train.subset(30, 0)
    assert len(first) == 30 and torch.equal(first.images, again.images)
    assert not torch.equal(first.images, data.train.subset(30, 1).images)


def test_cache_key_ignores_how_the_path_is_spelled(tmp_path, monkeypatch):
    tree = write_tree(tmp_path)
    cache = tmp_path / "cache"
    load_image_folder(str(tree), str(cache))
    (cache_file,) = cache.glob("*.npz")
    written_at = cache_file.stat().st_mtime_ns
    monkeypatch.chdir(tmp_path / "tree" / "train")
    again = load_image_folder("../../tree/", str(cache))  # same source, relative spelling: no re-decode
    assert list(cache.glob("*.npz")) == [cache_file] and cache_file.stat().st_mtime_ns == written_at
    assert again.train.images.shape == (9, 3, 32, 32)


def test_caches_of_two_sources_with_the_same_name_both_stay(tmp_path):
    first = write_tree(tmp_path / "a", seed=0)
    second = write_tree(tmp_path / "b", seed=1)  # also called "tree"
    cache = tmp_path / "cache"
    from_first = load_image_folder(str(first), str(cache))
    from_second = load_image_folder(str(second), str(cache))
    assert len(list(cache.glob("tree-*.npz"))) == 2
    assert torch.equal(load_image_folder(str(first), str(cache)).train.images, from_first.train.images)
    assert not torch.equal(from_first.train.images, from_second.train.images)


def test_a_test_class_without_a_train_folder_is_named(tmp_path):
    tree = write_tree(tmp_path)
    stray = tree / "test" / "zebra"
    stray.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(stray / "0000.png")
    with pytest.raises(DatasetError, match=r"test/ classes with no train/ folder: \['zebra'\]"):
        load_image_folder(str(tree), str(tmp_path / "cache"))


def test_synthetic_data_does_not_change_with_the_run_seed():
    from omegaconf import OmegaConf

    from bnexp.data.sources import load_dataset
    data_cfg = OmegaConf.create({"name": "synthetic", "train_size": 64, "test_size": 16, "subset_seed": 0})
    first, second = load_dataset(data_cfg), load_dataset(data_cfg)
    assert torch.equal(first.train.images, second.train.images)
    other = load_dataset(OmegaConf.merge(data_cfg, {"subset_seed": 1}))
    assert not torch.equal(first.train.images, other.train.images)
