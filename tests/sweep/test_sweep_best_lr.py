"""bnexp.sweep's best_lr mode: the planner against run dirs written by hand (what each round asks for, extension down
and up, a bound, fresh seeds only at each variant's chosen lr, resume from whatever is on disk, a grid's runs
adopted with their role), and the whole sweep on the fake trainer, whose accuracy per variant peaks at the lr set by
$FAKE_TRAIN_PEAKS (killed midway and resumed; through submitit's local executor; submitted to stand-in SLURM
commands)."""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest

from bnexp.lr_search.best_lr import NO_RESULT_SCORE, TuningSettings, run_tuning
from bnexp.runs.fileio import write_json_atomic
from bnexp.sweep.attempt import prepare_run_dir
from bnexp.sweep.best_lr import BestLrPlanner
from bnexp.sweep.grid import build_jobs, compose_sweep_config
from tests.helpers import REPO, background_sweep, read_status, run_sweep_cli, wait_for
from tests.support.fake_train import peaked_accuracy

# correct_bn is best inside the grid [0.05, 0.2, 0.8] (at 0.2), shared_bn below it (0.025), no_bn above it (1.6)
PEAKS = {"correct_bn": 0.25, "shared_bn": 0.02, "no_bn": 2.0}
PEAKS_ENV = {"FAKE_TRAIN_PEAKS": ",".join(f"{label}={peak}" for label, peak in PEAKS.items())}
CHOSEN = {"correct_bn": 0.2, "shared_bn": 0.025, "no_bn": 1.6}
TUNE_SEEDS, SEEDS = (100,), (0, 1)
# the example config (bounds 0.0125 and 3.2), with a third variant
SWEEP = ["sweep=best_lr_smoke", "+sweep.variants.no_bn=['+variant=no_bn']"]
FAKE = [*SWEEP, "sweep.train_module=tests.support.fake_train", "sweep.gpus=[]"]


def planner_for(out_dir: Path, *overrides: str) -> BestLrPlanner:
    return BestLrPlanner(compose_sweep_config([*SWEEP, f"sweep.out_dir={out_dir}", *overrides]), [])


def write_run(job, final_test_acc: float | None, status: str = "finished") -> None:
    """A run dir as the sweep and the trainer leave it: the sweep's record of the job, then the run's summary."""
    prepare_run_dir(job, ["python", "-m", "bnexp.train"])
    write_json_atomic(job.run_dir / "summary.json", {"status": status, "final_test_acc": final_test_acc,
                                                     "variant": job.variant, "lr": job.lr, "seed": job.seed})


def peaked(job) -> float:
    return peaked_accuracy(job.lr, PEAKS[job.variant], job.seed)


def run_rounds(planner: BestLrPlanner, accuracy_of=peaked) -> list[list]:
    """Run the planner to its end as a sweep would, every round's runs at once; the jobs of each round."""
    rounds = []
    while jobs := planner.next_jobs():
        rounds.append(jobs)
        for job in jobs:
            write_run(job, accuracy_of(job))
    return rounds


def expected_tuning(label: str, **bounds):
    settings = TuningSettings(lrs=(0.05, 0.2, 0.8), seeds=TUNE_SEEDS, min_lr=bounds.get("min_lr", 0.0125),
                              max_lr=bounds.get("max_lr", 3.2))
    return run_tuning(settings, lambda lr, seed: peaked_accuracy(lr, PEAKS[label], seed))


def sweep_job_record(job) -> dict:
    return json.loads((job.run_dir / "sweep_job.json").read_text())


