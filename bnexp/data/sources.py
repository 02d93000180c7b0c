"""CIFAR-10 sources, all handing the trainer uint8 tensors, plus on-device batching and augmentation.

Sources:
- cifar10:        torchvision's CIFAR10 with download=True (the path real users take).
- cifar10_folder: a {train,test}/<class>/*.jpg|png tree, or a .tar/.tar.gz/.tar.xz archive of one.
                  Decoded once, in parallel, and cached atomically as uint8 arrays.
- synthetic:      random images with CIFAR's shapes (class-dependent colour, so it is learnable).

A whole split lives as one (N, 3, 32, 32) uint8 tensor on the training device; augmentation
(random crop with padding, horizontal flip) runs there a batch at a time, with no per-image Python.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import io
import json
import lzma
import os
import pickle
import re
import signal
import tarfile
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from bnexp.runs.fileio import atomic_write, remove_stale_temporaries

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz")
CACHE_FORMAT_VERSION = 1
# What reading a source or a cache can raise when the data is missing, truncated or corrupt. Only these become a
# DatasetError (exit code 2): a kill (the trainer's SIGTERM exception, Ctrl-C) must pass through as itself.
READ_ERRORS = (OSError, EOFError, ValueError, KeyError, tarfile.TarError, lzma.LZMAError, zlib.error,
               zipfile.BadZipFile, pickle.UnpicklingError)


class DatasetError(RuntimeError):
    """A dataset that is missing or unreadable; the message says how to fix it."""


class ImageDecodeError(ValueError):
    """One image file that cannot be decoded; names the file (a path in the folder or in the archive)."""


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


# ---------------------------------------------------------------- torchvision CIFAR-10

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


# ---------------------------------------------------------------- image folder / archive

def _decode_image(named: tuple[str, bytes]) -> np.ndarray:
    """(file name, encoded bytes) -> (32, 32, 3) uint8; an ImageDecodeError that names the file otherwise."""
    from PIL import Image
    name, encoded = named
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for unreadable or truncated files
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(error))  # the file is named instead
        raise ImageDecodeError(f"{name}: {reason}") from None
    if array.shape != (32, 32, 3):
        raise ImageDecodeError(f"{name}: expected a 32x32 image, got {array.shape[1]}x{array.shape[0]}")
    return array


def _decode_worker_setup() -> None:
    """A decode worker leaves signals to the run: SIGTERM ends it quietly (the run's own handler would raise its
    interrupt inside a decode), and Ctrl-C, which reaches the whole process group, is handled by the run alone."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
            with tarfile.open(path, "r:*") as archive:
                for member in archive:
                    if member.isfile():
                        yield member.name, archive.extractfile(member).read

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


def _source_fingerprint(path: Path) -> str:
    """Identifies the source's current contents cheaply: its resolved path (however the user spelled it), and
    the size and mtime of the archive or of every file in the tree."""
    root = path.resolve()
    digest = hashlib.sha256(str(root).encode())
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root) if root.is_dir() else ''}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _decode_split(files: list[tuple[str, str, bytes]], class_names: list[str], workers: int,
                  split_name: str) -> Split:
    named = [(file_name, data) for _, file_name, data in files]
    with contextlib.ExitStack() as stack:
        decoded = map(_decode_image, named)
        if workers > 1 and len(named) > 1000:
            pool = ProcessPoolExecutor(max_workers=workers, initializer=_decode_worker_setup)
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)  # on a kill, the queued chunks are dropped
            # chunks of 64: little overhead, and a kill waits for at most one running chunk per worker
            decoded = pool.map(_decode_image, named, chunksize=64)
        arrays = list(tqdm(decoded, total=len(named), unit="img", desc=f"decoding {split_name}", mininterval=1.0,
                           dynamic_ncols=True))  # in order, as they finish
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([class_names.index(name) for name, _, _ in files], dtype=torch.int64)
    return Split(images, labels)


