"""Candidate lrs as the searches write and compare them: rounded to LR_DIGITS significant digits, so that an lr
survives being written into a config and a run dir's name and read back, and equal within SAME_LR_TOLERANCE."""
from __future__ import annotations

import math

LR_DIGITS = 4
# two lrs are the same lr when they differ by less than this fraction (configs and dir names round them)
SAME_LR_TOLERANCE = 1e-6


def format_lr(lr: float) -> str:
    return f"{lr:.{LR_DIGITS}g}"


def round_lr(lr: float) -> float:
    return float(format_lr(lr))


def same_lr(first: float, second: float) -> bool:
    return math.isclose(first, second, rel_tol=SAME_LR_TOLERANCE)
