"""One writer per run dir: the trainer holds an exclusive flock on <run dir>/run.lock for the run's whole life.

The kernel drops a flock when its process ends, however it ends, so the lock also tells a reader whether the
process that wrote a run dir is still alive: a summary.json that still says `running` beside a lock file that no
process holds belongs to a run that died without writing its end (SIGKILL, the OOM killer, a machine crash).
The file itself stays after the run (removing a flock'ed file races with a process about to lock it); it holds
the pid, the host and the start time of the last run that took it.

A lock belongs to the process that took it alone. A flock lasts while any descriptor of its open file lives, and a
child process gets copies of its parent's: a program the run starts (W&B's service, git) gets none, since the file
is opened close-on-exec, and a forked child (a decode worker) points its copies at /dev/null as soon as it is
forked. So the lock ends with the run's own process, and no child left running can keep a dead run's dir locked.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import weakref
from pathlib import Path

from bnexp.runs.fileio import read_json

LOCK_FILE = "run.lock"
# A reader probing the lock holds it for microseconds; a starting run retries for this long before giving up.
_ACQUIRE_PATIENCE_S = 1.0


class RunDirLocked(Exception):
    """Another live process holds the run dir: a user error (two runs given the same hydra.run.dir)."""


class RunDirUnusable(ValueError):
    """A run dir that cannot be created or written (below a file, in a read-only folder, itself read-only): a user
    error, a ValueError like the command line's other bad values."""


def unusable_run_dir_message(run_dir: str | os.PathLike | None, error: OSError) -> str:
    """One line: which run dir (when known), why it cannot be used, and the fix."""
    where = f": {error.filename}" if error.filename else ""
    which = f" {run_dir}" if run_dir is not None else ""
    return (f"the run dir{which} cannot be created or written ({error.strerror or error}{where}); give the run a "
            "folder it can write, e.g. hydra.run.dir=runs/my-run")


def describe_holder(lock_path: Path) -> str:
    """'pid 123 on host x, since 2026-...' from the lock file, or what is known."""
    holder = read_json(lock_path)
    if holder is None:
        return "a process that has not written its pid yet"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started_at', '?')}"


class HeldLock:
    """A lock file's descriptor in this process, through which take_lock holds its flock: the lock lasts until
    close() or the process's end."""

    def __init__(self, descriptor: int):
        self.descriptor = descriptor
        self._open = True
        _held_locks.add(self)

    def close(self) -> None:
        """Let the lock go (closing the last descriptor of the file drops the flock); a second call does nothing."""
        if self._open:
            self._open = False
            _held_locks.discard(self)
            os.close(self.descriptor)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the module may be half gone: the kernel lets go
            self.close()  # as a file object does: a lock that nothing refers to any more is let go


# The locks this process holds, which a forked child must not keep.
_held_locks: weakref.WeakSet[HeldLock] = weakref.WeakSet()


def _let_go_in_forked_child() -> None:
    """In a child just forked: point each inherited lock descriptor at /dev/null, so that the lock's file is left to
    the parent, and the number stays taken (never to be closed by the child's copy of the HeldLock while it names
    another file). Never flock(LOCK_UN) here: that would release the parent's lock too."""
    for lock in list(_held_locks):
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            os.dup2(null, lock.descriptor, inheritable=False)
            os.close(null)
        lock._open = False
    _held_locks.clear()


os.register_at_fork(after_in_child=_let_go_in_forked_child)


def take_lock(path: Path, patience_s: float) -> HeldLock | None:
    """An exclusive flock on `path`, with this process's pid, host and start time written in; None when another
    process still holds it after `patience_s`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # No O_TRUNC: a holder's pid stays readable until this process owns the lock. O_CLOEXEC: see the module's doc.
    lock = HeldLock(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666))  # a child forked from now on lets go
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(lock.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                lock.close()
                return None
            time.sleep(0.05)
    holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"
    os.ftruncate(lock.descriptor, 0)
    os.pwrite(lock.descriptor, holder.encode(), 0)
    return lock


class RunDirLock:
    """`with RunDirLock(run_dir):` the run dir is this process's until the block ends (or the process dies)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._handle = None

    def __enter__(self) -> "RunDirLock":
        try:
            self._handle = take_lock(self.path, _ACQUIRE_PATIENCE_S)
        except OSError as error:  # the dir cannot be made, or the lock file cannot be created in it
            raise RunDirUnusable(unusable_run_dir_message(self.path.parent, error)) from None
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
