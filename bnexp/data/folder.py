"""An image tree {train,test}/<class>/*.jpg|png, from a folder or a .tar/.tar.gz/.tar.xz archive of one, read into
uint8 arrays: the files listed, decoded once in parallel, and cached (bnexp/data/cache.py).

An archive is read to its very end before anything is decoded: tarfile on its own ends an archive quietly at the
first header it cannot parse, so a damaged archive would give the images before the damage and no error.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import lzma
import os
import tarfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from bnexp.data import decode
from bnexp.data.cache import DecodeCache
from bnexp.data.dataset import READ_ERRORS, Dataset, DatasetError, Split, check_subset_sizes, how_to_fix

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz")
# What the decompressors and tarfile raise on bytes that stop making sense, or that stop too early.
_DAMAGE_ERRORS = (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile)


class DamagedArchiveError(tarfile.ReadError):
    """An archive whose contents stop making sense before its end: damaged, or cut short.

    A tarfile.ReadError, so that while tarfile.open tries each compression in turn, a first header that cannot be
    parsed still means "not this compression"."""


class _CheckedTarInfo(tarfile.TarInfo):
    """A member header that tarfile cannot parse is damage, unless it is a block of zeros (the end-of-archive
    marker): tarfile itself takes any such header for the end of the archive."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as error:
            if buf.strip(b"\0"):
                raise DamagedArchiveError(f"a member header cannot be read ({error})") from None
            raise


@contextlib.contextmanager
def _damage_named():
    """What the decompressors and tarfile raise while reading, as the DamagedArchiveError it means."""
    try:
        yield
    except DamagedArchiveError:
        raise
    except _DAMAGE_ERRORS as error:
        raise DamagedArchiveError(f"{type(error).__name__}: {error}") from error


def _archive_members(path: Path):
    """(name inside the archive, a reader of its bytes) of every file of a tar archive; the whole archive is read
    and checked before the generator ends, so a damaged or truncated one raises DamagedArchiveError."""
    try:
        archive = tarfile.open(path, "r:*", tarinfo=_CheckedTarInfo)
    except tarfile.ReadError:  # tarfile's message lists every compression it tried, over several lines
        raise tarfile.ReadError("not a tar archive (plain, .gz or .xz), or damaged at its start") from None

    def read(member: tarfile.TarInfo) -> bytes:
        with _damage_named():  # the decompressor, inside a member's data
            return archive.extractfile(member).read()

    with archive, _damage_named():
        for member in archive:
            if member.isfile():
                yield member.name, functools.partial(read, member)
        if archive.fileobj.tell() == archive.offset:  # no block was read after the last member: the file just ends
            raise DamagedArchiveError("it ends before the end-of-archive marker: it was cut short")
        # the rest must be zeros (the marker and its padding); reading it also runs the end-of-stream and checksum
        # checks of a .gz or .xz, which is where damage inside a member's data shows
        while chunk := archive.fileobj.read(1 << 20):
            if chunk.strip(b"\0"):
                raise DamagedArchiveError("there is data after its end-of-archive marker")


def _list_encoded_images(path: Path) -> dict[str, list[tuple[str, str, bytes]]]:
    """Map 'train'/'test' to (class name, file name, encoded bytes), from a folder or an archive; the file name is
    the path inside the folder or the archive, for error messages."""
    found: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}

    def files():
        """(name inside the source, a reader of its bytes) of every file, from the folder or the archive."""
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                yield str(file.relative_to(path)), file.read_bytes
        else:
            yield from _archive_members(path)

    # the first read of an archive takes a while (a few seconds for CIFAR-10's .tar.xz): show the count and rate
    with tqdm(unit="file", desc=f"reading {path.name}", mininterval=1.0, dynamic_ncols=True) as progress:
        for name, read in files():
            parts = Path(name).parts
            # <root>/{train,test}/<class>/<file> with any number of leading folders
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and len(parts) >= 3 and parts[-3] in found:
                found[parts[-3]].append((parts[-2], name, read()))
                progress.update(1)
    for split in found:
        found[split].sort(key=lambda item: item[0])  # stable: files keep their order within a class
    return found


def _check_classes(source: Path, classes_by_split: dict[str, set[str]], expected: Sequence[str]) -> None:
    """Each split must hold exactly the expected classes: a class too many would be a label the model has no
    output for, and a class missing would quietly make the task another one."""
    problems = []
    for name in sorted(set().union(*classes_by_split.values()) - set(expected)):
        problems.append(f"{name!r} is not one of them")
    for name in expected:
        missing_from = [f"{split}/" for split, found in classes_by_split.items() if name not in found]
        if missing_from:
            problems.append(f"{name!r} has no images in {' or '.join(missing_from)}")
    if problems:
        raise DatasetError(f"{str(source)!r} does not hold the {len(expected)} classes a run trains on "
                           f"({', '.join(expected)}): {'; '.join(problems)}. Give data.path a tree with a "
                           f"train/<class>/ and a test/<class>/ folder of images for each of them, and no other.")


