"""A run started by the sweep ends when the sweep ends, even when the sweep is killed with SIGKILL.

The sweep names itself in $BNEXP_SWEEP_PID; the run calls `die_with_parent()` first thing, which asks Linux to
send it SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG). Set in the child itself, not between fork and
exec in the sweep (preexec_fn is unsafe in a process with threads, and the sweep's workers are threads).
A killed sweep thus leaves no orphan writing into a run dir that the next resume will redo.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

SWEEP_PID_VARIABLE = "BNEXP_SWEEP_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Take SIGTERM when the sweep that started this process dies; nothing when no sweep started it."""
    sweep_pid = os.environ.pop(SWEEP_PID_VARIABLE, None)  # popped: the run's own children are not the sweep's
    if sweep_pid is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        return  # not available (e.g. a restricted sandbox): the sweep still stops its runs on SIGTERM or Ctrl-C
    if os.getppid() != int(sweep_pid):
        # The sweep died between starting this process and the prctl above; its signal would never come.
        os.kill(os.getpid(), signal.SIGTERM)
