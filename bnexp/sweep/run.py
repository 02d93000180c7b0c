"""One sweep from its checked config to its exit code: the jobs to do (the grid, or the lr searches' first round),
a dry run's listing, the out_dir lock, the first line, the scheduler, and the closing account of what did not finish.

Resuming is running again: the jobs are rebuilt from the config, and a run whose dir says finished or diverged is
skipped.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from bnexp.config.compose import ConfigError
from bnexp.runs.fileio import read_json
from bnexp.runs.files import COMPLETED_STATUSES, first_line, run_status
from bnexp.sweep.best_lr import BestLrPlanner
from bnexp.sweep.largest_lr import LargestLrPlanner
from bnexp.sweep.executors import Executor, LocalExecutor
from bnexp.sweep.grid import SweepJob, build_jobs, train_command
from bnexp.sweep.ledger import STATUS_FILE, SweepLedger, lock_sweep_dir
from bnexp.sweep.processes import WorkerPlan, plan_workers
from bnexp.sweep.planning import RunDirPlanner
from bnexp.sweep.scheduler import Scheduler


# the planning modes: their next runs depend on how the earlier ones ended
PLANNERS: dict[str, Callable[[DictConfig, list[str]], RunDirPlanner]] = {
    "largest_lr": lambda sweep_cfg, overrides: LargestLrPlanner(sweep_cfg, overrides, one_at_a_time=False),
    "best_lr": BestLrPlanner,
}


def run_sweep(sweep_cfg: DictConfig, cli_train_overrides: list[str], dry_run: bool = False) -> int:
    """Run (or resume) the sweep of a checked config (bnexp.sweep.grid.compose_sweep_config); returns the process
    exit code."""
    planner = plan = None
    if sweep_cfg.mode in PLANNERS:
        planner = PLANNERS[sweep_cfg.mode](sweep_cfg, cli_train_overrides)
        if sweep_cfg.executor != "slurm":  # SLURM places the runs itself
            plan = plan_workers(sweep_cfg, planner.max_parallel_runs())
        if isinstance(planner, LargestLrPlanner):
            # one run at a time runs an lr's seeds one by one, so that an lr whose first seed fails costs one run
            planner.one_at_a_time = (plan.count if plan else sweep_cfg.slurm.array_parallelism) == 1

    def jobs_and_pending() -> tuple[list[SweepJob], list[SweepJob]]:
        """The jobs (a planning mode: those known and the first round) and those not finished/diverged yet."""
        jobs = planner.known_jobs() + planner.next_jobs() if planner else build_jobs(sweep_cfg, cli_train_overrides)
        return jobs, [job for job in jobs if run_status(job.run_dir) not in COMPLETED_STATUSES]

    out_dir = Path(sweep_cfg.out_dir).resolve()
    jobs, pending = jobs_and_pending()
    skipped = len(jobs) - len(pending)

    if dry_run:
        _print_dry_run(jobs, pending, planner, sweep_cfg.train_module, out_dir)
        return 0
    if sweep_cfg.executor != "local" and importlib.util.find_spec("submitit") is None:
        raise ConfigError(f"sweep.executor={sweep_cfg.executor} needs submitit: pip install submitit "
                          "(or pip install -e .[slurm])")

    out_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_sweep_dir(out_dir)  # noqa: F841  (held until this process exits)
    # Job statuses are read after taking the lock: another sweep may have just finished some of them.
    jobs, pending = jobs_and_pending()
    skipped = len(jobs) - len(pending)
    if sweep_cfg.executor != "slurm":  # SLURM places the runs itself (a planning mode's plan is made above)
        plan = plan or plan_workers(sweep_cfg, len(pending))
    executor = _make_executor(sweep_cfg, plan, out_dir)
    followed = executor.adopt(pending)
    ledger = SweepLedger(sweep_cfg, jobs, out_dir, planner_status=planner.status if planner else None)
    for run_id, job_id in followed.items():
        ledger.note_job_id(run_id, job_id)
    ledger.save("running")
    redone = ledger.redone(set(followed))
    redoing = f"; redoing {', '.join(f'{n} {status}' for status, n in sorted(redone.items()))}" if redone else ""
    if followed:
        redoing += f"; following {len(followed)} still queued or running from an earlier sweep"
    scheduler = None
    try:
        if planner is None:
            print(f"sweep {ledger.name}: {len(jobs)} runs ({skipped} already finished/diverged, {len(pending)} to "
                  f"run{redoing}) {executor.describe()} -> {out_dir}", flush=True)
        else:
            print(f"sweep {ledger.name} ({sweep_cfg.mode} mode): {len(planner.searches)} searches, {skipped} runs "
                  f"already finished/diverged, {len(pending)} to run first{redoing}, {executor.describe()} -> "
                  f"{out_dir}\n{planner.describe_settings()}", flush=True)
        scheduler = Scheduler(ledger, executor, planner, skipped)
        completed = scheduler.run(pending)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the scheduler was under way: nothing has started here
        executor.stop()  # jobs of an earlier sweep that this one follows are the sweep's to cancel too
        executor.close()
        completed = False
    ledger.save("done" if completed else "interrupted")
    logs = scheduler.logs if scheduler is not None else {}

    failures = ledger.failures()
    counts = ledger.counts()
    print(f"sweep {ledger.name}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
          + f" -> {out_dir / STATUS_FILE}")
    if planner is not None:
        _print_summary(planner)
    if failures:
        print(f"{len(failures)} run(s) did not finish; re-run the same command to redo only these:",
              file=sys.stderr)
        for row in failures:
            error_line = ("not started: the sweep was stopped before it" if row["status"] == "pending"
                          else first_line(row.get("error"), row["status"]))
            log = logs.get(row["run_id"])
            # only a log that exists: a run that never started has none, and its line says why
            see = f"\n    see {log}" if log is not None and log.is_file() else ""
            print(f"  - {row['run_id']}: {error_line}{see}", file=sys.stderr)
        return 1 if completed else 130
    return 0


def _make_executor(sweep_cfg: DictConfig, plan: WorkerPlan | None, out_dir: Path) -> Executor:
    if sweep_cfg.executor == "local":
        return LocalExecutor(plan, sweep_cfg.train_module, sweep_cfg.timeout_s)
    from bnexp.sweep.submitit_executor import SubmititExecutor  # imports submitit

    # the jobs an earlier sweep with this executor submitted and did not see end: still running, maybe
    previous = read_json(out_dir / STATUS_FILE) or {}
    same_executor = (previous.get("config") or {}).get("executor") == sweep_cfg.executor
    previous_jobs = {row["run_id"]: str(row["job_id"]) for row in previous.get("runs") or []
                     if same_executor and row.get("job_id") and row.get("status") in ("pending", "running")}
    return SubmititExecutor(sweep_cfg.executor, sweep_cfg, plan, previous_jobs)


def _print_dry_run(jobs: list[SweepJob], pending: list[SweepJob], planner: RunDirPlanner | None, train_module: str,
                   out_dir: Path) -> None:
    skipped = len(jobs) - len(pending)
    for job in jobs:
        state = "pending" if job in pending else "done (skip)"
        print(f"[{state}] {' '.join(train_command(job, train_module))}")
    if planner is not None:
        print(f"{planner.describe_settings()}; so far:")
        _print_summary(planner)
        print(f"{planner.mode} mode: {len(pending)} run(s) in the first round, {skipped} known; later rounds depend on "
              f"their outcomes; out_dir={out_dir}")
    else:
        print(f"{len(jobs)} runs, {len(pending)} to run, {skipped} already done; out_dir={out_dir}")


def _print_summary(planner: RunDirPlanner) -> None:
    for line in planner.summary_lines():
        print(f"  {line}")