def _decode_split(files: list[tuple[str, str, bytes]], class_names: list[str], workers: int,
                  split_name: str) -> Split:
    named = [(file_name, data) for _, file_name, data in files]
    with contextlib.ExitStack() as stack:
        decoded = map(decode.decode_image, named)
        if workers > 1 and len(named) > 1000:
            pool = ProcessPoolExecutor(max_workers=workers, initializer=decode.decode_worker_setup,
                                       initargs=(os.getpid(),))
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)  # on a kill, the queued chunks are dropped
            # chunks of 64: little overhead, and a kill waits for at most one running chunk per worker
            decoded = pool.map(decode.decode_image, named, chunksize=64)
        arrays = list(tqdm(decoded, total=len(named), unit="img", desc=f"decoding {split_name}", mininterval=1.0,
                           dynamic_ncols=True))  # in order, as they finish
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([class_names.index(name) for name, _, _ in files], dtype=torch.int64)
    return Split(images, labels)


def load_image_folder(path: str, cache_dir: str, workers: int | None = None, *, train_size: int | None = None,
                      test_size: int | None = None, classes: Sequence[str] | None = None) -> Dataset:
    """The source's images, from the cache or decoded (then cached). train_size/test_size, when given, are
    checked against the images the source holds as soon as they are counted, before any decoding. `classes`: the
    class folders each split must hold (a run asks for CIFAR-10's ten); None takes whatever the tree holds."""
    source = Path(path).expanduser()
    if not source.exists():
        raise DatasetError(f"Dataset path {str(source)!r} does not exist. {how_to_fix(source)}")
    if source.is_file() and not source.name.endswith(ARCHIVE_SUFFIXES):
        raise DatasetError(f"{str(source)!r} is a file but not a .tar/.tar.gz/.tar.xz archive. {how_to_fix(source)}")
    cache = DecodeCache(source, cache_dir)
    description = f"CIFAR-10 JPEG copy ({source.name})" if "jpeg" in source.name.lower() else \
        f"image folder ({source.name})"
    cached = cache.read(description)
    if cached is not None:
        dataset, class_names = cached
        check_subset_sizes(len(dataset.train), len(dataset.test), train_size, test_size, source)
        if classes is not None:
            _check_classes(source, {split: {class_names[label] for label in labels.unique().tolist()}
                                    for split, labels in (("train", dataset.train.labels),
                                                          ("test", dataset.test.labels))}, classes)
        return dataset
    try:
        encoded = _list_encoded_images(source)
    except DamagedArchiveError as error:
        raise DatasetError(f"The archive {str(source)!r} is damaged or truncated: {error}. Replace it with an intact "
                           f"copy (compare its size or checksum with the original's). {how_to_fix(source)}") from None
    except READ_ERRORS as error:
        raise DatasetError(f"Could not read {str(source)!r}: {error}. {how_to_fix(source)}") from error
    if not encoded["train"] or not encoded["test"]:
        raise DatasetError(f"{str(source)!r} holds no images under train/<class>/ and test/<class>/ "
                           f"(found {len(encoded['train'])} train, {len(encoded['test'])} test). {how_to_fix(source)}")
    check_subset_sizes(len(encoded["train"]), len(encoded["test"]), train_size, test_size, source)
    if classes is not None:
        _check_classes(source, {split: {name for name, _, _ in files} for split, files in encoded.items()}, classes)
    class_names = sorted({name for name, _, _ in encoded["train"]})
    test_only = sorted({name for name, _, _ in encoded["test"]} - set(class_names))
    if test_only:
        raise DatasetError(f"{str(source)!r} has test/ classes with no train/ folder: {test_only} (train/ has "
                           f"{class_names}); every test class needs a train/<class>/ folder. {how_to_fix(source)}")
    workers = workers or min(16, os.cpu_count() or 1)
    try:
        train = _decode_split(encoded["train"], class_names, workers, "train")
        test = _decode_split(encoded["test"], class_names, workers, "test")
    except decode.ImageDecodeError as error:  # only a bad file: a kill during the decode stays a kill
        raise DatasetError(f"Could not decode an image of {str(source)!r}: {error}. Replace or remove that file, "
                           f"or use another source. {how_to_fix(source)}") from None

    cache.write(train, test, class_names)
    return Dataset(train, test, source=description)
