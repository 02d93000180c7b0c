"""bnexp.runs.fileio: atomic writes (ordinary permissions, nothing left behind) and JSON-safe values."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bnexp.runs.fileio import atomic_write, json_safe, write_json_atomic
from bnexp.train.sinks import LocalSink


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def temporaries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def file_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_written_files_get_the_mode_open_would_give(tmp_path: Path, umask):
    umask(0o022)
    write_json_atomic(tmp_path / "summary.json", {"status": "finished"})
    with atomic_write(tmp_path / "cache.npz", "wb") as handle:
        np.savez(handle, values=np.arange(3))
    (tmp_path / "plain.txt").write_text("as open() makes it")
    assert file_mode(tmp_path / "summary.json") == file_mode(tmp_path / "plain.txt") == 0o644
    assert file_mode(tmp_path / "cache.npz") == 0o644
    assert np.load(tmp_path / "cache.npz")["values"].tolist() == [0, 1, 2]
    umask(0o077)  # a user who keeps files private gets private files
    write_json_atomic(tmp_path / "summary.json", {"status": "finished"})
    assert file_mode(tmp_path / "summary.json") == 0o600
    assert temporaries(tmp_path) == []


def test_local_sink_summary_is_readable_by_others(tmp_path: Path, umask):
    umask(0o022)
    sink = LocalSink(tmp_path / "run", "seed: 0\n", {"status": "running", "loss": float("nan")})
    sink.finish({"status": "finished", "loss": float("inf"), "init_grad_norms": {"conv": float("nan")}})
    assert file_mode(tmp_path / "run" / "summary.json") == 0o644
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {
        "status": "finished", "loss": None, "init_grad_norms": {"conv": None}}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "runs.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target) as handle:
            handle.write("half of the new")
            raise RuntimeError("disk full (simulated)")
    assert target.read_text() == "old\n"
    assert temporaries(tmp_path) == []


def test_temporaries_left_by_a_crashed_process_are_removed(tmp_path: Path):
    target = tmp_path / "sweep_status.json"
    stale = tmp_path / ".sweep_status.json.0123abcd.tmp"   # a writer that died before this process started
    stale.write_text('{"half": ')
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    in_flight = tmp_path / ".sweep_status.json.89abcdef.tmp"  # a concurrent writer, busy right now
    in_flight.write_text('{"being": ')
    unrelated = tmp_path / ".summary.json.0123abcd.tmp"      # another file's temporary: not ours to judge
    unrelated.write_text("")
    os.utime(unrelated, (an_hour_ago, an_hour_ago))
    write_json_atomic(target, {"state": "done"})
    assert json.loads(target.read_text()) == {"state": "done"}
    assert temporaries(tmp_path) == sorted([in_flight.name, unrelated.name])


def test_json_safe_makes_plain_json_at_any_depth():
    value = {"loss": float("nan"), "peak": float("-inf"), 3: np.float32(0.5), "steps": np.int64(7),
             "flag": np.bool_(True), "grad": torch.tensor(2.0), "path": Path("runs") / "a",
             "nested": {"norms": (1.0, math.inf, np.float64("nan"))}, "list": [None, "text", False]}
    safe = json_safe(value)
    assert safe == {"loss": None, "peak": None, "3": 0.5, "steps": 7, "flag": True, "grad": 2.0,
                    "path": os.path.join("runs", "a"), "nested": {"norms": [1.0, None, None]},
                    "list": [None, "text", False]}
    assert type(safe["steps"]) is int and type(safe["flag"]) is bool and type(safe["3"]) is float
    json.dumps(safe, allow_nan=False)  # strict JSON: raises on any NaN/inf left
