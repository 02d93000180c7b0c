"""The sweep's bookkeeping: one row per run in <out_dir>/sweep_status.json and <out_dir>/runs.csv, rewritten
atomically as runs start and end, and the lock that keeps a second sweep out of the same out_dir.

The rows start from the run dirs (a finished or diverged run is done; anything else is pending until this sweep
redoes it), so the ledger never decides what is done: the run dirs do.
"""
from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf

from bnexp.runs.fileio import atomic_write, write_json_atomic
from bnexp.runs.files import COMPLETED_STATUSES, first_line, read_summary, run_status
from bnexp.runs.lock import describe_holder, take_lock
from bnexp.sweep.attempt import JobOutcome
from bnexp.sweep.grid import SweepJob

STATUS_FILE = "sweep_status.json"
RUNS_CSV = "runs.csv"
SWEEP_LOCK_FILE = "sweep.lock"
RUN_FIELDS = ["run_id", "status", "variant", "model", "lr", "seed", "role", "returncode", "wall_time_s",
              "final_test_acc", "attempted", "run_dir", "error"]


class SweepLockedError(RuntimeError):
    pass


def lock_sweep_dir(out_dir: Path) -> IO:
    """An exclusive lock on <out_dir>/sweep.lock: two sweeps on one dir would redo each other's running runs.
    flock is released by the kernel when the process dies, so a killed sweep never leaves a stale lock."""
    handle = take_lock(out_dir / SWEEP_LOCK_FILE, patience_s=0.0)
    if handle is None:
        raise SweepLockedError(f"another sweep ({describe_holder(out_dir / SWEEP_LOCK_FILE)}) is running in "
                               f"{out_dir}; wait for it or stop it")
    return handle


class SweepLedger:
    """The sweep-level view of every run; only the main thread touches it."""

    def __init__(self, sweep_cfg: DictConfig, jobs: Iterable[SweepJob], out_dir: Path,
                 planner_status: Callable[[], dict] | None = None):
        self.out_dir = out_dir
        self.name = str(sweep_cfg.name)
        self.config = OmegaConf.to_container(sweep_cfg)
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.rows: dict[str, dict[str, Any]] = {}
        self.mode = str(sweep_cfg.mode)
        # a planning mode's state per search (largest_lr: its bracket), asked for at each save
        self.planner_status = planner_status
        self.add_jobs(jobs)

    def add_jobs(self, jobs: Iterable[SweepJob]) -> None:
        for job in jobs:
            summary = read_summary(job.run_dir) or {}
            status = run_status(job.run_dir, summary)
            self.rows[job.run_id] = {
                # a stale 'running'/'failed' from an earlier sweep is 'pending' until this sweep redoes it
                "run_id": job.run_id, "status": status if status in COMPLETED_STATUSES else "pending",
                "previous_status": None if status in COMPLETED_STATUSES else status, "variant": job.variant,
                "model": job.model, "lr": job.lr, "seed": job.seed, "role": job.role,
                "returncode": summary.get("returncode"),
                "wall_time_s": summary.get("wall_time_s"), "final_test_acc": summary.get("final_test_acc"),
                "attempted": False, "run_dir": str(job.run_dir), "error": summary.get("error"),
                "overrides": list(job.overrides), "job_id": None,
            }

    def note_job_id(self, run_id: str, job_id: str | None) -> bool:
        """The id its executor knows the run by (a local run's pid, a SLURM job id); whether it is news."""
        row = self.rows[run_id]
        if job_id is None or row["job_id"] == job_id:
            return False
        row["job_id"] = job_id
        return True

    def mark_running(self, run_id: str, worker: int | None, gpu: str | None) -> None:
        self.rows[run_id].update(status="running", attempted=True, worker=worker, gpu=gpu, error=None,
                                 returncode=None)

    def mark_done(self, job: SweepJob, outcome: JobOutcome) -> None:
        self.rows[job.run_id].update(status=outcome.status, returncode=outcome.returncode,
                                     wall_time_s=round(outcome.wall_time_s, 2), error=outcome.error,
                                     final_test_acc=outcome.summary.get("final_test_acc"))

    def counts(self) -> Counter:
        return Counter(row["status"] for row in self.rows.values())

    def failures(self) -> list[dict[str, Any]]:
        return [row for row in self.rows.values() if row["status"] not in COMPLETED_STATUSES]

    def redone(self, followed: set[str] = frozenset()) -> Counter:
        """How many of the runs to do now were left failed, killed, ... by an earlier sweep (`followed`: runs whose
        job from an earlier sweep is still under way, which are not redone)."""
        return Counter(row["previous_status"] for row in self.rows.values() if row["status"] == "pending"
                       and row["previous_status"] != "missing" and row["run_id"] not in followed)

    def progress_text(self, skipped: int) -> str:
        counts = self.counts()
        return (f"done={counts['finished'] + counts['diverged']} (diverged={counts['diverged']}, skipped={skipped}) "
                f"running={counts['running']} failed={counts['failed']}")

    def save(self, state: str) -> None:
        write_json_atomic(self.out_dir / STATUS_FILE, {
            "sweep": self.name, "state": state, "started_at": self.started_at,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "counts": self.counts(),
            "config": self.config, **({self.mode: self.planner_status()} if self.planner_status else {}),
            "runs": list(self.rows.values())})
        with atomic_write(self.out_dir / RUNS_CSV, newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=RUN_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({**row, "error": first_line(row.get("error"))} for row in self.rows.values())