def test_each_variant_is_tuned_down_or_up_until_interior_then_fresh_seeds_run_only_at_its_chosen_lr(tmp_path):
    planner = planner_for(tmp_path)
    rounds = run_rounds(planner)
    # the first round: the initial grid with the tuning seed, for every variant at once
    assert sorted((job.variant, job.lr, job.seed, job.role) for job in rounds[0]) == sorted(
        (label, lr, 100, "tune") for label in PEAKS for lr in (0.05, 0.2, 0.8))
    jobs = [job for batch in rounds for job in batch]
    for label, chosen in CHOSEN.items():
        tuning, scores = expected_tuning(label)
        assert tuning.best.lr == chosen and tuning.interior
        mine = [job for job in jobs if job.variant == label]
        # exactly the tuning runs the pure tuning needs, then the fresh seeds at the chosen lr and nowhere else
        assert sorted(job.lr for job in mine if job.role == "tune") == sorted(scores)
        assert all(job.seed in TUNE_SEEDS for job in mine if job.role == "tune")
        finals = [job for job in mine if job.role == "final"]
        assert sorted((job.lr, job.seed) for job in finals) == [(chosen, seed) for seed in SEEDS]
        record = sweep_job_record(finals[0])
        assert record["role"] == "final" and record["tuning"]["chosen_lr"] == chosen
        assert record["tuning"]["interior"] is True and record["tuning"]["bound"] is None
        assert record["tuning"]["lrs_tuned"] == sorted(scores)
        assert sweep_job_record(next(job for job in mine if job.role == "tune"))["role"] == "tune"
    # shared_bn went down 0.05 -> 0.025 -> 0.0125, no_bn up 0.8 -> 1.6 -> 3.2, one lr per round
    assert sorted(job.lr for job in jobs if job.variant == "shared_bn" and job.role == "tune") == [
        0.0125, 0.025, 0.05, 0.2, 0.8]
    assert sorted(job.lr for job in jobs if job.variant == "no_bn" and job.role == "tune") == [
        0.05, 0.2, 0.8, 1.6, 3.2]
    status = planner.status()
    assert {label: status[label]["chosen_lr"] for label in PEAKS} == CHOSEN
    assert all(status[label]["done"] and status[label]["interior"] for label in PEAKS)
    assert [point["lr"] for point in status["no_bn"]["tuning_curve"]] == [0.05, 0.2, 0.8, 1.6, 3.2]
    assert status["correct_bn"]["final_acc_by_seed"] == {0: peaked_accuracy(0.2, 0.25, 0),
                                                         1: peaked_accuracy(0.2, 0.25, 1)}
    assert planner.summary_lines()[0].startswith("correct_bn: best lr 0.2, interior (0.05: ")
    # every run is known and none is asked for again
    assert planner.next_jobs() == [] and len(planner.known_jobs()) == len(jobs)


def test_tuning_stops_at_a_bound_and_says_so(tmp_path):
    planner = planner_for(tmp_path, "sweep.only_variants=[no_bn]", "sweep.lr_search_max=1.0")
    jobs = [job for batch in run_rounds(planner) for job in batch]
    assert sorted(job.lr for job in jobs if job.role == "tune") == [0.05, 0.2, 0.8, 1.0]  # 1.6 is past the bound
    finals = [job for job in jobs if job.role == "final"]
    assert {job.lr for job in finals} == {1.0}
    assert sweep_job_record(finals[0])["tuning"]["bound"] == "upper"
    status = planner.status()["no_bn"]
    assert status["chosen_lr"] == 1.0 and status["interior"] is False and status["bound"] == "upper"
    assert "best lr 1, at the upper bound" in status["describe"]


def test_a_diverged_tuning_run_scores_zero_and_a_failed_fresh_seed_still_completes_the_variant(tmp_path):
    planner = planner_for(tmp_path, "sweep.only_variants=[correct_bn]")
    first = planner.next_jobs()
    for job in first:  # 0.2 and 0.8 diverge: 0.05 is the best, at the bottom of the grid
        diverges = job.lr >= 0.2
        write_run(job, None if diverges else peaked(job), "diverged" if diverges else "finished")
    (below,) = planner.next_jobs()
    assert below.lr == 0.025 and below.role == "tune"
    assert planner.status()["correct_bn"]["tuning_curve"][1] == {"lr": 0.2, "mean_acc": NO_RESULT_SCORE,
                                                               "acc_by_seed": {100: 0.0}}
    write_run(below, peaked(below))
    finals = planner.next_jobs()
    assert {(job.lr, job.role) for job in finals} == {(0.05, "final")}
    write_run(finals[0], peaked(finals[0]))
    # the other fresh seed fails in this sweep: it counts (scores 0) and the variant is done
    planner.failed_here.add(finals[1].run_id)
    write_run(finals[1], None, "failed")
    assert planner.next_jobs() == [] and planner.status()["correct_bn"]["final_acc_by_seed"][1] == 0.0


