"""A run dir's lock belongs to the run's own process: no child keeps it, and the decode workers end with the run.

Before, a SIGKILL of a run decoding in parallel left its decode workers running, orphaned, holding the inherited
lock descriptor: the run dir stayed 'running', and a rerun or a sweep resume was refused, naming a dead pid.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnexp.data.dataset import CIFAR10_CLASSES
from bnexp.runs.files import run_status
from bnexp.runs.lock import LOCK_FILE, RunDirLock, lock_state
from tests.data.test_data_faults import write_tree
from tests.helpers import REPO, repo_env, wait_for


def children_of(pid: int) -> list[int]:
    """The pids whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)": state, ppid, ...
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def is_alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped by whoever adopted it) is not alive."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def say_ready_then_sleep(ready) -> None:
    ready.set()
    time.sleep(60)


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """A child forked while the lock is held (as a decode worker is) lives on after the run lets go: the lock must
    be free all the same."""
    fork = multiprocessing.get_context("fork")
    with RunDirLock(tmp_path):
        ready = fork.Event()
        child = fork.Process(target=say_ready_then_sleep, args=(ready,), daemon=True)
        child.start()
        assert ready.wait(timeout=60)  # the child is past its start (where it lets go of its copy)
        assert lock_state(tmp_path) == "held"
    try:
        assert child.is_alive()
        assert lock_state(tmp_path) == "free"
        with RunDirLock(tmp_path):  # the next run may take the dir
            assert lock_state(tmp_path) == "held"
    finally:
        child.kill()
        child.join()


def test_a_program_the_run_starts_does_not_get_the_lock(tmp_path):
    """Even when asked to pass on every inheritable descriptor (close_fds=False), a program started while the lock
    is held gets no copy of it: the lock file is opened close-on-exec. (A guard: it passed before too.)"""
    with RunDirLock(tmp_path):
        program = subprocess.Popen([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                                   close_fds=False, stdout=subprocess.PIPE, text=True)
        assert program.stdout.readline() == "started\n"  # past its exec, where close-on-exec acts
    try:
        assert lock_state(tmp_path) == "free"
        open_files = [os.readlink(fd) for fd in Path(f"/proc/{program.pid}/fd").iterdir()]
        assert str(tmp_path / LOCK_FILE) not in open_files
    finally:
        program.kill()
        program.wait()


@pytest.mark.slow
def test_a_run_killed_while_decoding_in_parallel_leaves_no_worker_and_no_lock(tmp_path):
    """The real command line decoding 2100 images with 2 worker processes (slowed to 10 ms an image), SIGKILLed a
    moment into the decode: its workers end, the lock is free, the run counts as killed, and a rerun may take the
    dir."""
    tree = write_tree(tmp_path, per_class=210, test_per_class=2, classes=CIFAR10_CLASSES)
    run_dir, stderr_path = tmp_path / "run", tmp_path / "stderr.log"
    arguments = ["data=cifar10_folder", f"data.path={tree}", f"data.data_dir={tmp_path / 'cache'}",
                 "data.decode_workers=2", "model.width=0.125", "train.epochs=1", "train.batch_size=64",
                 f"hydra.run.dir={run_dir}"]
    workers: list[int] = []
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "tests.support.slow_decode", *arguments], cwd=REPO,
                                   env=repo_env(), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: "decoding train" in stderr_path.read_text() or process.poll() is not None, timeout=240)
        assert process.poll() is None, stderr_path.read_text()[-3000:]
        workers = wait_for(lambda: [pid for pid in children_of(process.pid) if is_alive(pid)], timeout=60)
        assert lock_state(run_dir) == "held"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        wait_for(lambda: not any(map(is_alive, workers)), timeout=30)
        assert lock_state(run_dir) == "free"
        assert run_status(run_dir) == "killed"
        with RunDirLock(run_dir):  # not refused, naming a dead pid
            pass
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in filter(is_alive, workers):  # left over by a run that did not take its workers along
            os.kill(pid, signal.SIGKILL)
