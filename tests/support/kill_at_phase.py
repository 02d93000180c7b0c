"""`python -m tests.support.kill_at_phase <phase> <signal number> <train overrides...>`: `python -m bnexp.train` with
the given phase patched to signal its own process (see tests/runs/test_run_dir_faults.py), for the exit codes."""
import runpy
import sys

import pytest

from tests.runs.test_run_dir_faults import _patch_phase

if __name__ == "__main__":
    phase, signum = sys.argv[1], int(sys.argv[2])
    with pytest.MonkeyPatch.context() as monkeypatch:
        _patch_phase(monkeypatch, phase, signum)
        sys.argv = ["bnexp.train", *sys.argv[3:]]
        runpy.run_module("bnexp.train", run_name="__main__", alter_sys=True)
