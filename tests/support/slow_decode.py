"""Helpers the fault tests run in other processes (importable by name, so decode workers can run them too)."""
from __future__ import annotations

import sys
import time

from bnexp.data.decode import decode_image as real_decode

DECODE_DELAY_S = 0.01


def slow_decode(named):
    """The real decode, made slow enough that a signal can land in the middle of a split."""
    time.sleep(DECODE_DELAY_S)
    return real_decode(named)


def train_cli_with_slow_decode(arguments: list[str]) -> None:
    """`python -m bnexp.train <arguments>`, with every image taking DECODE_DELAY_S to decode."""
    import runpy

    import bnexp.data.decode
    bnexp.data.decode.decode_image = slow_decode
    sys.argv = ["bnexp.train", *arguments]
    runpy.run_module("bnexp.train", run_name="__main__")  # as `python -m`: Hydra finds conf/ from the module's file


if __name__ == "__main__":
    train_cli_with_slow_decode(sys.argv[1:])
