"""W&B faults: an unreachable host falls back to offline at logger.init_timeout and leaves one run dir; a rerun
into a run dir does not keep the previous run's wandb/ folder."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.helpers import repo_env

pytest.importorskip("wandb")


FALLBACK_SCRIPT = """
import sys, time
from omegaconf import OmegaConf
from bnexp.train.wandb_sink import WandbSink
cfg = OmegaConf.create({"variant": {"name": "no_bn"}, "model": {"name": "airbench"}, "optim": {"lr": 0.1}, "seed": 0,
                        "logger": {"name": "wandb", "project": "bnexp-test", "mode": "online",
                                   "init_timeout": float(sys.argv[2])}})


class Stamped:
    '''stderr that notes when the fallback message is written'''
    def __init__(self, stream):
        self.stream, self.fallback_after = stream, None
    def write(self, text):
        if "online init failed" in text and self.fallback_after is None:
            self.fallback_after = time.monotonic() - started
        return self.stream.write(text)
    def __getattr__(self, name):
        return getattr(self.stream, name)


sys.stderr = stamped = Stamped(sys.stderr)
started = time.monotonic()
sink = WandbSink(cfg, sys.argv[1])
sink.log_step({"step": 0, "train/loss": 1.5})
sink.finish({"status": "finished"})
print("MODE", sink.mode, "FALLBACK_AFTER", stamped.fallback_after)
"""


def closed_port() -> int:
    """A localhost port nothing listens on (bound, then released): connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_fallback_script(base_url: str, run_dir, init_timeout: float):
    """FALLBACK_SCRIPT in a process of its own against `base_url`, with an API key but no mode, dir or run id set;
    it must exit 0. Returns the process result, the mode the run got and the seconds it took to fall back."""
    env = repo_env({"WANDB_BASE_URL": base_url, "WANDB_API_KEY": "b" * 40})
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT, str(run_dir), str(init_timeout)], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    _, mode, _, fallback_after = next(line for line in result.stdout.splitlines() if line.startswith("MODE")).split()
    return result, mode, fallback_after


def wandb_run_dirs(run_dir) -> list[str]:
    """The W&B run dirs (online or offline) the run left under its wandb/ folder."""
    return sorted(path.name for path in (run_dir / "wandb").iterdir() if path.is_dir() and not path.is_symlink())


def test_an_unreachable_host_falls_back_at_the_init_timeout_and_leaves_one_run_dir(tmp_path):
    """Before: two account lookups of 5 s each ran before the init timeout started, and the failed online attempt
    left its own run-* dir beside the offline one."""
    init_timeout = 3.0
    run_dir = tmp_path / "run"
    result, mode, fallback_after = run_fallback_script(f"http://127.0.0.1:{closed_port()}", run_dir, init_timeout)
    assert mode == "offline"
    # the timeout, plus starting wandb's service process (about a second; more on a busy machine)
    assert float(fallback_after) < init_timeout + 5, f"fell back after {fallback_after} s"
    runs = wandb_run_dirs(run_dir)
    assert len(runs) == 1 and runs[0].startswith("offline-run-"), runs


def test_a_host_name_that_does_not_resolve_falls_back_at_once(tmp_path):
    """Before: a failed DNS lookup still waited the whole init timeout (60 s here) inside W&B's start-up. A name
    under .invalid never resolves, with a network or without one."""
    init_timeout = 60.0
    run_dir = tmp_path / "run"
    result, mode, fallback_after = run_fallback_script("http://bnexp-test-host.invalid", run_dir, init_timeout)
    assert "cannot reach http://bnexp-test-host.invalid: its host name does not resolve" in result.stderr, \
        result.stderr[-3000:]
    assert mode == "offline" and float(fallback_after) < init_timeout / 2, f"fell back after {fallback_after} s"
    runs = wandb_run_dirs(run_dir)
    assert len(runs) == 1 and runs[0].startswith("offline-run-"), runs


def test_a_bad_wandb_mode_variable_is_named(tmp_path, monkeypatch):
    """Before: WANDB_MODE=bogus failed inside wandb.init with a pydantic error about a `mode` field."""
    from bnexp.train.run import train
    from bnexp.train.wandb_sink import resolve_wandb_mode
    from tests.helpers import TINY_RUN, compose_config

    monkeypatch.setenv("WANDB_MODE", "bogus")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    for requested in ("auto", "online", "offline"):  # wandb reads the variable whatever logger.mode says
        with pytest.raises(ValueError, match=r"^WANDB_MODE='bogus' is not a W&B mode: set it to online, offline"):
            resolve_wandb_mode(requested)
    with pytest.raises(ValueError, match=r"WANDB_MODE='bogus'") as caught:
        train(compose_config(["+variant=no_bn", *TINY_RUN, "logger=wandb"]), str(tmp_path / "run"))
    assert "\n" not in str(caught.value)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_a_rerun_into_a_run_dir_replaces_the_previous_runs_wandb_folder(tmp_path, capsys):
    from bnexp.train.sinks import LocalSink

    fresh = tmp_path / "fresh"
    (fresh / "wandb" / "offline-run-x").mkdir(parents=True)  # W&B files of no bnexp run: not bnexp's to remove
    LocalSink(fresh, "x: 1\n", {"status": "running"}).finish({"status": "finished"})
    assert (fresh / "wandb" / "offline-run-x").is_dir()

    rerun = tmp_path / "rerun"
    old_run = rerun / "wandb" / "offline-run-20260101_000000-abcd1234"
    old_run.mkdir(parents=True)
    (old_run / "run-abcd1234.wandb").write_bytes(b"old")
    (rerun / "summary.json").write_text(json.dumps({"status": "finished"}))
    LocalSink(rerun, "x: 2\n", {"status": "running"}).finish({"status": "finished"})
    assert not (rerun / "wandb").exists()
    assert "wandb/ are being replaced" in capsys.readouterr().err
