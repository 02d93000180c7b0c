"""Sweep runner: one command runs a grid of training runs, in parallel, resumably.

    python -m bnexp.sweep sweep=lr_stability [sweep.<key>=...] [train overrides...]

The grid (variants x models x lrs x seeds) comes from conf/sweep/<name>.yaml, composed with Hydra's compose API.
Arguments whose key starts with `sweep` override the sweep config (e.g. `sweep.seeds=[0]`, `sweep.workers=2`,
`sweep.only_variants=[correct_bn,no_bn]`); every other argument is a train override passed to every run
(e.g. `data=synthetic model.width=0.25`). Each run is a subprocess

    python -m bnexp.train <overrides> hydra.run.dir=<sweep out_dir>/runs/<run id>

so a crash or kill of one run cannot take the sweep down. The run id is derived deterministically from the run's
overrides (readable part + hash of all overrides), which is what makes the sweep resumable: a re-run skips runs
whose summary.json says finished/diverged and redoes running (killed), failed or missing ones.
Sweep-level bookkeeping goes to <out_dir>/sweep_status.json and <out_dir>/runs.csv.

`sweep.mode=edge` searches each variant's edge of stability instead of running the lr grid (bnexp/sweep/edge.py):
the runs are chosen as outcomes come in, from the same run dirs, so it resumes the same way.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bnexp.config.compose import CONF_DIR
from bnexp.runs.fileio import atomic_write, write_json_atomic
from bnexp.runs.orphan_guard import SWEEP_PID_VARIABLE
from bnexp.runs.lock import LOCK_FILE, RunDirLocked, describe_holder, lock_state, take_lock
from bnexp.sweep.edge import EdgePlanner, sweep_mode
from bnexp.runs.files import (
    COMPLETED_STATUSES,
    SUMMARY_FILE,
    SWEEP_JOB_FILE,
    first_line,
    read_summary,
    run_status,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
STDERR_TAIL_LINES = 25
STATUS_FILE = "sweep_status.json"
RUNS_CSV = "runs.csv"
SWEEP_LOCK_FILE = "sweep.lock"


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------

def _override_keys(overrides: list[str]) -> list[str]:
    """The config key each override sets, as Hydra parses it: '+variant=x' -> 'variant', '~a.b' -> 'a.b',
    'optim.lr=0.1' -> 'optim.lr', 'group@pkg=x' -> 'group@pkg'. A malformed override raises Hydra's own error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.key_or_group + (f"@{o.package}" if o.package is not None else "") for o in parsed]


def split_cli_overrides(arguments: list[str]) -> tuple[list[str], list[str]]:
    """Separate sweep-config overrides (key `sweep` or `sweep.*`) from train overrides (everything else)."""
    sweep_overrides, train_overrides = [], []
    for argument, key in zip(arguments, _override_keys(arguments)):
        (sweep_overrides if key == "sweep" or key.startswith("sweep.") else train_overrides).append(argument)
    return sweep_overrides, train_overrides


