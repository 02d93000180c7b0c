"""Reading and writing files safely: whole-file replacement through a temporary, values made plain JSON.

Every file bnexp writes for other processes to read (summary.json, sweep_status.json, runs.csv, the decoded-image
cache) goes through `atomic_write`; every JSON record goes through `json_safe`; `read_json` reads a JSON object
that another process may have left damaged or half-written.
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Iterator

# Temporaries last modified before this process started belong to no write in progress here, so a writer finding
# one knows it was left by a process that died mid-write (a write of ours only lasts while its process lives).
_PROCESS_STARTED = time.time()
# ... and quiet for this long, so that another process's write in progress (paused in an fsync, or on a network
# file system whose clock lags) is never taken for a dead one.
STALE_TEMPORARY_S = 600


def remove_stale_temporaries(folder: Path, name_pattern: str) -> None:
    """Remove the temporaries of the files in `folder` whose names match the glob `name_pattern` that were last
    modified before this process started and STALE_TEMPORARY_S ago: their writers died mid-write (SIGKILL, power
    loss)."""
    for candidate in folder.glob(f".{name_pattern}.*.tmp"):
        try:
            if candidate.stat().st_mtime < min(_PROCESS_STARTED, time.time() - STALE_TEMPORARY_S):
                candidate.unlink()
        except OSError:
            pass  # gone already, or not ours to remove: the write itself decides whether the folder is usable


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """A file handle whose contents replace `path` in one rename when the block ends without an error.

    Readers see the old file or the new one, never half of one. The file gets the permissions open() would give
    a new file (0666 less the umask: 0644 under the usual umask 022), not mkstemp's 0600. On an error the
    temporary is removed; temporaries of `path` left by an earlier process that crashed are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, glob.escape(path.name))
    # 48 random bits name the temporary; O_EXCL would refuse a name a concurrent writer held (rather than share
    # its file), and mode 0666 lets the umask decide.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(descriptor, mode, **open_kwargs) as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def json_safe(value: Any) -> Any:
    """`value` as plain JSON at any depth: NaN and ±inf become None (JSON has neither; a diverged loss is recorded
    as null), numpy and torch numbers become Python ones, mapping keys strings, anything else its text."""
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [json_safe(item) for item in value]
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return json_safe(value.tolist())
    return str(value)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing, unreadable or not an object."""
    try:
        with open(path) as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json_atomic(path: Path, value: Any) -> None:
    """Write `value` as JSON (made plain by json_safe) so that readers never see a half-written file."""
    with atomic_write(path) as handle:
        json.dump(json_safe(value), handle, indent=2)
        handle.write("\n")