def test_a_resumed_planner_asks_only_for_what_is_missing_and_retries_a_killed_run(tmp_path):
    planner = planner_for(tmp_path)
    first = planner.next_jobs()
    done, killed, never = first[:-2], first[-2], first[-1]
    for job in done:
        write_run(job, peaked(job))
    prepare_run_dir(killed, ["python"])  # killed while running: a 'running' summary and no live lock
    write_json_atomic(killed.run_dir / "summary.json", {"status": "running"})
    mtimes = {job.run_id: (job.run_dir / "summary.json").stat().st_mtime_ns for job in done}

    resumed = planner_for(tmp_path)
    again = resumed.next_jobs()
    # no_bn: its two grid runs without a result; the others go on from their complete grids; nothing done is redone
    assert [job.run_id for job in again if job.variant == "no_bn"] == [killed.run_id, never.run_id]
    assert sorted((job.variant, job.lr, job.seed) for job in again if job.variant != "no_bn") == [
        ("correct_bn", 0.2, 0), ("correct_bn", 0.2, 1), ("shared_bn", 0.025, 100)]
    assert len(resumed.known_jobs()) == len(done)
    run_rounds(resumed)
    assert {job.run_id: (job.run_dir / "summary.json").stat().st_mtime_ns for job in done} == mtimes
    assert {label: state["chosen_lr"] for label, state in resumed.status().items()} == CHOSEN


def test_a_grids_runs_in_the_out_dir_are_tuning_runs_and_get_that_role(tmp_path):
    grid_cfg = compose_sweep_config([*SWEEP, f"sweep.out_dir={tmp_path}", "sweep.mode=grid",
                                     "sweep.only_variants=[correct_bn]", "sweep.seeds=[100]"])
    grid_jobs = build_jobs(grid_cfg, [])
    for job in grid_jobs:
        write_run(job, peaked(job))
        assert "role" not in sweep_job_record(job)
    planner = planner_for(tmp_path, "sweep.only_variants=[correct_bn]")
    finals = planner.next_jobs()  # the grid's runs are the tuning: straight to the fresh seeds
    assert {(job.lr, job.seed, job.role) for job in finals} == {(0.2, 0, "final"), (0.2, 1, "final")}
    assert all(sweep_job_record(job)["role"] == "tune" for job in grid_jobs)


# ----------------------------------------------------------------------------------------------------------------
# the whole sweep, on the fake trainer
# ----------------------------------------------------------------------------------------------------------------

def completed_runs(out_dir: Path) -> dict[str, tuple[dict, dict]]:
    """Run id -> (summary, sweep_job.json) of every finished or diverged run."""
    runs = {}
    for path in (out_dir / "runs").glob("*/summary.json"):
        summary = json.loads(path.read_text())
        if summary["status"] in ("finished", "diverged"):
            runs[path.parent.name] = (summary, json.loads((path.parent / "sweep_job.json").read_text()))
    return runs


def expected_run_count() -> int:
    return sum(len(expected_tuning(label)[1]) * len(TUNE_SEEDS) + len(SEEDS) for label in PEAKS)


