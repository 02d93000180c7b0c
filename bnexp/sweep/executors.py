"""Where the sweep's runs execute. The scheduler hands an executor jobs and asks it which have ended; each run it
was given comes back once, as a Launch with the run's outcome (or none, for a run the sweep stopped before it
started).

The local executor (SLURM and submitit's local executor: submitit_executor.py) is a pool of worker threads, one per
worker slot (a GPU and its environment), each starting a run's training process on the machine the sweep runs on and waiting for it.
The sweep is the parent of every run, which is what lets a run end with the sweep however the sweep ends
(bnexp.runs.orphan_guard).
"""
from __future__ import annotations

import itertools
import os
import signal
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

from bnexp.runs.lock import RunDirLocked
from bnexp.sweep.attempt import JobOutcome, judge, prepare_run_dir
from bnexp.sweep.grid import SweepJob, train_command
from bnexp.sweep.processes import (
    TERMINATE_GRACE_S,
    SweepStopped,
    TrainingProcesses,
    WorkerPlan,
    child_env,
    run_training_process,
)

# a stop gives the runs this long to end after SIGTERM, then kills those that ignore it
STOP_PATIENCE_S = 60.0


@dataclass(eq=False)
class Launch:
    """One run handed to an executor. `job_id` names it to its executor (the pid of a local run's process, a
    SLURM job id) once known; `started` is set (from any thread) once the run is under way, with the worker slot and
    GPU it runs on where the executor has them; `outcome` when it has ended."""
    job: SweepJob
    job_id: str | None = None
    started: bool = False
    worker: int | None = None
    gpu: str | None = None
    outcome: JobOutcome | None = None


class Executor(Protocol):
    """What the scheduler asks of an executor. Everything is called from the sweep's main thread."""
    capacity: int  # how many runs it runs at once

    def describe(self) -> str:
        """How the runs execute, for the sweep's first line ('with 2 worker(s) [CPU, 1 thread(s) each]')."""

    def adopt(self, jobs: list[SweepJob]) -> dict[str, str]:
        """Run id -> job id of the runs among `jobs` that an earlier sweep's jobs are still running: followed, not
        started again."""

    def submit(self, jobs: list[SweepJob]) -> list[Launch]:
        """Hand over runs; each comes back once from wait() or stop()."""

    def wait(self, timeout: float) -> list[Launch]:
        """The runs that have ended, waiting up to about `timeout` s for one."""

    def stop(self) -> list[Launch]:
        """Start nothing more, stop what runs; the runs that ended (one never started has no outcome)."""

    def close(self) -> None:
        """Let go of whatever it holds (after the last wait or stop)."""


class LocalExecutor:
    """Runs on the machine the sweep runs on, at most one per worker slot at a time."""

    def __init__(self, plan: WorkerPlan, train_module: str, timeout_s: float | None):
        self.plan = plan
        self.train_module = train_module
        self.timeout_s = timeout_s
        self.envs = [child_env(gpu, plan.threads_per_worker) for gpu in plan.gpu_of_worker]
        self.processes = TrainingProcesses()
        self.cwd = os.getcwd()
        # Each pool thread is one worker for the whole sweep, with its own slot (GPU and environment).
        self._slots, self._thread_slot = itertools.count(), threading.local()
        self._pool = ThreadPoolExecutor(max_workers=plan.count, thread_name_prefix="sweep-worker",
                                        initializer=self._take_slot)
        self._futures: dict[Future, Launch] = {}
        self.capacity = plan.count

    def describe(self) -> str:
        return f"with {self.plan.count} worker(s) [{self.plan.describe()}]"

    def adopt(self, jobs: list[SweepJob]) -> dict[str, str]:
        """Runs of an earlier sweep to follow: none here, since a local run ends with the sweep that started it."""
        return {}

    def _take_slot(self) -> None:
        self._thread_slot.index = next(self._slots)

    def submit(self, jobs: list[SweepJob]) -> list[Launch]:
        launches = [Launch(job) for job in jobs]
        for launch in launches:
            self._futures[self._pool.submit(self._run, launch)] = launch
        return launches

    def _run(self, launch: Launch) -> JobOutcome | None:
        """On a worker thread: the run from start to outcome; None when the sweep stopped before it started."""
        if self.processes.stopping:
            return None
        slot = self._thread_slot.index
        launch.worker, launch.gpu = slot, self.plan.gpu_of_worker[slot]
        launch.started = True
        job = launch.job
        try:
            command = train_command(job, self.train_module)
            prepare_run_dir(job, command)
            result = run_training_process(command, job.run_dir, self.envs[slot], self.cwd, self.timeout_s,
                                          self.processes, on_start=lambda pid: setattr(launch, "job_id", str(pid)))
            return judge(job, result, self.timeout_s)
        except SweepStopped:
            return None
        except RunDirLocked as error:
            return JobOutcome("failed", None, 0.0, f"not started: {error}")
        except Exception as error:  # the runner's own failure (e.g. disk full) fails this run, not the sweep
            return JobOutcome("failed", None, 0.0, f"sweep runner error: {error!r}")

    def _collect(self, futures) -> list[Launch]:
        ended = []
        for future in futures:
            launch = self._futures.pop(future)
            launch.outcome = None if future.cancelled() else future.result()
            ended.append(launch)
        return ended

    def wait(self, timeout: float) -> list[Launch]:
        """The runs that ended, waiting up to `timeout` s for one."""
        done, _ = wait(set(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)
        return self._collect(done)

    def stop(self) -> list[Launch]:
        """Start nothing more, stop the running runs (SIGTERM, then SIGKILL for one that ignores it) and return
        every run that has ended (one never started has no outcome)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.processes.stop(signal.SIGTERM)
        # a queued run cancelled by shutdown never reaches a worker, so wait() would never count it done
        started_runs = [future for future in self._futures if not future.cancelled()]
        if wait(started_runs, timeout=STOP_PATIENCE_S).not_done:  # a run that ignores SIGTERM
            self.processes.stop(signal.SIGKILL)
            wait(started_runs, timeout=TERMINATE_GRACE_S)
        return self._collect([future for future in list(self._futures) if future.done()])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
