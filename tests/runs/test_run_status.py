"""What a re-run of a sweep takes as done: each state a run dir can be in, as `run_status` reads it for the resume
(and for the report and the sweep's status)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnexp.runs.files import run_status
from bnexp.runs.lock import RunDirLock


def write_summary(run_dir: Path, status) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": status}))
    return run_dir


@pytest.mark.parametrize("status", ["finished", "diverged", "failed"])
def test_an_ended_run_is_what_its_summary_says(status, tmp_path):
    assert run_status(write_summary(tmp_path, status)) == status


@pytest.mark.parametrize("status", ["", 3, None, ["finished"]])
def test_a_summary_without_a_status_word_is_missing(status, tmp_path):
    assert run_status(write_summary(tmp_path, status)) == "missing"
    assert run_status(tmp_path / "never_started") == "missing"


def test_a_running_summary_is_decided_by_its_lock(tmp_path):
    run_dir = write_summary(tmp_path, "running")
    assert run_status(run_dir) == "incomplete"  # no lock file: nothing to ask
    with RunDirLock(run_dir):
        assert run_status(run_dir) == "running"  # a live process holds it
    assert run_status(run_dir) == "killed"  # the lock file is left, nobody holds it
