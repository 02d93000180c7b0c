"""bnexp.sweep's largest_lr mode on the fake trainer, whose largest trainable lr per variant is set by
$FAKE_TRAIN_LR_LIMITS:
the brackets it finds, the number of runs it spends, resume after a stop midway, and a dense grid's runs counting
as known outcomes."""
from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest

from bnexp.lr_search.largest_trainable import LrSearchSettings, Outcome, run_lr_search
from tests.helpers import background_sweep, read_status, run_sweep_cli, wait_for

THRESHOLDS = {"correct_bn": (0.9, "diverge"), "shared_bn": (0.15, "collapse"), "no_bn": (0.07, "diverge")}
LR_LIMITS_ENV = {"FAKE_TRAIN_LR_LIMITS": ",".join(f"{label}={threshold}" + (":collapse" if how == "collapse" else "")
                                          for label, (threshold, how) in THRESHOLDS.items())}
SEEDS = (0, 1)
# the study's config with the fake trainer; its lr_search_* keys: start 0.05, ratio 1.414, lr in [0.001, 12.8]
# sweep.gpus=[]: CPU workers without asking torch for GPUs (its import is most of a small sweep's start)
LARGEST_LR = ["sweep=cpu_mechanism", "sweep.train_module=tests.support.fake_train", "sweep.mode=largest_lr",
              "sweep.gpus=[]", f"sweep.only_variants=[{','.join(THRESHOLDS)}]",
              f"sweep.seeds=[{','.join(map(str, SEEDS))}]"]
SETTINGS = LrSearchSettings(start_lr=0.05, seeds=SEEDS, ratio=1.414, min_lr=0.001, max_lr=12.8)


def expected_search(label: str):
    """The pure search on the same threshold, one seed at a time as a one-worker sweep runs it."""
    threshold, how = THRESHOLDS[label]

    def train(lr, seed):
        if lr < threshold:
            return Outcome.TRAINS
        return Outcome.COLLAPSED if how == "collapse" else Outcome.DIVERGED

    bracket, outcomes = run_lr_search(SETTINGS, train)
    return bracket, sum(len(by_seed) for by_seed in outcomes.values())


def completed_runs(out_dir: Path) -> dict[str, dict]:
    summaries = {}
    for path in (out_dir / "runs").glob("*/summary.json"):
        summary = json.loads(path.read_text())
        if summary["status"] in ("finished", "diverged"):
            summaries[path.parent.name] = summary
    return summaries


def assert_brackets_match_the_thresholds(out_dir: Path) -> None:
    searches = read_status(out_dir)["largest_lr"]
    for label, (threshold, how) in THRESHOLDS.items():
        bracket, _ = expected_search(label)
        found = searches[label]
        assert found["done"], found
        assert found["largest_trainable_lr"] < threshold <= found["first_failing_lr"], found
        assert found["first_failing_lr"] / found["largest_trainable_lr"] <= math.sqrt(2) * 1.001
        assert (found["largest_trainable_lr"], found["first_failing_lr"]) == (bracket.last_trains.lr,
                                                                             bracket.first_fails.lr)
        assert found["bracket"].endswith(f"{'collapses' if how == 'collapse' else 'diverges'})"), found


@pytest.mark.slow
def test_largest_lr_sweep_stopped_midway_resumes_to_the_known_brackets_with_fewer_runs_than_a_grid(tmp_path: Path):
    arguments = [*LARGEST_LR, f"sweep.out_dir={tmp_path}"]
    with background_sweep(arguments, env_extra={**LR_LIMITS_ENV, "FAKE_TRAIN_RUN_SLEEP": "0.2"}) as process:
        wait_for(lambda: (tmp_path / "sweep_status.json").exists()
                 and read_status(tmp_path)["counts"].get("finished", 0) >= 4
                 and read_status(tmp_path)["counts"].get("running", 0) == 1, timeout=120)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 130
    before = {run_id: (tmp_path / "runs" / run_id / "summary.json").stat().st_mtime_ns
              for run_id in completed_runs(tmp_path)}
    stopped = [row for row in read_status(tmp_path)["runs"] if row["status"] == "failed"]
    assert len(stopped) == 1 and "SIGTERM" in stopped[0]["error"]
    assert len(before) < sum(expected_search(label)[1] for label in THRESHOLDS)

    result = run_sweep_cli(arguments, env_extra=LR_LIMITS_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(before)} runs already finished/diverged" in result.stdout
    assert_brackets_match_the_thresholds(tmp_path)
    after = completed_runs(tmp_path)
    # nothing redone, the stopped run retried, and no more runs than an uninterrupted search
    for run_id, mtime in before.items():
        assert (tmp_path / "runs" / run_id / "summary.json").stat().st_mtime_ns == mtime
    assert Path(stopped[0]["run_dir"]).name in after
    assert len(after) == sum(expected_search(label)[1] for label in THRESHOLDS)
    assert "correct_bn: largest trainable lr 0.8 (0.8 trains, 1.131 diverges)" in result.stdout
    assert "shared_bn: largest trainable lr 0.1414 (0.1414 trains, 0.2 collapses)" in result.stdout
    for label in THRESHOLDS:
        # exactly the runs the pure search needs: a failing lr stops at its first failing seed
        assert sum(s["variant"] == label for s in after.values()) == expected_search(label)[1], label
    # a grid resolving any largest trainable lr in [0.001, 12.8] to √2 needs every point of that range for every seed
    dense = (math.floor(math.log(12.8 / 0.001) / math.log(math.sqrt(2))) + 1) * len(SEEDS) * len(THRESHOLDS)
    assert len(after) < dense / 3, (len(after), dense)