def load_image_folder(path: str, cache_dir: str, workers: int | None = None, *, train_size: int | None = None,
                      test_size: int | None = None) -> Dataset:
    """The source's images, from the cache or decoded (then cached). train_size/test_size, when given, are
    checked against the images the source holds as soon as they are counted, before any decoding."""
    source = Path(path).expanduser()
    if not source.exists():
        raise DatasetError(f"Dataset path {str(source)!r} does not exist. {how_to_fix(source)}")
    if source.is_file() and not source.name.endswith(ARCHIVE_SUFFIXES):
        raise DatasetError(f"{str(source)!r} is a file but not a .tar/.tar.gz/.tar.xz archive. {how_to_fix(source)}")
    source_prefix = source.name.split(".")[0]
    cache_file = Path(cache_dir).expanduser() / f"{source_prefix}-{_source_fingerprint(source)}.npz"
    description = f"CIFAR-10 JPEG copy ({source.name})" if "jpeg" in source.name.lower() else \
        f"image folder ({source.name})"
    cache_pattern = f"{glob.escape(source_prefix)}-*.npz"  # this source's caches, under any fingerprint
    # a writer killed mid-write (SIGKILL) leaves its temporary: this source's go now
    remove_stale_temporaries(cache_file.parent, cache_pattern)
    cached = _read_cache(cache_file, description)
    if cached is not None:
        check_subset_sizes(len(cached.train), len(cached.test), train_size, test_size, source)
        return cached
    try:
        encoded = _list_encoded_images(source)
    except READ_ERRORS as error:
        raise DatasetError(f"Could not read {str(source)!r}: {error}. {how_to_fix(source)}") from error
    if not encoded["train"] or not encoded["test"]:
        raise DatasetError(f"{str(source)!r} holds no images under train/<class>/ and test/<class>/ "
                           f"(found {len(encoded['train'])} train, {len(encoded['test'])} test). {how_to_fix(source)}")
    check_subset_sizes(len(encoded["train"]), len(encoded["test"]), train_size, test_size, source)
    class_names = sorted({name for name, _, _ in encoded["train"]})
    test_only = sorted({name for name, _, _ in encoded["test"]} - set(class_names))
    if test_only:
        raise DatasetError(f"{str(source)!r} has test/ classes with no train/ folder: {test_only} (train/ has "
                           f"{class_names}); every test class needs a train/<class>/ folder. {how_to_fix(source)}")
    workers = workers or min(16, os.cpu_count() or 1)
    try:
        train = _decode_split(encoded["train"], class_names, workers, "train")
        test = _decode_split(encoded["test"], class_names, workers, "test")
    except ImageDecodeError as error:  # only a bad file: a kill during the decode stays a kill
        raise DatasetError(f"Could not decode an image of {str(source)!r}: {error}. Replace or remove that file, "
                           f"or use another source. {how_to_fix(source)}") from None

    _write_cache(cache_file, cache_pattern, train, test, class_names, source)
    return Dataset(train, test, source=description)


def _read_cache(cache_file: Path, description: str) -> Dataset | None:
    """The cached arrays, or None when there is no cache or it is corrupt or old (then it is rebuilt)."""
    try:  # no cache: np.load's FileNotFoundError is one of READ_ERRORS
        with np.load(cache_file) as cached:
            if int(cached["format_version"]) != CACHE_FORMAT_VERSION:
                return None
            return Dataset(Split(torch.from_numpy(cached["train_images"]), torch.from_numpy(cached["train_labels"])),
                           Split(torch.from_numpy(cached["test_images"]), torch.from_numpy(cached["test_labels"])),
                           source=description)
    except READ_ERRORS:
        return None


def _write_cache(cache_file: Path, cache_pattern: str, train: Split, test: Split, class_names: list[str],
                 source: Path) -> None:
    """Write to a temporary name, then rename: a killed run never leaves half a cache. Older caches of the
    same source (same resolved path, other fingerprints) are removed, since they no longer match it; caches of
    another source with the same file name are kept."""
    source_path = str(source.resolve())
    try:
        with atomic_write(cache_file, "wb") as handle:
            np.savez(handle, format_version=CACHE_FORMAT_VERSION, train_images=train.images.numpy(),
                     train_labels=train.labels.numpy(), test_images=test.images.numpy(),
                     test_labels=test.labels.numpy(), class_names=json.dumps(class_names), source_path=source_path)
    except OSError as error:
        raise DatasetError(f"Could not write the decoded-image cache {str(cache_file)!r}: {error}. "
                           "Point data.data_dir (or $BNEXP_DATA_DIR) at a writable folder.") from error
    for candidate in cache_file.parent.glob(cache_pattern):
        if candidate != cache_file and len(candidate.name) == len(cache_file.name) and \
                _cached_source_path(candidate) in (source_path, None):
            candidate.unlink(missing_ok=True)


def _cached_source_path(cache_file: Path) -> str | None:
    """The source a cache was decoded from; None for a cache from before caches recorded it (or unreadable)."""
    try:
        with np.load(cache_file) as cached:
            return str(cached["source_path"])  # a cache without it raises KeyError, one of READ_ERRORS
    except READ_ERRORS:
        return None


# ---------------------------------------------------------------- synthetic

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


# ---------------------------------------------------------------- entry point

def load_dataset(data_cfg) -> Dataset:
    """Build the configured source, then cut the configured subsets. Both are fixed by data.subset_seed, not the
    run seed: runs with different seeds see the same images (only init, order and augmentation change)."""
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
                                    train_size=train_size, test_size=test_size)
    elif name == "synthetic":
        dataset = make_synthetic(train_size or 50_000, test_size or 10_000, subset_seed)
    else:
        raise DatasetError(f"unknown data source {name!r}: use data=cifar10, data=cifar10_folder or data=synthetic")
    check_subset_sizes(len(dataset.train), len(dataset.test), train_size, test_size, dataset.source)
    return Dataset(dataset.train.subset(train_size, subset_seed),
                   dataset.test.subset(test_size, subset_seed + 1), dataset.source)


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


# ---------------------------------------------------------------- on-device batches

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