def compose_sweep_config(sweep_overrides: list[str], config_dir: Path = CONF_DIR) -> DictConfig:
    """Compose conf/sweep/<name>.yaml (+ overrides) with Hydra; returns the `sweep` node, resolved."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    # A tiny primary config whose only job is to make `sweep=<name>` a mandatory group choice.
    ConfigStore.instance().store(name="_bnexp_sweep_main", node={"defaults": ["_self_", {"sweep": "???"}]})
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        composed = compose(config_name="_bnexp_sweep_main", overrides=sweep_overrides)
    sweep_cfg = composed.sweep
    OmegaConf.resolve(sweep_cfg)
    return sweep_cfg


@dataclass(frozen=True)
class SweepJob:
    """One training run of the grid."""
    run_id: str
    variant: str            # label from the sweep config (e.g. grouped_bn_g8)
    model: str | None       # conf/model choice, None = trainer default
    lr: float
    seed: int
    overrides: tuple[str, ...]
    run_dir: Path

    def describe(self) -> str:
        model = f"{self.model} " if self.model else ""
        return f"{model}{self.variant} lr={self.lr:g} seed={self.seed}"


def _merge_overrides(*override_lists: list[str]) -> list[str]:
    """Concatenate override lists; a later override of the same key replaces an earlier one (Hydra rejects
    duplicates, and 'the preset says X, my command line says Y' should mean Y)."""
    merged: dict[str, str] = {}
    for overrides in override_lists:
        for override, key in zip(overrides, _override_keys(overrides)):
            merged.pop(key, None)  # re-insert so the order reflects the last writer
            merged[key] = override
    return list(merged.values())


def make_run_id(variant: str, model: str | None, lr: float, seed: int, overrides: list[str]) -> str:
    """Readable grid coordinates + a hash of every override, so any change to the recipe gets a new dir."""
    digest = hashlib.sha1(json.dumps(sorted(overrides)).encode()).hexdigest()[:8]
    readable = "_".join(part for part in (model, variant, f"lr{lr:g}", f"seed{seed}") if part)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", readable).strip("-") + f"_{digest}"


def build_jobs(sweep_cfg: DictConfig, cli_train_overrides: list[str]) -> list[SweepJob]:
    """Expand the grid variants x models x lrs x seeds into jobs (deduplicated, deterministic order)."""
    variants: dict[str, list[str]] = {
        str(label): [str(o) for o in (overrides or [])]
        for label, overrides in OmegaConf.to_container(sweep_cfg.variants).items()
    }
    selected = sweep_cfg.get("only_variants")
    if selected:
        unknown = [label for label in selected if label not in variants]
        if unknown:
            raise ValueError(f"sweep.only_variants names unknown variants {unknown}; known: {list(variants)}")
        variants = {label: variants[label] for label in selected}
    models = list(sweep_cfg.get("models") or []) or [None]
    lrs = [float(lr) for lr in sweep_cfg.lrs]
    seeds = [int(seed) for seed in sweep_cfg.seeds]
    common = [str(o) for o in (sweep_cfg.get("train_overrides") or [])]

    grid_keys = {"variant", "model", "optim.lr", "seed"}
    clashing = [o for o, key in zip(cli_train_overrides, _override_keys(cli_train_overrides)) if key in grid_keys]
    if clashing:
        raise ValueError(f"{clashing} would override grid axes; change the grid instead "
                         "(sweep.lrs=[...], sweep.seeds=[...], sweep.only_variants=[...], sweep.models=[...])")

    runs_dir = Path(sweep_cfg.out_dir).resolve() / "runs"
    jobs: dict[str, SweepJob] = {}
    for label, model, lr, seed in itertools.product(variants, models, lrs, seeds):
        grid = [*variants[label], *([f"model={model}"] if model else []), f"optim.lr={lr!r}", f"seed={seed}"]
        overrides = _merge_overrides(common, cli_train_overrides, grid)
        run_id = make_run_id(label, model, lr, seed, overrides)
        jobs.setdefault(run_id, SweepJob(run_id, label, model, lr, seed, tuple(overrides), runs_dir / run_id))
    return list(jobs.values())


def _quote_for_hydra(value: str) -> str:
    """`value` as a Hydra override value: plain when it can be, else single-quoted. Inside quotes Hydra reads a
    backslash literally except in a run right before a quote, which it halves, so only those runs are doubled."""
    if re.fullmatch(r"[A-Za-z0-9_./\-]+", value):
        return value
    escaped = re.sub(r"(\\*)'", lambda match: match.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda match: match.group(1) * 2, escaped)
    return f"'{escaped}'"


def train_command(job: SweepJob, train_module: str) -> list[str]:
    return [sys.executable, "-m", train_module, *job.overrides,
            f"hydra.run.dir={_quote_for_hydra(str(job.run_dir))}"]


# ----------------------------------------------------------------------------------------------------------------
# Devices and child processes
# ----------------------------------------------------------------------------------------------------------------

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


def _count_setting(sweep_cfg: DictConfig, key: str) -> int | None:
    """sweep.<key> as a whole number of at least 1; None for auto."""
    value = sweep_cfg.get(key, "auto")
    if value in (None, "auto"):
        return None
    try:
        # a bool is an int to Python, and int() would cut 2.5 to 2: neither is what was asked for
        count = None if isinstance(value, bool) or not float(value).is_integer() else int(float(value))
    except (TypeError, ValueError):
        count = None
    if count is None or count < 1:
        raise ValueError(f"sweep.{key}={value!r} must be a whole number of at least 1, or auto")
    return count


def plan_workers(sweep_cfg: DictConfig, n_jobs: int) -> WorkerPlan:
    gpus = visible_gpu_ids(sweep_cfg.get("gpus", "auto"))
    workers, threads = _count_setting(sweep_cfg, "workers"), _count_setting(sweep_cfg, "threads_per_worker")
    # auto: one run per GPU; on CPU one run already uses every core
    count = max(1, min((len(gpus) or 1) if workers is None else workers, max(n_jobs, 1)))
    gpu_of_worker = [gpus[i % len(gpus)] if gpus else None for i in range(count)]
    # auto: split the cores so parallel CPU runs do not oversubscribe each other
    threads = max(1, (os.cpu_count() or 1) // count) if threads is None else threads
    return WorkerPlan(count, gpu_of_worker, threads)


def _child_env(gpu: str | None, threads: int) -> dict[str, str]:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
           "PYTHONUNBUFFERED": "1",
           "HYDRA_FULL_ERROR": "1",  # full traceback in stderr.log, so the recorded error is the real one
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           SWEEP_PID_VARIABLE: str(os.getpid())}  # the run dies with the sweep (bnexp.runs.orphan_guard)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


class SweepStopped(Exception):
    """The sweep is stopping: a run that has not started is not started."""


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.killpg(process.pid, signum)


class TrainingProcesses:
    """The sweep's running training processes. Each starts in a session of its own, so signalling its process
    group reaches whatever the run started too; a terminal's Ctrl-C reaches the sweep alone, which stops them."""

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
            _signal_group(process, signum)


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass
class JobOutcome:
    status: str                     # finished | diverged | failed
    returncode: int | None
    wall_time_s: float
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def _describe_returncode(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _error_headline(stderr_tail: str) -> str:
    """The line of a stderr tail that says what went wrong: the last exception / 'error:' line, else the last."""
    lines = [line.strip() for line in stderr_tail.splitlines() if line.strip()]
    says_what = re.compile(r"(Error|Exception|error:|Killed|Traceback)")
    return next((line for line in reversed(lines) if says_what.search(line)), lines[-1] if lines else "")


def record_failure(job: SweepJob, returncode: int | None, reason: str, stderr_tail: str) -> dict[str, Any]:
    """Merge a failure record into whatever summary.json the run wrote (or create one), atomically.
    The first line of `error` is '<how it ended>: <what went wrong>'; the stderr tail follows."""
    summary = read_summary(job.run_dir) or {}
    summary.setdefault("variant", job.variant)
    if job.model:
        summary.setdefault("model", job.model)
    summary.setdefault("lr", job.lr)
    summary.setdefault("seed", job.seed)
    own_error = summary.get("error") if summary.get("status") == "failed" else None
    if own_error:
        summary["trainer_error"] = own_error  # the trainer's own account, kept verbatim
    headline = first_line(str(own_error).strip()) if own_error else _error_headline(stderr_tail)
    error = (f"{reason}: {headline}" if headline else reason) + (f"\n{stderr_tail}" if stderr_tail else "")
    summary.update(status="failed", error=error, returncode=returncode, sweep_variant=job.variant)
    write_json_atomic(job.run_dir / SUMMARY_FILE, summary)
    return summary


def run_job(job: SweepJob, train_module: str, env: dict[str, str], timeout_s: float | None,
            processes: TrainingProcesses) -> JobOutcome:
    """Run one training subprocess to completion and classify how it ended."""
    # A redo starts from an empty dir: appending to a killed attempt's metrics.jsonl would mix two runs. A dir that
    # a live process still holds (a run left from elsewhere) is not ours to empty.
    if lock_state(job.run_dir) == "held":
        raise RunDirLocked(f"{job.run_dir} is in use by another run ({describe_holder(job.run_dir / LOCK_FILE)})")
    if job.run_dir.exists():
        shutil.rmtree(job.run_dir)
    job.run_dir.mkdir(parents=True)
    command = train_command(job, train_module)
    write_json_atomic(job.run_dir / SWEEP_JOB_FILE,
                      {"run_id": job.run_id, "variant": job.variant, "model": job.model, "lr": job.lr,
                       "seed": job.seed, "overrides": list(job.overrides), "command": command})
    started = time.monotonic()
    timed_out = False
    with open(job.run_dir / "stdout.log", "wb") as stdout, open(job.run_dir / "stderr.log", "wb") as stderr:
        # The thread that starts a run waits for it: the run's die-with-parent signal fires when that thread ends.
        process = processes.start(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env,
                                  cwd=os.getcwd())
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        finally:
            processes.ended(process)
    wall_time = time.monotonic() - started
    returncode = process.returncode

    summary = read_summary(job.run_dir) or {}
    status = summary.get("status")
    if not timed_out and status in COMPLETED_STATUSES:
        # Finished per its own summary; a non-zero exit after that (e.g. in teardown) is only noted.
        return JobOutcome(status, returncode, wall_time, None, summary)
    if timed_out:
        reason = f"timed out after {timeout_s:g} s (sweep.timeout_s)"
    elif returncode == 0:
        reason = f"exited with code 0 but summary.json status is {status or 'missing'}"
    else:
        reason = _describe_returncode(returncode)
    summary = record_failure(job, returncode, reason, _tail(job.run_dir / "stderr.log"))
    return JobOutcome("failed", returncode, wall_time, summary["error"], summary)


# ----------------------------------------------------------------------------------------------------------------
# Bookkeeping: sweep_status.json and runs.csv
# ----------------------------------------------------------------------------------------------------------------

RUN_FIELDS = ["run_id", "status", "variant", "model", "lr", "seed", "returncode", "wall_time_s",
              "final_test_acc", "attempted", "run_dir", "error"]


class SweepLedger:
    """The sweep-level view of every run; only the main thread touches it."""

    def __init__(self, sweep_cfg: DictConfig, jobs: list[SweepJob], out_dir: Path,
                 edge_status: Callable[[], dict] | None = None):
        self.out_dir = out_dir
        self.name = str(sweep_cfg.name)
        self.config = OmegaConf.to_container(sweep_cfg)
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.rows: dict[str, dict[str, Any]] = {}
        self.edge_status = edge_status  # the edge mode's brackets, asked for at each save
        self.add_jobs(jobs)

    def add_jobs(self, jobs: list[SweepJob]) -> None:
        for job in jobs:
            summary = read_summary(job.run_dir) or {}
            status = run_status(job.run_dir, summary)
            self.rows[job.run_id] = {
                # a stale 'running'/'failed' from an earlier sweep is 'pending' until this sweep redoes it
                "run_id": job.run_id, "status": status if status in COMPLETED_STATUSES else "pending",
                "previous_status": None if status in COMPLETED_STATUSES else status, "variant": job.variant,
                "model": job.model, "lr": job.lr, "seed": job.seed, "returncode": summary.get("returncode"),
                "wall_time_s": summary.get("wall_time_s"), "final_test_acc": summary.get("final_test_acc"),
                "attempted": False, "run_dir": str(job.run_dir), "error": summary.get("error"),
                "overrides": list(job.overrides),
            }

    def mark_running(self, run_id: str, worker: int, gpu: str | None) -> None:
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

    def save(self, state: str) -> None:
        write_json_atomic(self.out_dir / STATUS_FILE, {
            "sweep": self.name, "state": state, "started_at": self.started_at,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "counts": self.counts(),
            "config": self.config, **({"edge": self.edge_status()} if self.edge_status else {}),
            "runs": list(self.rows.values())})
        with atomic_write(self.out_dir / RUNS_CSV, newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=RUN_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({**row, "error": first_line(row.get("error"))} for row in self.rows.values())


# ----------------------------------------------------------------------------------------------------------------
# Scheduling
# ----------------------------------------------------------------------------------------------------------------

def _progress_text(ledger: SweepLedger, skipped: int) -> str:
    counts = ledger.counts()
    return (f"done={counts['finished'] + counts['diverged']} (diverged={counts['diverged']}, skipped={skipped}) "
            f"running={counts['running']} failed={counts['failed']}")


class SweepLockedError(RuntimeError):
    pass


def _lock_sweep_dir(out_dir: Path):
    """An exclusive lock on <out_dir>/sweep.lock: two sweeps on one dir would redo each other's running runs.
    flock is released by the kernel when the process dies, so a killed sweep never leaves a stale lock."""
    handle = take_lock(out_dir / SWEEP_LOCK_FILE, patience_s=0.0)
    if handle is None:
        raise SweepLockedError(f"another sweep ({describe_holder(out_dir / SWEEP_LOCK_FILE)}) is running in "
                               f"{out_dir}; wait for it or stop it")
    return handle


def run_sweep(sweep_cfg: DictConfig, cli_train_overrides: list[str], dry_run: bool = False) -> int:
    """Run (or resume) the sweep; returns the process exit code."""
    planner = plan = None
    if sweep_mode(sweep_cfg) == "edge":
        planner = EdgePlanner(sweep_cfg, cli_train_overrides, one_at_a_time=False, build_jobs=build_jobs)
        plan = plan_workers(sweep_cfg, len(planner.searches) * len(sweep_cfg.seeds))
        # one worker runs an lr's seeds one at a time, so that an lr whose first seed fails costs one run
        planner.one_at_a_time = plan.count == 1

    def jobs_and_pending() -> tuple[list[SweepJob], list[SweepJob]]:
        """The jobs (edge mode: those known and the first round) and those not finished/diverged yet."""
        jobs = planner.known_jobs() + planner.next_jobs() if planner else build_jobs(sweep_cfg, cli_train_overrides)
        return jobs, [job for job in jobs if run_status(job.run_dir) not in COMPLETED_STATUSES]

    out_dir = Path(sweep_cfg.out_dir).resolve()
    train_module = str(sweep_cfg.get("train_module") or "bnexp.train")
    jobs, pending = jobs_and_pending()
    skipped = len(jobs) - len(pending)

    if dry_run:
        for job in jobs:
            state = "pending" if job in pending else "done (skip)"
            print(f"[{state}] {' '.join(train_command(job, train_module))}")
        if planner is not None:
            print(f"{planner.describe_settings()}; so far:")
            _print_brackets(planner)
            print(f"edge mode: {len(pending)} run(s) in the first round, {skipped} known; later rounds depend on "
                  f"their outcomes; out_dir={out_dir}")
        else:
            print(f"{len(jobs)} runs, {len(pending)} to run, {skipped} already done; out_dir={out_dir}")
        return 0

    out_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_sweep_dir(out_dir)  # noqa: F841  (held until this process exits)
    # Job statuses are read after taking the lock: another sweep may have just finished some of them.
    jobs, pending = jobs_and_pending()
    skipped = len(jobs) - len(pending)
    # before the status file is first written: a bad sweep.workers must not leave it saying "running"
    plan = plan or plan_workers(sweep_cfg, len(pending))  # the edge mode's plan is made above
    ledger = SweepLedger(sweep_cfg, jobs, out_dir, edge_status=planner.status if planner else None)
    ledger.save("running")
    timeout_s = sweep_cfg.get("timeout_s")
    devices = ", ".join(f"GPU {g}" for g in plan.gpu_of_worker) if plan.gpu_of_worker[0] is not None \
        else f"CPU, {plan.threads_per_worker} thread(s) each"
    redone = Counter(row["previous_status"] for row in ledger.rows.values()
                     if row["status"] == "pending" and row["previous_status"] != "missing")
    redoing = f"; redoing {', '.join(f'{n} {status}' for status, n in sorted(redone.items()))}" if redone else ""
    if planner is None:
        print(f"sweep {ledger.name}: {len(jobs)} runs ({skipped} already finished/diverged, {len(pending)} to run"
              f"{redoing}) with {plan.count} worker(s) [{devices}] -> {out_dir}", flush=True)
    else:
        print(f"sweep {ledger.name} (edge mode): {len(planner.searches)} searches, {skipped} runs already "
              f"finished/diverged, {len(pending)} to run first{redoing}, with {plan.count} worker(s) [{devices}] -> "
              f"{out_dir}\n{planner.describe_settings()}", flush=True)

    envs = [_child_env(gpu, plan.threads_per_worker) for gpu in plan.gpu_of_worker]
    processes = TrainingProcesses()
    # Each pool thread is one worker for the whole sweep, with its own slot (GPU and environment).
    slots, thread_slot = itertools.count(), threading.local()
    started_on: dict[str, int] = {}  # run id -> worker slot; written by workers, read by this thread

    def take_slot() -> None:
        thread_slot.index = next(slots)

    def run_on_worker(job: SweepJob) -> JobOutcome | None:
        """None: the sweep stopped before the run started."""
        if processes.stopping:
            return None
        started_on[job.run_id] = thread_slot.index
        try:
            return run_job(job, train_module, envs[thread_slot.index], timeout_s, processes)
        except SweepStopped:
            return None
        except Exception as error:  # the runner's own failure (e.g. disk full) fails this run, not the sweep
            return JobOutcome("failed", None, 0.0, f"sweep runner error: {error!r}")

    # In a log file (no tty) every redraw is a new line, so redraw rarely there.
    bar = tqdm(total=len(pending), unit="run", desc=ledger.name, dynamic_ncols=True, file=sys.stderr,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, smoothing=0.1)
    bar.set_postfix_str(_progress_text(ledger, skipped), refresh=False)

    def note_started() -> bool:
        newly = [(run_id, slot) for run_id, slot in list(started_on.items())  # list(): workers add to it
                 if ledger.rows[run_id]["status"] == "pending"]
        for run_id, slot in newly:
            ledger.mark_running(run_id, slot, plan.gpu_of_worker[slot])
        return bool(newly)

    recorded: set[Future] = set()

    def note_done(future: Future) -> None:
        recorded.add(future)
        job, outcome = futures[future], (None if future.cancelled() else future.result())
        if outcome is None:
            return
        ledger.mark_done(job, outcome)  # marked running already: note_started() runs first, after the run ended
        accuracy = outcome.summary.get("final_test_acc")
        detail = f" test_acc={accuracy:.4f}" if isinstance(accuracy, (int, float)) else ""
        if outcome.status == "failed":
            detail = f" ({first_line(outcome.error, 'no error text')})"
            if planner is not None and not processes.stopping:  # a run the sweep stopped tells nothing
                planner.failed_here.add(job.run_id)
        bar.write(f"{outcome.status:>8}: {job.describe()}{detail} [{outcome.wall_time_s:.1f}s] {job.run_dir}")
        # before update(): update() redraws, and the line should show the counts of this run
        bar.set_postfix_str(_progress_text(ledger, skipped), refresh=False)
        bar.update(1)

    def plan_more() -> None:
        """Edge mode: start the runs the searches need now, given what has finished."""
        for search, bracket in planner.newly_done():
            bar.write(f"    edge: {search.describe()}: {bracket.describe()}")
        in_flight = [futures[future] for future in futures if future not in recorded]
        # a run is started once per sweep: one that ended here has an outcome, so asking again would be a loop
        ran_here = {job.run_id for job in futures.values()}
        more = [job for job in planner.next_jobs(in_flight) if job.run_id not in ran_here]
        if more:
            ledger.add_jobs(more)
            bar.total += len(more)
            bar.refresh()
            for job in more:
                futures[pool.submit(run_on_worker, job)] = job

    pool = ThreadPoolExecutor(max_workers=plan.count, thread_name_prefix="sweep-worker", initializer=take_slot)
    futures = {pool.submit(run_on_worker, job): job for job in pending}
    interrupted = False
    try:
        if planner is not None:
            plan_more()  # announces the searches that are done already
        while len(recorded) < len(futures):
            done, _ = wait(set(futures) - recorded, timeout=0.5, return_when=FIRST_COMPLETED)
            started = note_started()
            for future in done:
                note_done(future)
            if planner is not None and done and not processes.stopping:
                plan_more()
            if started or done:
                bar.set_postfix_str(_progress_text(ledger, skipped), refresh=False)
                ledger.save("running")
    except KeyboardInterrupt:
        interrupted = True
        bar.write("interrupted: stopping running training processes ...")
        pool.shutdown(wait=False, cancel_futures=True)
        processes.stop(signal.SIGTERM)
        # a queued run cancelled by shutdown never reaches a worker, so wait() would never count it done
        started_runs = [future for future in futures if not future.cancelled()]
        if wait(started_runs, timeout=60).not_done:  # a run that ignores SIGTERM
            processes.stop(signal.SIGKILL)
            wait(started_runs, timeout=30)
        note_started()
        for future in futures:  # record whatever the workers reported while stopping
            if future.done() and future not in recorded:
                note_done(future)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()

    for row in ledger.rows.values():
        if row["status"] == "running":  # only possible after an interrupt
            row.update(status="failed", error="sweep interrupted before the run ended")
    ledger.save("interrupted" if interrupted else "done")

    failures = ledger.failures()
    counts = ledger.counts()
    print(f"sweep {ledger.name}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
          + f" -> {out_dir / STATUS_FILE}")
    if planner is not None:
        _print_brackets(planner)
    if failures:
        print(f"{len(failures)} run(s) did not finish; re-run the same command to redo only these:",
              file=sys.stderr)
        for row in failures:
            error_line = ("not started (sweep interrupted)" if row["status"] == "pending"
                          else first_line(row.get("error"), row["status"]))
            print(f"  - {row['run_id']}: {error_line}\n    see {row['run_dir']}/stderr.log", file=sys.stderr)
        return 130 if interrupted else 1
    return 0


def _print_brackets(planner: EdgePlanner) -> None:
    for search, bracket in planner.brackets().items():
        print(f"  {search.describe()}: {bracket.describe()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnexp.sweep",
        description="Run a grid of bnexp.train runs. Overrides whose key starts with 'sweep' change the sweep "
                    "config (conf/sweep/<name>.yaml); all others are passed to every training run.",
        epilog="example: python -m bnexp.sweep sweep=smoke sweep.workers=2 data=synthetic train.epochs=1")
    parser.add_argument("overrides", nargs="*", help="sweep=<name>, sweep.<key>=<value>, or train overrides")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the commands and exit (edge mode: the first round)")
    parser.add_argument("--print-config", action="store_true", help="print the composed sweep config and exit")
    args = parser.parse_intermixed_args(argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # SIGTERM (e.g. a batch system stopping the job) takes the same orderly path as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        sweep_overrides, train_overrides = split_cli_overrides(args.overrides)
        sweep_cfg = compose_sweep_config(sweep_overrides)
        if args.print_config:
            print(OmegaConf.to_yaml(sweep_cfg))
            return 0
        return run_sweep(sweep_cfg, train_overrides, dry_run=args.dry_run)
    except (HydraException, OmegaConfBaseException, ValueError, SweepLockedError) as error:
        # Configuration mistakes: a clear message beats a traceback.
        print(f"bnexp.sweep: error: {error}", file=sys.stderr)
        return 2

