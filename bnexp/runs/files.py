"""Reading the files of a run directory (summary.json, metrics.jsonl, config.yaml; see README "Outputs").

Shared by the sweep runner (which asks how each run ended) and the report (which reads everything back). Readers
are tolerant: a killed run can leave a half-written metrics line or no summary at all.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from bnexp.runs.fileio import read_json
from bnexp.runs.lock import LOCK_FILE, lock_state

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILES = ("config.yaml", ".hydra/config.yaml")  # trainer's resolved copy first, Hydra's as fallback
SWEEP_JOB_FILE = "sweep_job.json"  # bnexp.sweep's record of a job: marks its run dir even before a config exists

# Terminal statuses that a resumed sweep does not redo.
COMPLETED_STATUSES = ("finished", "diverged")
# What run_status can say. `killed`: summary.json still says running but no process holds the run dir's lock, so
# the run died without writing its end (SIGKILL, out of memory). `incomplete`: it says running and there is no
# lock file to ask (a run from a bnexp before the lock, or another program), so it cannot be told from a live run.
RUN_STATUSES = ("finished", "diverged", "failed", "running", "killed", "incomplete", "missing")


def first_line(text: str | None, default: str = "") -> str:
    """The first line of an error text (tables and progress lines show one line per run), or `default`."""
    return text.splitlines()[0] if text else default


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(run_dir) / SUMMARY_FILE)


def run_status(run_dir: Path, summary: dict[str, Any] | None = None) -> str:
    """What became of the run, one of RUN_STATUSES (or the summary's own word when it is not one of them).

    The one place that decides whether a `running` summary belongs to a live process: the report, the sweep's
    status and its resume all ask here. `summary`: the caller's copy of summary.json, to save a read."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir) if summary is None else summary
    status = (summary or {}).get("status")
    if not isinstance(status, str) or not status:
        return "missing"
    if status != "running":
        return status
    lock = lock_state(run_dir)
    if lock == "held":
        return "running"
    if lock == "none":
        return "incomplete"
    # The lock is free: the run may have written its end and let go between our two looks, so read again.
    again = read_summary(run_dir) or {}
    return again["status"] if again.get("status") not in (None, "running") else "killed"


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config as a plain dict ({} when neither config file is readable)."""
    for name in CONFIG_FILES:
        try:
            loaded = yaml.safe_load((Path(run_dir) / name).read_text())
        except (OSError, ValueError, yaml.YAMLError):  # missing or unreadable; ValueError: bytes that are not UTF-8
            continue
        if isinstance(loaded, dict):
            return loaded
    return {}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of metrics.jsonl; skips blank or truncated lines (a killed run can leave one)."""
    records: list[Any] = []
    try:
        with open(Path(run_dir) / METRICS_FILE, errors="replace") as handle:  # a damaged byte spoils its line only
            for line in filter(str.strip, handle):
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
    except OSError:
        return []
    return [record for record in records if isinstance(record, dict)]


def is_run_dir(path: Path) -> bool:
    """summary.json plus a config, or plus the sweep's job record (a sweep run whose trainer died before Hydra
    wrote its config is still a run), or plus the trainer's lock file."""
    path = Path(path)
    return (path / SUMMARY_FILE).is_file() and any((path / name).is_file()
                                                   for name in (*CONFIG_FILES, SWEEP_JOB_FILE, LOCK_FILE))


def find_run_dirs(roots: Iterable[Path]) -> list[Path]:
    """Every run dir at or below the given roots (sweep dirs, Hydra multirun dirs, single runs), deduplicated."""
    found = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):  # root itself first; nothing when it is not a dir
            dirnames[:] = sorted(d for d in dirnames if d != ".hydra" and not d.startswith(".tmp"))
            if SUMMARY_FILE in filenames and is_run_dir(Path(dirpath)):
                dirnames[:] = []  # a run dir does not contain other runs
                found.add(Path(dirpath).resolve())
    return sorted(found)


def as_float(value: Any) -> float | None:
    """A finite or infinite float, or None for missing / non-numeric / NaN values."""
    if isinstance(value, bool):  # None and other non-numbers fail float() below
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
