"""Runs as jobs submitted through submitit: on SLURM (`sweep.executor=slurm`: one job per run, or a job array per
batch of runs), or through submitit's local executor on the machine the sweep runs on (`sweep.executor=submitit_local`: the same
path, start to end, without a cluster). The resources come from the sweep config's `slurm` node
(conf/sweep/slurm/default.yaml), mapped to submitit's parameters as Hydra's submitit launcher maps them.

A job runs `run_in_job`: it empties the run dir, writes its own job id into the sweep's record there, and runs the
training process as a local worker does (stdout.log, stderr.log, sweep.timeout_s). The sweep learns that a run
started from that record, and how it ended from submitit's result (the process's exit) and the run dir, judged as
for a local run. Stopping the sweep (Ctrl-C, SIGTERM) cancels its queued and running jobs; a job asked to stop stops
its run first, so the run records the signal. A sweep killed outright leaves its jobs to the cluster: the next sweep
on the same out_dir follows those still queued or running (their ids are in sweep_status.json) instead of
submitting them again.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from bnexp.config.sweep_schema import SLURM_START_MARGIN_S
from bnexp.runs.fileio import read_json
from bnexp.runs.files import SWEEP_JOB_FILE
from bnexp.runs.orphan_guard import SWEEP_PID_VARIABLE
from bnexp.sweep.attempt import JobOutcome, error_headline, judge, prepare_run_dir, record_failure, tail
from bnexp.sweep.executors import STOP_PATIENCE_S, Launch
from bnexp.sweep.grid import SweepJob, train_command
from bnexp.sweep.processes import (
    STDERR_LOG,
    ProcessResult,
    TrainingProcesses,
    WorkerPlan,
    run_environment,
    run_training_process,
)

SUBMITIT_DIR = ".submitit"  # <out_dir>/.submitit/<job id>/: the sbatch script, the pickled call, the job's own logs
# Generic submitit parameters; every other key of the slurm node is SLURM's own (slurm_<key> for AutoExecutor).
GENERIC_KEYS = ("gpus_per_node", "cpus_per_task", "mem_gb")
SLURM_KEYS = ("partition", "account", "qos", "array_parallelism", "setup", "additional_parameters")
# a job the cluster reports ended may take this long to show its result file on a shared file system
RESULT_PATIENCE_S = 30.0
# the SLURM states in which a job will still run, or runs
LIVE_SLURM_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED")


def time_limit_min(sweep_cfg: Mapping) -> int:
    """A job's time limit: sweep.slurm.timeout_min, else the run's sweep.timeout_s and the time a job takes to
    start and stop around it, else an hour."""
    given = sweep_cfg["slurm"].get("timeout_min")
    if given is not None:
        return int(given)
    timeout_s = sweep_cfg.get("timeout_s")
    return 60 if timeout_s is None else math.ceil((timeout_s + SLURM_START_MARGIN_S) / 60)


def submitit_parameters(sweep_cfg: Mapping) -> dict[str, Any]:
    """AutoExecutor.update_parameters(...) for the sweep config's slurm node: submitit's generic names plain, SLURM's
    own prefixed with slurm_ (the mapping Hydra's submitit launcher applies to conf/hydra/launcher/bnexp_slurm.yaml).
    One run is one process: one node, one task."""
    slurm = OmegaConf.to_container(sweep_cfg["slurm"]) if isinstance(sweep_cfg["slurm"], DictConfig) \
        else dict(sweep_cfg["slurm"])
    # a key left out is not asked for: no GPU is no --gpus-per-node line, which some clusters refuse at 0
    parameters = {"name": f"bnexp-{sweep_cfg['name']}", "timeout_min": time_limit_min(sweep_cfg), "nodes": 1,
                  "tasks_per_node": 1, **{key: slurm[key] for key in GENERIC_KEYS if slurm.get(key)}}
    parameters.update({f"slurm_{key}": slurm[key] for key in SLURM_KEYS if slurm.get(key) not in (None, [], {})})
    return parameters


def make_submitit_executor(kind: str, folder: Path, sweep_cfg: Mapping):
    """The submitit executor for `kind` (slurm or submitit_local), its parameters set from the sweep config."""
    import submitit

    # no requeue on a time-out: a run is not checkpointable, a second attempt would start it from scratch
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm" if kind == "slurm" else "local",
                                     slurm_max_num_timeout=0, local_max_num_timeout=0)
    parameters = submitit_parameters(sweep_cfg)
    if kind != "slurm":
        # GPUs are handed out per worker slot (CUDA_VISIBLE_DEVICES in the run's environment), as the local
        # executor does; submitit's local executor would give every job the first ones
        parameters["gpus_per_node"] = 0
    executor.update_parameters(**parameters)
    return executor


def run_in_job(job: SweepJob, command: list[str], env: Mapping[str, str], cwd: str,
               timeout_s: float | None) -> ProcessResult:
    """What a submitted job executes: the run, as a local worker runs it, in the job's environment plus `env`.
    The run ends with the job (it names the job's process as its sweep: bnexp.runs.orphan_guard), and SIGINT or
    SIGTERM to the job (a cancel) passes SIGTERM on to the run and waits for it to end."""
    import submitit

    prepare_run_dir(job, command, job_id=submitit.JobEnvironment().job_id)
    processes = TrainingProcesses()
    for signum in (signal.SIGINT, signal.SIGTERM):  # submitit itself ignores SIGTERM in a job
        signal.signal(signum, lambda received, frame: processes.stop(signal.SIGTERM))
    run_env = {**os.environ, **env, SWEEP_PID_VARIABLE: str(os.getpid())}
    return run_training_process(command, job.run_dir, run_env, cwd, timeout_s, processes)


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C and SIGTERM wait until the jobs just submitted are on the books, then stop the sweep as usual: a job
    submitted but not recorded could not be cancelled. (Handlers, not a signal mask: a mask is per thread, and a
    process-directed signal would go to another thread; a started process resets caught signals to default.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            raise KeyboardInterrupt


class _AdoptedLocalJob:
    """A job of submitit's local executor that an earlier sweep submitted: known by its controller's pid alone,
    so it has ended when that process has."""

    def __init__(self, folder: Path, job_id: str):
        import submitit

        self.job_id = job_id
        self._job = submitit.LocalJob(folder=folder, job_id=job_id)
        self.paths = self._job.paths

    def done(self) -> bool:
        return not _is_local_controller(self.job_id)

    def result(self):
        return self._job.result()

    def cancel(self, check: bool = False) -> None:
        if not self.done():
            os.kill(int(self.job_id), signal.SIGINT)

    @property
    def state(self) -> str:
        return "FINISHED" if self.done() else "RUNNING"


def _is_local_controller(job_id: str) -> bool:
    """Whether `job_id` is the pid of a live controller of submitit's local executor (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{int(job_id)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"submitit.local._local" in cmdline


class SubmititExecutor:
    """The sweep's runs as submitit jobs, at most `capacity` at once (SLURM throttles a job array itself)."""

    def __init__(self, kind: str, sweep_cfg: DictConfig, plan: WorkerPlan | None,
                 previous_job_ids: Mapping[str, str] | None = None):
        self.kind = kind
        self.timeout_s = sweep_cfg.timeout_s
        self.train_module = sweep_cfg.train_module
        self.cwd = os.getcwd()
        self.folder = Path(sweep_cfg.out_dir).resolve() / SUBMITIT_DIR / "%j"
        slurm = sweep_cfg.slurm
        self.arrays = kind == "slurm" and bool(slurm.job_arrays)
        self.plan = plan
        self.cpus_per_task = int(slurm.cpus_per_task)
        self.capacity = int(slurm.array_parallelism) if kind == "slurm" else plan.count
        self.describe_resources = (
            f"{'job arrays' if self.arrays else 'one job per run'}, partition {slurm.partition or '(default)'}, "
            f"{slurm.gpus_per_node} GPU(s) and {slurm.cpus_per_task} CPU(s) per run, "
            f"{time_limit_min(sweep_cfg)} min each, at most {self.capacity} at once")
        # the job's python unpickles run_in_job from this checkout, and a job starts with the sweep's environment
        os.environ["PYTHONPATH"] = run_environment(None, None)["PYTHONPATH"]
        self._executor = make_submitit_executor(kind, self.folder, sweep_cfg)
        self._previous = dict(previous_job_ids or {})
        self._adopted: dict[str, Any] = {}  # run id -> a live job of an earlier sweep, to follow
        self._queue: list[Launch] = []
        self._jobs: dict[Launch, Any] = {}  # submitted and not ended -> submitit job
        self._ended_at: dict[Launch, float] = {}
        self._slot_of: dict[Launch, int] = {}
        # submitit_local: worker slots, each with its GPU and threads, as the local executor has (SLURM places runs)
        self._free_slots = list(range(self.capacity)) if kind != "slurm" else []
        self.stopping = False

    def describe(self) -> str:
        if self.kind == "slurm":
            return f"as SLURM jobs ({self.describe_resources})"
        return f"through submitit's local executor with {self.plan.count} worker(s) [{self.plan.describe()}]"

    # --- an earlier sweep's jobs -------------------------------------------------------------------------------

    def adopt(self, jobs: list[SweepJob]) -> dict[str, str]:
        """Run id -> job id of the runs among `jobs` whose job from an earlier sweep is still queued or running:
        the sweep follows those jobs instead of submitting new ones."""
        for job in jobs:
            job_id = self._previous.pop(job.run_id, None)
            live = job_id and self._live_job(job_id)
            if live:
                self._adopted[job.run_id] = live
        return {run_id: job.job_id for run_id, job in self._adopted.items()}

    def _live_job(self, job_id: str):
        if self.kind != "slurm":
            return _AdoptedLocalJob(self.folder, job_id) if _is_local_controller(job_id) else None
        import submitit

        job = submitit.SlurmJob(folder=self.folder, job_id=job_id)
        return job if job.state.split(" ")[0] in LIVE_SLURM_STATES else None

    # --- submitting --------------------------------------------------------------------------------------------

    def submit(self, jobs: list[SweepJob]) -> list[Launch]:
        launches = [Launch(job) for job in jobs]
        self._queue.extend(launches)
        self._dispatch()
        return launches

    def _run_env(self, slot: int | None) -> dict[str, str]:
        if self.kind == "slurm":  # SLURM hands out the GPUs; the run's threads are its CPUs
            return run_environment(None, self.cpus_per_task)
        return run_environment(self.plan.gpu_of_worker[slot or 0], self.plan.threads_per_worker)

    def _dispatch(self) -> None:
        """Submit what is queued, as far as the capacity allows (an array takes the whole queue: SLURM throttles it
        to array_parallelism)."""
        if self.stopping:
            return
        for launch in [launch for launch in self._queue if launch.job.run_id in self._adopted]:
            self._queue.remove(launch)
            self._follow(launch, self._adopted.pop(launch.job.run_id))
        room = len(self._queue) if self.arrays else max(0, self.capacity - len(self._jobs))
        batch, self._queue = self._queue[:room], self._queue[room:]
        if not batch:
            return
        slots = [self._free_slots.pop(0) if self._free_slots else None for _ in batch]
        for launch, slot in zip(batch, slots):
            if slot is not None:
                self._slot_of[launch] = slot
                launch.worker, launch.gpu = slot, self.plan.gpu_of_worker[slot]
        calls = [(launch.job, train_command(launch.job, self.train_module), self._run_env(slot), self.cwd,
                  self.timeout_s) for launch, slot in zip(batch, slots)]
        try:
            with _interrupts_deferred():
                if self.arrays:
                    with self._executor.batch():
                        submitted = [self._executor.submit(run_in_job, *call) for call in calls]
                    for launch, job in zip(batch, submitted):
                        self._follow(launch, job)
                else:
                    for launch, call in zip(batch, calls):
                        self._follow(launch, self._executor.submit(run_in_job, *call))
        except Exception as error:  # sbatch refused them (e.g. an unknown partition): these runs fail, with why
            for launch in batch:
                if launch not in self._jobs:
                    launch.outcome = JobOutcome("failed", None, 0.0, f"submitting the {self.kind} job failed: "
                                                                     f"{error_headline(str(error)) or repr(error)}")
                    self._jobs[launch] = None

    def _follow(self, launch: Launch, job) -> None:
        launch.job_id = job.job_id
        self._jobs[launch] = job

    # --- following ---------------------------------------------------------------------------------------------

    def _started(self, launch: Launch) -> bool:
        """The job has reached the run: the run dir's record names the job."""
        record = read_json(launch.job.run_dir / SWEEP_JOB_FILE) or {}
        return record.get("job_id") == launch.job_id

    def _poll(self) -> list[Launch]:
        ended = []
        for launch, job in list(self._jobs.items()):
            if job is None:  # its submission failed
                ended.append(launch)
                continue
            if not launch.started and self._started(launch):
                launch.started = True
            if not job.done():
                continue
            outcome = self._outcome(launch, job)
            if outcome is _NOT_YET:
                continue
            launch.started = launch.started or self._started(launch)
            launch.outcome = outcome
            ended.append(launch)
        for launch in ended:
            del self._jobs[launch]
            self._ended_at.pop(launch, None)
            if launch in self._slot_of:
                self._free_slots.append(self._slot_of.pop(launch))
        self._dispatch()
        return ended

    def _outcome(self, launch: Launch, job):
        """The run's outcome once its job has ended; _NOT_YET while its result file may still be on its way."""
        from submitit.core.utils import FailedJobError

        if job.paths.result_pickle.exists():
            try:
                result = job.result()
            except FailedJobError as error:  # run_in_job raised: the run could not start (e.g. its dir is held)
                return JobOutcome("failed", None, 0.0, f"{self.kind} job {job.job_id} could not run: "
                                                       f"{_raised(str(error))}", log=job.paths.stderr)
            return judge(launch.job, result, self.timeout_s)
        started = self._started(launch)
        if not started and self.stopping:
            return None  # cancelled before it began: the run is still to do
        patience = RESULT_PATIENCE_S if self.kind == "slurm" else 0.0
        first_seen = self._ended_at.setdefault(launch, time.monotonic())
        if time.monotonic() - first_seen < patience:
            return _NOT_YET
        reason = f"{self.kind} job {job.job_id} ended without a result (state {job.state})"
        if not started:
            return JobOutcome("failed", None, 0.0, f"{reason}: {error_headline(tail(job.paths.stderr))}".rstrip(": "),
                              log=job.paths.stderr)
        summary = record_failure(launch.job, None, reason, tail(launch.job.run_dir / STDERR_LOG))
        return JobOutcome("failed", None, 0.0, summary["error"], summary, log=launch.job.run_dir / STDERR_LOG)

    def wait(self, timeout: float) -> list[Launch]:
        """The runs that ended, looking again after `timeout` s when none has."""
        ended = self._poll()
        if not ended:
            time.sleep(timeout)
            ended = self._poll()
        return ended

    def stop(self) -> list[Launch]:
        """Submit nothing more, cancel the queued and running jobs, and return every run that has ended within
        STOP_PATIENCE_S (one that never started has no outcome)."""
        self.stopping = True
        ended, self._queue = self._queue, []
        for job in [*self._jobs.values(), *self._adopted.values()]:
            if job is not None:
                job.cancel(check=False)
        self._adopted.clear()
        deadline = time.monotonic() + STOP_PATIENCE_S
        while self._jobs and time.monotonic() < deadline:
            submitted = [job for job in self._jobs.values() if job is not None]
            if self.kind == "slurm" and submitted:  # ask the cluster now, once for all, not at submitit's pace
                submitted[0].watcher.update()
            ended += self._poll()
            time.sleep(0.5)
        return ended

    def close(self) -> None:
        pass


_NOT_YET = object()


def _raised(failure: str) -> str:
    """The exception line of the traceback that submitit's FailedJobError quotes between two dashed lines."""
    parts = failure.split("-" * 22)
    trace = parts[1] if len(parts) > 2 else failure
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    return lines[-1] if lines else failure.strip()