def test_a_best_lr_sweep_killed_midway_resumes_redoing_only_what_is_missing(tmp_path: Path):
    arguments = [*FAKE, f"sweep.out_dir={tmp_path}"]
    with background_sweep(arguments, env_extra={**PEAKS_ENV, "FAKE_TRAIN_RUN_SLEEP": "0.3"}) as process:
        wait_for(lambda: (tmp_path / "sweep_status.json").exists()
                 and read_status(tmp_path)["counts"].get("finished", 0) >= 8
                 and read_status(tmp_path)["counts"].get("running", 0) >= 1, timeout=120)
        process.send_signal(signal.SIGKILL)  # no chance to record anything: the runs die with it
        process.wait(timeout=30)
    before = {run_id: (tmp_path / "runs" / run_id / "summary.json").stat().st_mtime_ns
              for run_id in completed_runs(tmp_path)}
    assert 8 <= len(before) < expected_run_count()

    result = run_sweep_cli(arguments, env_extra=PEAKS_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(before)} runs already finished/diverged" in result.stdout
    after = completed_runs(tmp_path)
    for run_id, mtime in before.items():  # nothing done before is redone
        assert (tmp_path / "runs" / run_id / "summary.json").stat().st_mtime_ns == mtime
    assert len(after) == expected_run_count()  # and nothing more is run than an uninterrupted sweep runs
    status = read_status(tmp_path)
    assert {label: status["best_lr"][label]["chosen_lr"] for label in PEAKS} == CHOSEN
    for label, chosen in CHOSEN.items():
        finals = [(summary["lr"], summary["seed"]) for summary, record in after.values()
                  if summary["variant"] == label and record["role"] == "final"]
        assert sorted(finals) == [(chosen, seed) for seed in SEEDS]
    assert {row["role"] for row in status["runs"]} == {"tune", "final"}
    assert "  correct_bn: best lr 0.2, interior (" in result.stdout


@pytest.mark.slow
def test_a_best_lr_sweep_runs_end_to_end_through_submitits_local_executor(tmp_path: Path):
    pytest.importorskip("submitit")
    arguments = [*FAKE, "sweep.executor=submitit_local", "sweep.only_variants=[correct_bn,shared_bn]",
                 f"sweep.out_dir={tmp_path}"]
    result = run_sweep_cli(arguments, env_extra=PEAKS_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    status = read_status(tmp_path)
    assert {label: status["best_lr"][label]["chosen_lr"] for label in ("correct_bn", "shared_bn")} == {
        "correct_bn": 0.2, "shared_bn": 0.025}
    rows = status["runs"]
    assert len(rows) == sum(len(expected_tuning(label)[1]) + len(SEEDS) for label in ("correct_bn", "shared_bn"))
    assert all(row["job_id"] and row["status"] == "finished" for row in rows)
    finals = {(row["variant"], row["lr"], row["seed"]) for row in rows if row["role"] == "final"}
    assert finals == {("correct_bn", 0.2, 0), ("correct_bn", 0.2, 1), ("shared_bn", 0.025, 0),
                      ("shared_bn", 0.025, 1)}


def test_a_best_lr_sweep_on_slurm_submits_its_first_round_as_one_array_of_tuning_runs(tmp_path: Path):
    pytest.importorskip("submitit")
    state = tmp_path / "slurm"
    state.mkdir()
    out_dir = tmp_path / "sweep"
    env = {"PATH": f"{REPO / 'tests' / 'support' / 'fake_slurm'}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SLURM_DIR": str(state)}
    with background_sweep([*FAKE, "sweep.executor=slurm", f"sweep.out_dir={out_dir}"], env_extra=env) as process:
        wait_for(lambda: (out_dir / "sweep_status.json").exists()
                 and all(row.get("job_id") for row in read_status(out_dir)["runs"]), timeout=120)
        process.send_signal(signal.SIGTERM)  # the stand-in never runs a job: stop it, which cancels them
        process.communicate(timeout=120)
    (script,) = state.glob("sbatch_*.sh")
    assert "#SBATCH --array=0-8%" in script.read_text()  # 3 variants x 3 lrs x 1 tuning seed
    rows = read_status(out_dir)["runs"]
    assert len(rows) == 9 and {row["role"] for row in rows} == {"tune"} and {row["seed"] for row in rows} == {100}
    assert sorted((row["variant"], row["lr"]) for row in rows) == sorted(
        (label, lr) for label in PEAKS for lr in (0.05, 0.2, 0.8))
    assert math.isclose(read_status(out_dir)["config"]["lr_search_max"], 3.2)
