"""Decoding one image file to a 32x32 RGB array, and the setup of the processes that decode in parallel.

The decode workers run this module's functions: it imports numpy and PIL only (no torch), so a worker starts fast.
"""
from __future__ import annotations

import io
import re
import signal

import numpy as np

from bnexp.runs.orphan_guard import end_with_parent


class ImageDecodeError(ValueError):
    """One image file that cannot be decoded; names the file (a path in the folder or in the archive)."""


def decode_image(named: tuple[str, bytes]) -> np.ndarray:
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


def decode_worker_setup(run_pid: int) -> None:
    """A decode worker leaves signals to the run: SIGTERM ends it quietly (the run's own handler would raise its
    interrupt inside a decode), and Ctrl-C, which reaches the whole process group, is handled by the run alone.
    It ends with the run, however the run ends: a run killed with SIGKILL leaves no worker decoding for nobody."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end_with_parent(run_pid, signal.SIGKILL)  # a worker holds nothing that needs a clean end
