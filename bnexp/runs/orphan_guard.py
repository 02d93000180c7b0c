"""A child process ends when its parent ends, even when the parent is killed with SIGKILL.

Two kinds of child need it. A run started by the sweep: the sweep names itself in $BNEXP_SWEEP_PID, and the run
calls `die_with_parent()` first thing, so that a killed sweep leaves no orphan writing into a run dir that the next
resume will redo. And a decode worker of a run (bnexp/data/decode.py), which would otherwise go on decoding for
nobody after its run was killed.

Both ask Linux to signal them when their parent dies (prctl PR_SET_PDEATHSIG), set in the child itself, not between
fork and exec in the parent (preexec_fn is unsafe in a process with threads, and the sweep's workers are threads).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

SWEEP_PID_VARIABLE = "BNEXP_SWEEP_PID"
_PR_SET_PDEATHSIG = 1


def end_with_parent(parent_pid: int, signum: int) -> bool:
    """Take `signum` when the parent process `parent_pid` dies; False where that cannot be asked for (not Linux, or
    a restricted sandbox). A parent that died before the request was made is caught here: `signum` comes at once."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum) != 0:
        return False
    if os.getppid() != parent_pid:
        # The parent died between starting this process and the prctl above; its signal would never come.
        os.kill(os.getpid(), signum)
    return True


def die_with_parent() -> None:
    """Take SIGTERM when the sweep that started this process dies; nothing when no sweep started it."""
    sweep_pid = os.environ.pop(SWEEP_PID_VARIABLE, None)  # popped: the run's own children are not the sweep's
    if sweep_pid is not None:
        # where this cannot be asked for, the sweep still stops its runs on SIGTERM or Ctrl-C
        end_with_parent(int(sweep_pid), signal.SIGTERM)
