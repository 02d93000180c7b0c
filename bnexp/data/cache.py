"""The decoded-image cache of an image folder or archive: one .npz per source, keyed by the source's contents.

Written atomically (a killed run never leaves half a cache), read back when the source has not changed, rebuilt when
it has or when the cache is corrupt or of an older format.
"""
from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from bnexp.data.dataset import READ_ERRORS, Dataset, DatasetError, Split
from bnexp.runs.fileio import atomic_write, remove_stale_temporaries

# 2: archives are read to their end and checked; a cache of format 1 may hold the images before a damage only
CACHE_FORMAT_VERSION = 2


def source_fingerprint(path: Path) -> str:
    """Identifies the source's current contents cheaply: its resolved path (however the user spelled it), and
    the size and mtime of the archive or of every file in the tree."""
    root = path.resolve()
    digest = hashlib.sha256(str(root).encode())
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root) if root.is_dir() else ''}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class DecodeCache:
    """The cache file of one source in `cache_dir`: <source name>-<fingerprint>.npz."""

    def __init__(self, source: Path, cache_dir: str):
        self.source = source
        source_prefix = source.name.split(".")[0]
        self.file = Path(cache_dir).expanduser() / f"{source_prefix}-{source_fingerprint(source)}.npz"
        self.pattern = f"{glob.escape(source_prefix)}-*.npz"  # this source's caches, under any fingerprint
        # a writer killed mid-write (SIGKILL) leaves its temporary: this source's go now
        remove_stale_temporaries(self.file.parent, self.pattern)

    def read(self, description: str) -> tuple[Dataset, list[str]] | None:
        """The cached arrays and the class names in label order, or None when there is no cache or it is corrupt
        or old (then it is rebuilt)."""
        try:  # no cache: np.load's FileNotFoundError is one of READ_ERRORS
            with np.load(self.file) as cached:
                if int(cached["format_version"]) != CACHE_FORMAT_VERSION:
                    return None
                dataset = Dataset(Split(torch.from_numpy(cached["train_images"]),
                                        torch.from_numpy(cached["train_labels"])),
                                  Split(torch.from_numpy(cached["test_images"]),
                                        torch.from_numpy(cached["test_labels"])),
                                  source=description)
                class_names = json.loads(str(cached["class_names"]))
                return (dataset, class_names) if isinstance(class_names, list) else None
        except READ_ERRORS:  # json's errors are ValueErrors
            return None

    def write(self, train: Split, test: Split, class_names: list[str]) -> None:
        """Write to a temporary name, then rename: a killed run never leaves half a cache. Older caches of the
        same source (same resolved path, other fingerprints) are removed, since they no longer match it; caches of
        another source with the same file name are kept."""
        source_path = str(self.source.resolve())
        try:
            with atomic_write(self.file, "wb") as handle:
                np.savez(handle, format_version=CACHE_FORMAT_VERSION, train_images=train.images.numpy(),
                         train_labels=train.labels.numpy(), test_images=test.images.numpy(),
                         test_labels=test.labels.numpy(), class_names=json.dumps(class_names),
                         source_path=source_path)
        except OSError as error:
            raise DatasetError(f"Could not write the decoded-image cache {str(self.file)!r}: {error}. "
                               "Point data.data_dir (or $BNEXP_DATA_DIR) at a writable folder.") from error
        for candidate in self.file.parent.glob(self.pattern):
            if candidate != self.file and len(candidate.name) == len(self.file.name) and \
                    _cached_source_path(candidate) in (source_path, None):
                candidate.unlink(missing_ok=True)


def _cached_source_path(cache_file: Path) -> str | None:
    """The source a cache was decoded from; None for a cache from before caches recorded it (or unreadable)."""
    try:
        with np.load(cache_file) as cached:
            return str(cached["source_path"])  # a cache without it raises KeyError, one of READ_ERRORS
    except READ_ERRORS:
        return None
