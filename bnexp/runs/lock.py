"""One writer per run dir: the trainer holds an exclusive flock on <run dir>/run.lock for the run's whole life.

The kernel drops a flock when its process ends, however it ends, so the lock also tells a reader whether the
process that wrote a run dir is still alive: a summary.json that still says `running` beside a lock file that no
process holds belongs to a run that died without writing its end (SIGKILL, the OOM killer, a machine crash).
The file itself stays after the run (removing a flock'ed file races with a process about to lock it); it holds
the pid, the host and the start time of the last run that took it.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from bnexp.runs.fileio import read_json

LOCK_FILE = "run.lock"
# A reader probing the lock holds it for microseconds; a starting run retries for this long before giving up.
_ACQUIRE_PATIENCE_S = 1.0


class RunDirLocked(Exception):
    """Another live process holds the run dir: a user error (two runs given the same hydra.run.dir)."""


def describe_holder(lock_path: Path) -> str:
    """'pid 123 on host x, since 2026-...' from the lock file, or what is known."""
    holder = read_json(lock_path)
    if holder is None:
        return "a process that has not written its pid yet"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started_at', '?')}"


def take_lock(path: Path, patience_s: float) -> IO | None:
    """An exclusive flock on `path`, with this process's pid, host and start time written in; None when another
    process still holds it after `patience_s`. The lock lasts until the returned handle is closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # "a+": open without truncating, so a holder's pid stays readable until this process owns the lock
    handle = open(path, "a+")
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.05)
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    handle.flush()
    return handle


class RunDirLock:
    """`with RunDirLock(run_dir):` the run dir is this process's until the block ends (or the process dies)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._handle = None

    def __enter__(self) -> "RunDirLock":
        self._handle = take_lock(self.path, _ACQUIRE_PATIENCE_S)
        if self._handle is None:
            raise RunDirLocked(f"{self.path.parent} is in use by another run ({describe_holder(self.path)}); "
                               "wait for it to end or stop it, or give this run its own folder "
                               "(hydra.run.dir=<new folder>)")
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.close()  # closing the last descriptor drops the flock


def lock_state(run_dir: str | os.PathLike) -> str:
    """'held' (a live process holds the run dir), 'free' (a lock file that no process holds) or 'none'."""
    path = Path(run_dir) / LOCK_FILE
    try:
        handle = open(path)
    except OSError:
        return "none"  # no lock file, or an unreadable one: nothing can be said
    with handle:
        try:
            # a shared probe: it conflicts only with a writer's exclusive lock, and is dropped at once
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return "held"
        except OSError:
            return "none"  # a file system without flock: nothing can be said
        fcntl.flock(handle, fcntl.LOCK_UN)
        return "free"
