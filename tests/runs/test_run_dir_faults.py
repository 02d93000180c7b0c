"""Faults a run dir must survive: two writers, a kill in every phase of a run, a SIGKILL that leaves no end.

The kill-phase tests land a real SIGTERM/SIGINT in a chosen phase by patching that phase's function (in the test's
own process, or in a child started through tests/support/kill_at_phase.py) to signal its own process, so the phase is hit
deterministically and the production code has no test hook.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnexp.train import sinks as sinks_module
from bnexp.train import loop as trainer_module
from bnexp.runs.files import run_status
from bnexp.runs.lock import LOCK_FILE, RunDirLock, RunDirLocked, lock_state
from bnexp.train.run import RunInterrupted, train
from tests.helpers import REPO, TINY_RUN, compose_config, repo_env

LONG_RUN = [*TINY_RUN, "train.epochs=500"]  # long enough to be caught alive; it is always stopped early


def _env() -> dict:
    return repo_env()


def _train_process(run_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bnexp.train", *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_logged_step(run_dir: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while not (metrics.exists() and metrics.read_text().strip()):
        assert process.poll() is None, process.communicate()[1]
        assert time.time() < deadline, "the run never logged a step"
        time.sleep(0.2)


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # raises on a line that is not JSON


# ----------------------------------------------------------------------------------------------------------------
# One writer per run dir
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_runs_started_together_into_one_dir_one_is_refused_and_the_dir_is_one_runs(tmp_path):
    run_dir = tmp_path / "shared"
    processes = {seed: _train_process(run_dir, *LONG_RUN, f"seed={seed}") for seed in (1, 2)}
    try:
        deadline = time.time() + 240
        while all(p.poll() is None for p in processes.values()):  # the loser exits as soon as it asks for the lock
            assert time.time() < deadline, "neither run was refused"
            time.sleep(0.2)
        loser_seed = next(seed for seed, p in processes.items() if p.poll() is not None)
        winner_seed = 3 - loser_seed
        winner, loser = processes[winner_seed], processes[loser_seed]
        _, loser_err = loser.communicate()
        assert loser.returncode == 2, loser_err
        assert f"pid {winner.pid}" in loser_err and "in use by another run" in loser_err, loser_err
        assert "Traceback" not in loser_err
        assert winner.poll() is None  # the refusal did not disturb the winner
        _wait_for_logged_step(run_dir, winner)
        assert run_status(run_dir) == "running"
        winner.send_signal(signal.SIGTERM)
        winner.communicate(timeout=120)
        assert winner.returncode == 143
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    summary = json.loads((run_dir / "summary.json").read_text())
    config = (run_dir / "config.yaml").read_text()
    assert summary["seed"] == winner_seed and f"seed: {winner_seed}\n" in config
    assert summary["status"] == "failed" and summary["error"].startswith("killed")
    records = _json_lines(run_dir / "metrics.jsonl")
    assert records and [r["step"] for r in records if r["kind"] == "step"] == \
        sorted(r["step"] for r in records if r["kind"] == "step")  # one run's steps, in order, no repeats
    assert run_status(run_dir) == "failed"


@pytest.mark.slow
def test_a_locked_dir_is_refused_in_process_and_left_untouched(tmp_path):
    (tmp_path / "summary.json").write_text('{"status": "finished", "seed": 7}\n')
    with RunDirLock(tmp_path):
        assert lock_state(tmp_path) == "held"
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        with pytest.raises(RunDirLocked, match=rf"pid {os.getpid()} on .*since 20"):
            train(compose_config(["+variant=no_bn", *TINY_RUN]), str(tmp_path))
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert lock_state(tmp_path) == "free"
    train(compose_config(["+variant=no_bn", *TINY_RUN]), str(tmp_path))  # free again: the next run may write
    assert run_status(tmp_path) == "finished"


@pytest.mark.slow
def test_the_cli_refused_by_a_held_dir_leaves_its_hydra_copy_alone_too(tmp_path):
    # the live run's own record, .hydra/ included: Hydra used to write the refused run's copy over it
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 7\n")
    (tmp_path / "summary.json").write_text('{"status": "running", "seed": 7}\n')
    (tmp_path / "train.log").write_text("the live run's log\n")  # Hydra's log handler opens it to append
    with RunDirLock(tmp_path):
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        refused = _train_process(tmp_path, "+variant=no_bn", *TINY_RUN, "seed=1")
        _, err = refused.communicate(timeout=180)
        assert refused.returncode == 2 and "in use by another run" in err, err
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    finished = _train_process(tmp_path, "+variant=no_bn", *TINY_RUN, "seed=1")  # free again: the CLI writes it all
    _, err = finished.communicate(timeout=180)
    assert finished.returncode == 0, err
    assert "seed: 1\n" in (tmp_path / ".hydra" / "config.yaml").read_text()
    assert "seed=1" in (tmp_path / ".hydra" / "overrides.yaml").read_text()
    assert "output_dir: " + str(tmp_path) in (tmp_path / ".hydra" / "hydra.yaml").read_text()


# ----------------------------------------------------------------------------------------------------------------
# A run that died without writing its end
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_sigkilled_run_is_killed_in_status_report_and_sweep_and_resume_redoes_it(tmp_path):
    from bnexp.report import build as report
    from bnexp.sweep import grid as sweep

    out_dir = tmp_path / "sweep"
    arguments = ["sweep=smoke", f"sweep.out_dir={out_dir}", "sweep.only_variants=[correct_bn]", "sweep.lrs=[0.1]",
                 "sweep.train_module=tests.support.fake_train"]
    sweep_cfg = sweep.compose_sweep_config(arguments)
    (job,) = sweep.build_jobs(sweep_cfg, [])
    # the real trainer, into the sweep's own run dir for that job, killed with no chance to write its end
    process = _train_process(job.run_dir, *job.overrides, *LONG_RUN[1:])
    _wait_for_logged_step(job.run_dir, process)
    assert run_status(job.run_dir) == "running"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert json.loads((job.run_dir / "summary.json").read_text())["status"] == "running"  # as it was left
    assert (job.run_dir / LOCK_FILE).is_file() and lock_state(job.run_dir) == "free"
    assert run_status(job.run_dir) == "killed"

    report_path = report.build_report([out_dir], tmp_path / "report")
    text = report_path.read_text()
    assert "1 killed" in text and "running" not in text.split("## Data source")[0]
    assert "(killed)" in text

    dry = subprocess.run([sys.executable, "-m", "bnexp.sweep", *arguments, "--dry-run"], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "[pending]" in dry.stdout and "1 to run" in dry.stdout, dry.stdout
    resumed = subprocess.run([sys.executable, "-m", "bnexp.sweep", *arguments], cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "redoing 1 killed" in resumed.stdout
    status = json.loads((out_dir / "sweep_status.json").read_text())
    assert status["counts"] == {"finished": 1}
    assert status["runs"][0]["previous_status"] == "killed"
    assert run_status(job.run_dir) == "finished"


# ----------------------------------------------------------------------------------------------------------------
# Kills are kills wherever they land
# ----------------------------------------------------------------------------------------------------------------

def _signal_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.5)  # the handler runs in this thread at the next bytecode; the sleep is never finished


def _patch_phase(monkeypatch, phase: str, signum: int) -> None:
    """Make `phase` of a run signal its own process while it is in that phase."""
    if phase == "train step":
        class SignallingStep(trainer_module.TrainStep):
            def __call__(self, step, *args, **kwargs):
                if step == 1:
                    _signal_self(signum)
                return super().__call__(step, *args, **kwargs)
        monkeypatch.setattr(trainer_module, "TrainStep", SignallingStep)
    elif phase == "evaluation":
        original_evaluate = trainer_module.evaluate

        def signalling_evaluate(*args, **kwargs):
            _signal_self(signum)
            return original_evaluate(*args, **kwargs)
        monkeypatch.setattr(trainer_module, "evaluate", signalling_evaluate)
    elif phase == "wandb start-up":
        # the online start, as if the W&B server answered (no network is needed: the signal lands first)
        from bnexp.train import wandb_sink
        real_init = wandb_sink.wandb.init

        def signalling_init(*args, mode=None, **kwargs):
            if mode == "online":
                _signal_self(signum)
            return real_init(*args, mode=mode, **kwargs)
        monkeypatch.setattr(wandb_sink.wandb, "init", signalling_init)
        monkeypatch.setattr(wandb_sink, "unreachable_reason", lambda *_: None)
    elif phase in ("first summary write", "last summary write"):
        original_write = sinks_module.write_json_atomic
        wanted_status = "running" if phase == "first summary write" else "finished"

        def signalling_write(path, value):
            if value.get("status") == wanted_status:
                os.kill(os.getpid(), signum)  # lands mid-write: the write must still complete
            return original_write(path, value)
        monkeypatch.setattr(sinks_module, "write_json_atomic", signalling_write)
    else:
        raise AssertionError(phase)


PHASES = ["first summary write", "train step", "evaluation", "last summary write"]


@pytest.mark.parametrize("phase", PHASES)
def test_sigterm_in_each_phase_is_a_killed_failed_run(phase, tmp_path, monkeypatch):
    _patch_phase(monkeypatch, phase, signal.SIGTERM)
    handlers_before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted, match="signal 15"):
        train(compose_config(["+variant=shared_bn", *TINY_RUN]), str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed", phase
    assert summary["error"].startswith("killed: RunInterrupted"), summary["error"]
    assert run_status(tmp_path) == "failed" and lock_state(tmp_path) == "free"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers_before
    if phase in ("evaluation", "last summary write"):
        assert summary["steps_done"] == 4  # the steps before the kill are kept
    _json_lines(tmp_path / "metrics.jsonl")


@pytest.mark.parametrize("phase", ["train step", "last summary write"])
def test_sigint_in_a_phase_is_a_killed_failed_run(phase, tmp_path, monkeypatch):
    _patch_phase(monkeypatch, phase, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(compose_config(["+variant=no_bn", *TINY_RUN]), str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("killed: KeyboardInterrupt")


def test_a_kill_between_two_log_windows_records_the_steps_taken(tmp_path, monkeypatch):
    """Ctrl-C at the second step, before its log window closes: one step was taken (before: steps_done 0)."""
    _patch_phase(monkeypatch, "train step", signal.SIGINT)  # lands as step 1 starts; log_every=2
    with pytest.raises(KeyboardInterrupt):
        train(compose_config(["+variant=no_bn", *TINY_RUN]), str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps_done"] == 1


WANDB_ONLINE = ["logger=wandb", "logger.mode=online", "logger.init_timeout=60"]


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B's files in tmp_path, credentials that no server will see, and no mode from the environment."""
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_API_KEY", "c" * 40)
    return tmp_path / "wandb_dir"


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, RunInterrupted), (signal.SIGINT, KeyboardInterrupt)])
def test_a_kill_during_wandb_start_up_is_a_kill(signum, raised, wandb_env, tmp_path, monkeypatch):
    """Before, SIGTERM there was taken for a failed online start: the run logged offline, trained to the end and
    exited 0."""
    _patch_phase(monkeypatch, "wandb start-up", signum)
    with pytest.raises(raised):
        train(compose_config(["+variant=no_bn", *TINY_RUN, *WANDB_ONLINE]), str(tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith(f"killed: {raised.__name__}")
    assert summary["steps_done"] == 0 and summary["data_source"] is None  # it stopped there
    assert not list(wandb_env.glob("wandb/offline-run-*"))  # no offline fallback


@pytest.mark.slow
@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_the_command_exits_143_or_130_for_a_kill_during_wandb_start_up(signum, exit_code, wandb_env, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "tests.support.kill_at_phase", "wandb start-up", str(int(signum)),
                             "+variant=no_bn", *TINY_RUN, *WANDB_ONLINE, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "stopped" in result.stderr
    assert "logging offline" not in result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("killed")


@pytest.mark.parametrize("phase, signum, exit_code", [("last summary write", signal.SIGTERM, 143),
                                                      ("last summary write", signal.SIGINT, 130)])
def test_the_command_exits_143_or_130_for_a_kill_in_a_phase(phase, signum, exit_code, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "tests.support.kill_at_phase", phase, str(int(signum)),
                             "+variant=no_bn", *TINY_RUN, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr and "stopped" in result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("killed")


# ----------------------------------------------------------------------------------------------------------------
# The report over broken trees
# ----------------------------------------------------------------------------------------------------------------

def _rewrite_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _leave_running(run_dir: Path) -> None:
    _rewrite_json(run_dir / "summary.json", lambda s: s.update(status="running", final_test_acc=None,
                                                               best_test_acc=None, steps_done=0))


def _killed(run_dir: Path, locks) -> None:
    _leave_running(run_dir)
    with RunDirLock(run_dir):  # a lock file that its process held, then left behind by dying
        pass


def _live(run_dir: Path, locks) -> None:
    _leave_running(run_dir)
    locks.enter_context(RunDirLock(run_dir))  # held for as long as the report reads the tree


def _garbage_metrics(run_dir: Path) -> None:
    with open(run_dir / "metrics.jsonl", "ab") as metrics:
        metrics.write(b'not json at all\n["a", "list"]\n{"kind": "step", "step": "seven", "train/loss": 1}\n'
                      b'{"kind": "step", "step": 99, "train/loss": "high", "grad_norm/global": []}\n\xff\xfe\n'
                      b'{"kind": "step", "step": 100, "train/lo')


def _wrong_types(run_dir: Path) -> None:
    _rewrite_json(run_dir / "summary.json", lambda s: s.update(
        steps_to_acc=["0.5"], error=5, final_test_acc="abc", provenance="x", init_grad_norms=[1],
        max_grad_norm={"a": 1}, images_per_s="fast", data_source=7, model=None))


def _lr_not_a_number(run_dir: Path) -> None:
    _rewrite_json(run_dir / "summary.json", lambda s: s.update(lr="abc"))
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("lr: ", "lr: abc #"))


# name -> (how to damage a healthy finished run dir, what the report must make of it: a status or "skipped").
# A damage taking `locks` gets the test's ExitStack, to hold a lock over the report.
DAMAGES = {
    "finished": (lambda d: None, "finished"),
    "diverged": (lambda d: _rewrite_json(d / "summary.json", lambda s: s.update(status="diverged", diverged_step=3,
                                                                                   final_test_acc=None)), "diverged"),
    "failed": (lambda d: _rewrite_json(d / "summary.json", lambda s: s.update(status="failed", error="killed: x\ny",
                                                                                 final_test_acc=None)), "failed"),
    "killed": (_killed, "killed"),
    "live": (_live, "running"),
    "running without a lock": (_leave_running, "incomplete"),
    "summary cut short": (lambda d: _cut_in_half(d / "summary.json"), "skipped"),
    "summary not an object": (lambda d: (d / "summary.json").write_text("[1, 2]"), "skipped"),
    "summary not utf-8": (lambda d: (d / "summary.json").write_bytes(b"\xff\xfe{\x00"), "skipped"),
    "summary without status": (lambda d: _rewrite_json(d / "summary.json", lambda s: s.pop("status")), "skipped"),
    "unknown status": (lambda d: _rewrite_json(d / "summary.json", lambda s: s.update(status="paused")), "skipped"),
    "lr not a number": (_lr_not_a_number, "skipped"),
    "seed not an integer": (lambda d: _rewrite_json(d / "summary.json", lambda s: s.update(seed="two")), "skipped"),
    "fields of the wrong type": (_wrong_types, "finished"),
    "config cut short": (lambda d: _cut_in_half(d / "config.yaml"), "finished"),
    "config not a mapping": (lambda d: (d / "config.yaml").write_text("- a\n- b\n"), "finished"),
    "config not utf-8": (lambda d: (d / "config.yaml").write_bytes(b"\xff\xfe: ["), "finished"),
    "metrics with garbage lines": (_garbage_metrics, "finished"),
    "no metrics": (lambda d: (d / "metrics.jsonl").unlink(), "finished"),
    "foreign program's dir": (lambda d: ((d / "summary.json").write_text('{"accuracy": 0.9}'),
                                         (d / "config.yaml").write_text("lr: fast\n")), "skipped"),
}


def _damage(run_dir: Path, name: str, locks) -> None:
    damage = DAMAGES[name][0]
    damage(run_dir, locks) if damage in (_killed, _live) else damage(run_dir)


def _check_report(root: Path, out: Path, expected: dict[Path, str]) -> str:
    from bnexp.report import build as report
    assert report.main([str(root), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    skipped_section = text.split("## Run dirs skipped", 1)[1] if "## Run dirs skipped" in text else ""
    with open(out / "runs.csv") as handle:
        statuses = {Path(row["run_dir"]).resolve(): row["status"] for row in csv.DictReader(handle)}
    for run_dir, outcome in expected.items():
        if outcome == "skipped":
            assert str(run_dir.resolve()) in skipped_section, (run_dir, text)
            assert run_dir.resolve() not in statuses
        else:
            assert statuses.get(run_dir.resolve()) == outcome, (run_dir, statuses)
    unfinished = [o for o in expected.values() if o not in ("finished", "diverged", "skipped")]
    if unfinished:
        assert "**Missing results:**" in text
    for status in set(unfinished):
        assert f"({status})" in text  # each listed under "Runs that did not complete"
    for plot in text.split("## Plots", 1)[1].split("\n### ")[1:]:
        if "_Skipped:" not in plot:
            assert (out / plot.split("](", 1)[1].split(")", 1)[0]).is_file()
    return text


@pytest.mark.parametrize("seed", range(6))
def test_the_report_survives_randomly_broken_trees(seed, tmp_path):
    """Trees of healthy, unfinished and damaged run dirs, drawn by a seeded generator."""
    import random

    from tests.helpers import make_run_dir
    rng = random.Random(seed)
    expected = {}
    with contextlib.ExitStack() as locks:
        for index in range(rng.randint(1, 7)):
            name = rng.choice(list(DAMAGES))
            # a seed of its own per run dir: two dirs of one seed, variant and lr are one run tried twice, of which
            # the report counts one
            run_dir = make_run_dir(tmp_path / "sweep" / "runs" / f"run{index}", rng.choice(["correct_bn", "no_bn"]),
                                   rng.choice([0.1, 0.4]), 3 * index + rng.randint(0, 2),
                                   instrumented=rng.random() < 0.7)
            _damage(run_dir, name, locks)
            expected[run_dir] = DAMAGES[name][1]
        if rng.random() < 0.3:
            (tmp_path / "sweep" / "runs" / "empty").mkdir()  # a dir the sweep made but never wrote to
        _check_report(tmp_path / "sweep", tmp_path / "report", expected)


@pytest.mark.parametrize("state", ["empty", "all failed", "one just started", "a single killed run", "every damage"])
def test_the_report_covers_every_state_a_sweep_can_be_in(state, tmp_path):
    from tests.helpers import make_run_dir
    root = tmp_path / "sweep"
    root.mkdir()
    names = {"empty": [], "all failed": ["failed", "failed"], "one just started": ["live"],
             "a single killed run": ["killed"], "every damage": list(DAMAGES)}[state]
    expected = {}
    with contextlib.ExitStack() as locks:
        for index, name in enumerate(names):
            run_dir = make_run_dir(root / f"run{index}", "correct_bn", 0.1 * (index + 1), 0)
            _damage(run_dir, name, locks)
            expected[run_dir] = DAMAGES[name][1]
        text = _check_report(root, tmp_path / "report", expected)
    if state == "empty":
        assert "No usable run dirs" in text
    if state in ("all failed", "one just started", "a single killed run"):
        assert "none has finished or diverged yet" in text
        assert "_Skipped: no run has finished or diverged yet" in text
    if state == "every damage":
        n_skipped = sum(outcome == "skipped" for _, outcome in DAMAGES.values())
        assert f"**Skipped:** {n_skipped} run dirs" in text