@pytest.mark.slow
def test_dense_grid_runs_in_the_out_dir_count_as_known_outcomes(tmp_path: Path):
    grid = ["sweep=cpu_mechanism", "sweep.train_module=tests.support.fake_train", "sweep.gpus=[]",
            "sweep.only_variants=[correct_bn]",
            "sweep.seeds=[0,1]", "sweep.lrs=[0.05,0.2,0.8,3.2]"]
    result = run_sweep_cli([*grid, f"sweep.out_dir={tmp_path}"], env_extra=LR_LIMITS_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    grid_runs = set(completed_runs(tmp_path))
    assert len(grid_runs) == 8

    search = [*LARGEST_LR[:4], "sweep.only_variants=[correct_bn]", "sweep.seeds=[0,1]", f"sweep.out_dir={tmp_path}"]
    dry = run_sweep_cli([*search, "--dry-run"], env_extra=LR_LIMITS_ENV)
    assert dry.returncode == 0, dry.stderr[-3000:]
    # the grid already bracketed the largest trainable lr at [0.8, 3.2): the first round bisects it, one seed at a time
    assert dry.stdout.count("[done (skip)]") == 8 and dry.stdout.count("[pending]") == 1
    assert "optim.lr=1.6 seed=0" in dry.stdout
    assert ("correct_bn: largest trainable lr 0.8 (0.8 trains, 3.2 diverges); search not finished, next lr 1.6"
            in dry.stdout)

    result = run_sweep_cli(search, env_extra=LR_LIMITS_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "correct_bn: largest trainable lr 0.8 (0.8 trains, 1.131 diverges)" in result.stdout
    new_runs = set(completed_runs(tmp_path)) - grid_runs
    assert len(new_runs) < expected_search("correct_bn")[1]
    assert {completed_runs(tmp_path)[run_id]["lr"] for run_id in new_runs} == {1.6, 1.131}


@pytest.mark.slow
def test_a_run_that_fails_in_the_sweep_counts_as_not_training_and_exits_1(tmp_path: Path):
    arguments = ["sweep=cpu_mechanism", "sweep.train_module=tests.support.fake_train", "sweep.mode=largest_lr",
                 "sweep.gpus=[]",
                 "+sweep.variants.crash=['+variant=crash']", "sweep.only_variants=[crash]", "sweep.seeds=[0]",
                 "sweep.lr_search_start=0.004", f"sweep.out_dir={tmp_path}"]
    result = run_sweep_cli(arguments)
    assert result.returncode == 1
    assert "crash: no trainable lr down to 0.001 (0.001 fails)" in result.stdout
    assert read_status(tmp_path)["counts"] == {"failed": 3}  # 0.004, 0.002, 0.001: halving down to the floor


def test_unknown_mode_is_a_clear_error(tmp_path: Path):
    result = run_sweep_cli(["sweep=cpu_mechanism", "sweep.mode=bisect", f"sweep.out_dir={tmp_path}"])
    assert result.returncode == 2
    assert "sweep.mode='bisect' is not one of" in result.stderr and "Traceback" not in result.stderr


def test_planner_runs_every_seed_of_an_lr_in_parallel_and_skips_busy_searches(tmp_path: Path):
    from bnexp.sweep import grid as sweep
    from bnexp.sweep.largest_lr import LargestLrPlanner

    cfg = sweep.compose_sweep_config(["sweep=cpu_mechanism", "sweep.mode=largest_lr", f"sweep.out_dir={tmp_path}"])
    parallel = LargestLrPlanner(cfg, ["data.train_size=64"], one_at_a_time=False).next_jobs()
    assert len(parallel) == len(cfg.variants) * len(cfg.seeds)
    assert {job.lr for job in parallel} == {cfg.lr_search_start}
    assert all("data.train_size=64" in job.overrides for job in parallel)
    # the same run dirs as the grid mode would use for those runs
    grid_cfg = sweep.compose_sweep_config(["sweep=cpu_mechanism", f"sweep.out_dir={tmp_path}",
                                           f"sweep.lrs=[{cfg.lr_search_start}]"])
    grid_jobs = sweep.build_jobs(grid_cfg, ["data.train_size=64"])
    assert {job.run_dir for job in parallel} == {job.run_dir for job in grid_jobs}
    sequential = LargestLrPlanner(cfg, ["data.train_size=64"], one_at_a_time=True)
    first = sequential.next_jobs()
    assert [job.seed for job in first] == [0] * len(cfg.variants)
    assert {job.variant for job in sequential.next_jobs(in_flight=first[:2])} == set(cfg.variants) - {
        job.variant for job in first[:2]}
