"""Training processes: which devices and threads each worker gets, the environment a run starts with, and one run's
process started, waited for (up to its timeout) and stopped.

Each run starts in a session of its own, so signalling its process group reaches whatever the run started too, and
a terminal's Ctrl-C reaches the sweep alone, which stops them.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from bnexp.config.sweep_schema import count_setting
from bnexp.runs.orphan_guard import SWEEP_PID_VARIABLE

REPO_ROOT = Path(__file__).resolve().parents[2]
STDOUT_LOG, STDERR_LOG = "stdout.log", "stderr.log"
# after SIGTERM (a timeout, a stop) a run gets this long to write its end before it is killed
TERMINATE_GRACE_S = 30.0


def visible_gpu_ids(gpus_setting: Any) -> list[str]:
    """GPU ids to spread workers over: an explicit list, or (auto) every visible CUDA device; [] means CPU."""
    if gpus_setting not in (None, "auto"):
        return [str(g) for g in gpus_setting]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in map(str.strip, visible.split(",")) if g not in ("", "-1")]
    try:
        import torch  # imported lazily: the sweep itself never computes anything
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


@dataclass
class WorkerPlan:
    count: int
    gpu_of_worker: list[str | None]
    threads_per_worker: int

    def describe(self) -> str:
        """'GPU 0, GPU 1' or 'CPU, 2 thread(s) each', for the sweep's first line."""
        if self.gpu_of_worker[0] is not None:
            return ", ".join(f"GPU {gpu}" for gpu in self.gpu_of_worker)
        return f"CPU, {self.threads_per_worker} thread(s) each"


def plan_workers(sweep_cfg: Mapping, n_jobs: int) -> WorkerPlan:
    gpus = visible_gpu_ids(sweep_cfg.get("gpus", "auto"))
    workers, threads = count_setting(sweep_cfg, "workers"), count_setting(sweep_cfg, "threads_per_worker")
    # auto: one run per GPU; on CPU one run already uses every core
    count = max(1, min((len(gpus) or 1) if workers is None else workers, max(n_jobs, 1)))
    gpu_of_worker = [gpus[i % len(gpus)] if gpus else None for i in range(count)]
    # auto: split the cores so parallel CPU runs do not oversubscribe each other
    threads = max(1, (os.cpu_count() or 1) // count) if threads is None else threads
    return WorkerPlan(count, gpu_of_worker, threads)


def run_environment(gpu: str | None, threads: int | None) -> dict[str, str]:
    """What a run's environment adds to the one it starts in: this checkout importable, unbuffered output, full
    Hydra tracebacks (so the recorded error is the real one), the thread count and the GPU, where they are given."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
           "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def child_env(gpu: str | None, threads: int) -> dict[str, str]:
    """The whole environment of a run that a worker of this process starts; the run dies with this process
    (bnexp.runs.orphan_guard)."""
    return {**os.environ, **run_environment(gpu, threads), SWEEP_PID_VARIABLE: str(os.getpid())}


class SweepStopped(Exception):
    """The sweep is stopping: a run that has not started is not started."""


def signal_group(process: subprocess.Popen, signum: int) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.killpg(process.pid, signum)


class TrainingProcesses:
    """The running training processes of this sweep, so that a stop reaches all of them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen] = set()
        self.stopping = False

    def start(self, command: list[str], **popen_kwargs: Any) -> subprocess.Popen:
        with self._lock:  # so that stop() cannot miss a process that starts while it runs
            if self.stopping:
                raise SweepStopped
            process = subprocess.Popen(command, start_new_session=True, **popen_kwargs)
            self._live.add(process)
            return process

    def ended(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._live.discard(process)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Signal every running training process's group, and start no more."""
        with self._lock:
            self.stopping = True
            live = list(self._live)
        for process in live:
            signal_group(process, signum)


@dataclass
class ProcessResult:
    """How a run's process ended: its exit code (negative: the signal that ended it) and whether it ran past the
    sweep's timeout."""
    returncode: int
    wall_time_s: float
    timed_out: bool = False


def run_training_process(command: list[str], run_dir: Path, env: Mapping[str, str], cwd: str,
                         timeout_s: float | None, processes: TrainingProcesses, on_start=None) -> ProcessResult:
    """Run one training process to its end, its output in <run dir>/stdout.log and stderr.log. Past `timeout_s` it
    gets SIGTERM, and SIGKILL TERMINATE_GRACE_S later. `processes`: the registry a stop goes through. `on_start(pid)`:
    called once the process runs."""
    run_dir = Path(run_dir)
    started = time.monotonic()
    timed_out = False
    popen_kwargs = dict(stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd)
    with open(run_dir / STDOUT_LOG, "wb") as stdout, open(run_dir / STDERR_LOG, "wb") as stderr:
        popen_kwargs.update(stdout=stdout, stderr=stderr)
        # The thread that starts a run waits for it: the run's die-with-parent signal fires when that thread ends.
        process = processes.start(command, **popen_kwargs)
        if on_start is not None:
            on_start(process.pid)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                signal_group(process, signal.SIGKILL)
                process.wait()
        finally:
            processes.ended(process)
    return ProcessResult(process.returncode, time.monotonic() - started, timed_out)
