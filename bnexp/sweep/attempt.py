"""One attempt at a run of the sweep: its run dir made ready, and how it ended, judged from its summary.json and its
process's exit, with a failure merged into its summary.json so that the run dir tells what went wrong.
"""
from __future__ import annotations

import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnexp.runs.fileio import write_json_atomic
from bnexp.runs.files import COMPLETED_STATUSES, SUMMARY_FILE, SWEEP_JOB_FILE, first_line, read_summary
from bnexp.runs.lock import LOCK_FILE, RunDirLocked, describe_holder, lock_state
from bnexp.sweep.grid import SweepJob
from bnexp.sweep.processes import STDERR_LOG, ProcessResult

STDERR_TAIL_LINES = 25


@dataclass
class JobOutcome:
    status: str                     # finished | diverged | failed
    returncode: int | None
    wall_time_s: float
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    log: Path | None = None         # the stderr log of what ran; None when nothing did (the run never started)


def prepare_run_dir(job: SweepJob, command: list[str], job_id: str | None = None) -> None:
    """An empty run dir holding the sweep's record of the job (with the id of the submitted job that runs it, when
    one does). A redo starts from an empty dir: appending to a killed attempt's metrics.jsonl would mix two runs. A
    dir that a live process still holds (a run left from elsewhere) is not ours to empty: RunDirLocked."""
    if lock_state(job.run_dir) == "held":
        raise RunDirLocked(f"{job.run_dir} is in use by another run ({describe_holder(job.run_dir / LOCK_FILE)})")
    if job.run_dir.exists():
        shutil.rmtree(job.run_dir)
    job.run_dir.mkdir(parents=True)
    write_json_atomic(job.run_dir / SWEEP_JOB_FILE,
                      {"run_id": job.run_id, "variant": job.variant, "model": job.model, "lr": job.lr,
                       "seed": job.seed, "overrides": list(job.overrides), "command": command,
                       **({"role": job.role} if job.role else {}), **({"tuning": job.tuning} if job.tuning else {}),
                       **({"job_id": job_id} if job_id is not None else {})})


def tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def describe_returncode(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def error_headline(stderr_tail: str) -> str:
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
    headline = first_line(str(own_error).strip()) if own_error else error_headline(stderr_tail)
    error = (f"{reason}: {headline}" if headline else reason) + (f"\n{stderr_tail}" if stderr_tail else "")
    summary.update(status="failed", error=error, returncode=returncode, sweep_variant=job.variant)
    write_json_atomic(job.run_dir / SUMMARY_FILE, summary)
    return summary


def judge(job: SweepJob, result: ProcessResult, timeout_s: float | None) -> JobOutcome:
    """How a run whose process ended went: finished or diverged per its own summary.json, else failed, with the
    reason recorded in its summary.json."""
    summary = read_summary(job.run_dir) or {}
    status = summary.get("status")
    if not result.timed_out and status in COMPLETED_STATUSES:
        # Finished per its own summary; a non-zero exit after that (e.g. in teardown) is only noted.
        return JobOutcome(status, result.returncode, result.wall_time_s, None, summary, job.run_dir / STDERR_LOG)
    if result.timed_out:
        reason = f"timed out after {timeout_s:g} s (sweep.timeout_s)"
    elif result.returncode == 0:
        reason = f"exited with code 0 but summary.json status is {status or 'missing'}"
    else:
        reason = describe_returncode(result.returncode)
    summary = record_failure(job, result.returncode, reason, tail(job.run_dir / STDERR_LOG))
    return JobOutcome("failed", result.returncode, result.wall_time_s, summary["error"], summary,
                      job.run_dir / STDERR_LOG)
