"""A source that is silently wrong is refused: an archive damaged or cut short, and an image tree whose classes are
not the ten a run trains on."""
from __future__ import annotations

import gzip
import io
import lzma
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bnexp.data.dataset import CIFAR10_CLASSES, DatasetError
from bnexp.data.folder import load_image_folder
from tests.data.test_data_faults import write_tree
from tests.helpers import compose_config

# ---------------------------------------------------------------- archives damaged or cut short

ARCHIVE_CLASSES = ("cat", "dog", "ship")
IMAGES_PER_CLASS = 8


def tar_bytes() -> bytes:
    """A plain tar of a small {train,test}/<class>/*.png tree, byte for byte the same on every call (fixed pixels,
    names, times and owners), so that a damage at a given offset always hits the same place."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for split in ("train", "test"):
            for name in ARCHIVE_CLASSES:
                for index in range(IMAGES_PER_CLASS):
                    png = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(png, format="PNG")
                    member = tarfile.TarInfo(f"tree/{split}/{name}/{index:04d}.png")
                    member.size, member.mtime, member.mode = len(png.getvalue()), 0, 0o644
                    archive.addfile(member, io.BytesIO(png.getvalue()))
    return buffer.getvalue()


COMPRESSORS = {".tar.xz": lambda data: lzma.compress(data, format=lzma.FORMAT_XZ),
               ".tar.gz": lambda data: gzip.compress(data, mtime=0),
               ".tar": lambda data: data}


def member_offsets(data: bytes) -> list[int]:
    """The offsets of the member headers of a plain tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return [member.offset for member in archive.getmembers()]


def overwrite(data: bytes, offset: int, count: int = 51) -> bytes:
    return data[:offset] + bytes(range(1, count + 1)) + data[offset + count:]


DAMAGES = {
    # 51 bytes overwritten in the middle of the compressed stream
    "overwritten in the middle": lambda tar, compress: overwrite(compress(tar), len(compress(tar)) // 2),
    # a member header three quarters in (a test image's) overwritten, then compressed intact: tarfile takes the
    # header it cannot parse for the end of the archive and stops there without a word, so the images before it
    # were all a run got (as in the report of a 50,000-image archive read as 49,104 images)
    "a member header overwritten": lambda tar, compress: compress(overwrite(tar, member_offsets(tar)[-12])),
    "cut in the middle": lambda tar, compress: compress(tar)[:len(compress(tar)) // 2],
    # no compression to notice it: the archive just ends early, without tar's end-of-archive marker
    "cut between two members": lambda tar, compress: compress(tar[:member_offsets(tar)[-12]]),
}
CASES = [(suffix, damage) for suffix in (".tar.xz", ".tar.gz") for damage in DAMAGES] + \
    [(".tar", "a member header overwritten"), (".tar", "cut in the middle"), (".tar", "cut between two members")]


@pytest.mark.parametrize("suffix, damage", CASES)
def test_a_damaged_or_truncated_archive_is_an_error_naming_it(suffix, damage, tmp_path):
    archive = tmp_path / f"cifar{suffix}"
    archive.write_bytes(DAMAGES[damage](tar_bytes(), COMPRESSORS[suffix]))
    with pytest.raises(DatasetError) as caught:
        load_image_folder(str(archive), str(tmp_path / "cache"))
    message = str(caught.value)
    assert f"The archive {str(archive)!r} is damaged or truncated" in message, message
    assert "\n" not in message and "holds no images" not in message
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing partial was cached


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_an_intact_archive_reads_every_image(suffix, tmp_path):
    archive = tmp_path / f"cifar{suffix}"
    archive.write_bytes(COMPRESSORS[suffix](tar_bytes()))
    dataset = load_image_folder(str(archive), str(tmp_path / "cache"))
    assert len(dataset.train) == len(dataset.test) == len(ARCHIVE_CLASSES) * IMAGES_PER_CLASS


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs the tar program")
def test_an_archive_made_by_the_tar_program_reads_every_image(tmp_path):
    """Its own end-of-archive padding (to a whole record) is not taken for damage."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes())) as archive:
        archive.extractall(tmp_path / "unpacked")
    packed = tmp_path / "cifar.tar.gz"
    subprocess.run(["tar", "-czf", str(packed), "-C", str(tmp_path / "unpacked"), "tree"], check=True)
    dataset = load_image_folder(str(packed), str(tmp_path / "cache"))
    assert len(dataset.train) == len(ARCHIVE_CLASSES) * IMAGES_PER_CLASS


# ---------------------------------------------------------------- the class set a run trains on

def folder_run_config(tree: Path, cache: Path):
    return compose_config(["+variant=no_bn", "data=cifar10_folder", f"data.path={tree}", f"data.data_dir={cache}",
                           "model.width=0.125", "train.epochs=1", "train.batch_size=8", "train.eval_batch_size=8",
                           "train.log_every=1"])


CLASS_SETS = {
    "an eleventh class": (*CIFAR10_CLASSES, "zebra"),
    "a class missing from both splits": CIFAR10_CLASSES[:-1],
}


@pytest.mark.parametrize("case", list(CLASS_SETS))
def test_a_tree_without_cifar10s_ten_classes_is_refused_before_training(case, tmp_path):
    """Before: an eleventh class crashed the first step (IndexError: Target 10 is out of bounds); a missing one
    trained a 9-class task as if it were CIFAR-10."""
    from bnexp.train.run import train

    tree = write_tree(tmp_path, per_class=1, classes=CLASS_SETS[case])
    with pytest.raises(DatasetError) as caught:
        train(folder_run_config(tree, tmp_path / "cache"), str(tmp_path / "run"))
    message = str(caught.value)
    assert "does not hold the 10 classes a run trains on (airplane, automobile," in message, message
    expected = "'zebra' is not one of them" if case == "an eleventh class" else \
        "'truck' has no images in train/ or test/"
    assert expected in message and "\n" not in message


def test_a_class_missing_from_one_split_is_named(tmp_path):
    tree = write_tree(tmp_path, per_class=1, classes=CIFAR10_CLASSES)
    shutil.rmtree(tree / "test" / "frog")
    with pytest.raises(DatasetError, match=r"'frog' has no images in test/[.;]"):
        load_image_folder(str(tree), str(tmp_path / "cache"), classes=CIFAR10_CLASSES)


def test_a_cache_of_a_nine_class_tree_is_refused_too(tmp_path):
    """The class check also holds when the images come from the cache (decoded earlier by a call that asked for
    no particular classes)."""
    tree = write_tree(tmp_path, per_class=1, classes=CIFAR10_CLASSES[:-1])
    load_image_folder(str(tree), str(tmp_path / "cache"))
    assert list((tmp_path / "cache").glob("*.npz"))
    with pytest.raises(DatasetError, match=r"'truck' has no images in train/ or test/"):
        load_image_folder(str(tree), str(tmp_path / "cache"), classes=CIFAR10_CLASSES)


def test_a_tree_with_cifar10s_ten_classes_trains(tmp_path):
    from bnexp.train.run import train

    tree = write_tree(tmp_path, per_class=1, classes=CIFAR10_CLASSES)
    summary = train(folder_run_config(tree, tmp_path / "cache"), str(tmp_path / "run"))
    assert summary["status"] == "finished" and summary["steps_done"] == 1  # 10 images, batches of 8
    dataset = load_image_folder(str(tree), str(tmp_path / "cache"), classes=CIFAR10_CLASSES)
    assert torch.equal(dataset.test.labels, torch.arange(10))  # the folder names sort into CIFAR-10's label order
