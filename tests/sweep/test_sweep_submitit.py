"""bnexp.sweep through submitit, without a cluster.

submitit's local executor (`sweep.executor=submitit_local`) runs the jobs the SLURM executor would submit, on this
machine: a grid and a largest_lr search end to end on the fake trainer, a stop that cancels queued and running jobs,
and a sweep killed outright whose resume follows the job still running and redoes only what is missing. For SLURM,
the sbatch script is rendered through submitit itself and its resources checked, and a sweep is run against
stand-in sbatch/sacct/scancel commands (tests/support/fake_slurm): SLURM submission is rendered, not submitted.
"""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import yaml

from bnexp.lr_search.largest_trainable import LrSearchSettings, Outcome, run_lr_search
from tests.helpers import REPO, background_sweep, read_status, run_sweep_cli, wait_for

submitit = pytest.importorskip("submitit")

FAKE = ["sweep=smoke", "sweep.train_module=tests.support.fake_train", "sweep.gpus=[]"]
SUBMITIT_LOCAL = [*FAKE, "sweep.executor=submitit_local"]
FAKE_SLURM = REPO / "tests" / "support" / "fake_slurm"
SLOW = ["+sweep.variants.slow=['+variant=slow']", "sweep.only_variants=[slow]", "sweep.lrs=[0.1,0.2,0.3]"]


def rows_by_variant(out_dir: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in read_status(out_dir)["runs"]:
        rows.setdefault(row["variant"], []).append(row)
    return rows


def sweep_job_record(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "sweep_job.json").read_text())


def controller_alive(job_id: str) -> bool:
    try:
        return b"submitit.local._local" in Path(f"/proc/{int(job_id)}/cmdline").read_bytes()
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------------------------
# submitit's local executor: the whole path, for real
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_grid_runs_end_to_end_through_submitits_local_executor(tmp_path: Path):
    """A healthy variant, a crashing one, one past sweep.timeout_s and one whose run dir another process holds, two at
    a time: the same run dirs, logs and outcomes as the local executor, and each job's id in sweep_status.json and in
    its run dir."""
    from bnexp.runs.lock import take_lock
    from bnexp.sweep.grid import build_jobs, compose_sweep_config

    arguments = [*SUBMITIT_LOCAL, f"sweep.out_dir={tmp_path}", "sweep.workers=2", "sweep.lrs=[0.1]",
                 "sweep.timeout_s=5", "+sweep.variants.crash=['+variant=crash']",
                 "+sweep.variants.slow=['+variant=slow']"]
    jobs = build_jobs(compose_sweep_config([a for a in arguments if a.startswith(("sweep", "+sweep"))]), [])
    held = take_lock(next(job.run_dir for job in jobs if job.variant == "no_bn") / "run.lock", patience_s=0)
    try:
        result = run_sweep_cli(arguments, env_extra={"FAKE_TRAIN_SLEEP": "60"}, timeout=300)
    finally:
        held.close()
    assert result.returncode == 1, result.stderr[-3000:]
    assert "through submitit's local executor with 2 worker(s)" in result.stdout
    rows = rows_by_variant(tmp_path)
    (healthy,), (crash,), (slow,), (refused,) = rows["correct_bn"], rows["crash"], rows["slow"], rows["no_bn"]
    assert healthy["status"] == "finished"
    assert crash["status"] == "failed" and crash["returncode"] == 1 and "stat_groups=3 must divide" in crash["error"]
    assert slow["status"] == "failed" and "timed out after 5 s (sweep.timeout_s)" in slow["error"]
    assert refused["status"] == "failed" and re.fullmatch(
        r"submitit_local job \d+ could not run: \S*RunDirLocked: \S+ is in use by another run .*", refused["error"])
    all_rows = [healthy, crash, slow, refused]
    assert len({row["job_id"] for row in all_rows}) == 4
    for row in (healthy, crash, slow):
        assert sweep_job_record(row["run_dir"])["job_id"] == row["job_id"]
        assert (Path(row["run_dir"]) / "stderr.log").is_file()
    assert f"see {Path(refused['run_dir'])}" not in result.stderr  # a run that never started has no log of its own
    # the run dirs the grid gives, whatever the executor
    assert {Path(row["run_dir"]) for row in all_rows} == {job.run_dir for job in jobs}
    assert not any(controller_alive(row["job_id"]) for row in all_rows)


THRESHOLDS = {"correct_bn": (0.9, "diverge"), "shared_bn": (0.15, "collapse")}
LR_LIMITS_ENV = {"FAKE_TRAIN_LR_LIMITS": "correct_bn=0.9,shared_bn=0.15:collapse"}


@pytest.mark.slow
def test_a_largest_lr_search_runs_end_to_end_through_submitits_local_executor(tmp_path: Path):
    arguments = ["sweep=cpu_mechanism", "sweep.train_module=tests.support.fake_train", "sweep.gpus=[]",
                 "sweep.executor=submitit_local", "sweep.mode=largest_lr", "sweep.workers=2", "sweep.seeds=[0]",
                 "sweep.only_variants=[correct_bn,shared_bn]", "sweep.lr_search_start=0.4", f"sweep.out_dir={tmp_path}"]
    result = run_sweep_cli(arguments, env_extra=LR_LIMITS_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    searches = read_status(tmp_path)["largest_lr"]
    settings = LrSearchSettings(start_lr=0.4, seeds=(0,), ratio=1.414, min_lr=0.001, max_lr=12.8)
    for label, (threshold, how) in THRESHOLDS.items():
        def train(lr, seed):
            return Outcome.TRAINS if lr < threshold else (Outcome.COLLAPSED if how == "collapse" else Outcome.DIVERGED)

        bracket, outcomes = run_lr_search(settings, train)
        found = searches[label]
        assert found["done"] and found["largest_trainable_lr"] < threshold <= found["first_failing_lr"], found
        assert (found["largest_trainable_lr"], found["first_failing_lr"]) == (bracket.last_trains.lr,
                                                                             bracket.first_fails.lr)
        rows = [row for row in read_status(tmp_path)["runs"] if row["variant"] == label]
        assert len(rows) == sum(len(by_seed) for by_seed in outcomes.values())
        assert all(row["job_id"] and row["status"] in ("finished", "diverged") for row in rows)
    assert "correct_bn: largest trainable lr 0.8 (0.8 trains, 1.131 diverges)" in result.stdout


@pytest.mark.slow
def test_a_stop_cancels_the_queued_and_running_jobs(tmp_path: Path):
    arguments = [*SUBMITIT_LOCAL, f"sweep.out_dir={tmp_path}", "sweep.workers=1", *SLOW]
    with background_sweep(arguments, env_extra={"FAKE_TRAIN_SLEEP": "60"}) as process:
        status = wait_for(lambda: (tmp_path / "sweep_status.json").exists()
                          and read_status(tmp_path)["counts"].get("running") == 1 and read_status(tmp_path))
        (running,) = [row for row in status["runs"] if row["status"] == "running"]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    status = read_status(tmp_path)
    assert status["state"] == "interrupted" and status["counts"] == {"failed": 1, "pending": 2}, status["counts"]
    (stopped,) = [row for row in status["runs"] if row["status"] == "failed"]
    assert stopped["run_id"] == running["run_id"] and "SIGTERM" in stopped["error"]
    assert not controller_alive(stopped["job_id"])
    assert stderr.count("not started: the sweep was stopped before it") == 2


@pytest.mark.slow
def test_a_killed_sweep_resumes_following_its_job_still_running_and_redoes_only_what_is_missing(tmp_path: Path):
    """SIGKILL leaves a submitted job running, as a cluster would; the next sweep follows it instead of starting it
    again, keeps the runs that finished and runs the one never submitted."""
    arguments = [*SUBMITIT_LOCAL, f"sweep.out_dir={tmp_path}", "sweep.workers=1", *SLOW]
    with background_sweep(arguments, env_extra={"FAKE_TRAIN_SLEEP": "8"}) as process:
        status = wait_for(lambda: (tmp_path / "sweep_status.json").exists()
                          and read_status(tmp_path)["counts"].get("finished") == 1
                          and read_status(tmp_path)["counts"].get("running") == 1 and read_status(tmp_path),
                          timeout=120)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    (finished,) = [row for row in status["runs"] if row["status"] == "finished"]
    (running,) = [row for row in status["runs"] if row["status"] == "running"]
    assert controller_alive(running["job_id"])  # the job outlives the sweep
    finished_mtime = (Path(finished["run_dir"]) / "summary.json").stat().st_mtime_ns

    result = run_sweep_cli(arguments, env_extra={"FAKE_TRAIN_SLEEP": "0"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "following 1 still queued or running from an earlier sweep" in result.stdout
    status = read_status(tmp_path)
    assert status["counts"] == {"finished": 3}
    rows = {row["run_id"]: row for row in status["runs"]}
    assert rows[running["run_id"]]["job_id"] == running["job_id"]  # followed, not submitted again
    assert sweep_job_record(running["run_dir"])["job_id"] == running["job_id"]
    assert (Path(finished["run_dir"]) / "summary.json").stat().st_mtime_ns == finished_mtime
    assert len({row["job_id"] for row in rows.values()}) == 3


# ----------------------------------------------------------------------------------------------------------------
# SLURM: rendered, and submitted to stand-in commands
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """sbatch, sacct, scancel and srun stand-ins first on PATH; their state and the scripts given to sbatch go to
    the returned folder."""
    state = tmp_path / "slurm"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    return state


def test_the_sbatch_script_submitit_renders_asks_for_what_the_sweep_config_says(tmp_path: Path, fake_slurm: Path):
    from submitit.slurm.slurm import _make_sbatch_string

    from bnexp.sweep.grid import compose_sweep_config
    from bnexp.sweep.submitit_executor import make_submitit_executor

    cfg = compose_sweep_config(["sweep=cpu_mechanism", "sweep.executor=slurm", "sweep.slurm.partition=cpu",
                                "sweep.slurm.account=lab", "sweep.slurm.setup=['module load python/3.11']",
                                "+sweep.slurm.additional_parameters.constraint=skylake", f"sweep.out_dir={tmp_path}"])
    executor = make_submitit_executor("slurm", tmp_path / ".submitit" / "%j", cfg)
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    # the CPU study: no GPU, 2 CPUs, its 1800 s run limit plus 2 minutes to start and stop
    for line in ("#SBATCH --partition=cpu", "#SBATCH --account=lab", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --time=32", "#SBATCH --mem=8GB", "#SBATCH --job-name=bnexp-cpu_mechanism",
                 "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --constraint=skylake",
                 "module load python/3.11"):
        assert line in script, (line, script)
    assert "--gpus-per-node" not in script
    array = _make_sbatch_string(command="x", folder=tmp_path, map_count=84, **executor._executor.parameters)
    assert "#SBATCH --array=0-83%64" in array


def test_the_sweeps_slurm_defaults_are_the_hydra_launchers(tmp_path: Path):
    """conf/sweep/slurm/default.yaml and conf/hydra/launcher/bnexp_slurm.yaml give a run the same resources."""
    sweep_slurm = yaml.safe_load((REPO / "conf" / "sweep" / "slurm" / "default.yaml").read_text())
    launcher = yaml.safe_load((REPO / "conf" / "hydra" / "launcher" / "bnexp_slurm.yaml").read_text())
    shared = set(sweep_slurm) & set(launcher) - {"timeout_min"}  # the sweep's follows sweep.timeout_s
    assert shared >= {"partition", "gpus_per_node", "cpus_per_task", "mem_gb", "array_parallelism", "setup",
                      "additional_parameters"}
    assert {key: sweep_slurm[key] for key in shared} == {key: launcher[key] for key in shared}


@pytest.mark.slow
def test_a_slurm_sweep_submits_one_array_records_the_job_ids_follows_them_after_a_kill_and_cancels_them(
        tmp_path: Path, fake_slurm: Path):
    out_dir = tmp_path / "sweep"
    arguments = [*FAKE, "sweep.executor=slurm", "sweep.slurm.partition=gpu", f"sweep.out_dir={out_dir}"]
    env = {"PATH": os.environ["PATH"], "FAKE_SLURM_DIR": str(fake_slurm)}

    def submitted_ids():
        status = (out_dir / "sweep_status.json").exists() and read_status(out_dir)
        ids = [row.get("job_id") for row in status["runs"]] if status else []
        return ids if ids and all(ids) else None

    with background_sweep(arguments, env_extra=env) as first:
        job_ids = wait_for(submitted_ids, timeout=120)
        first.send_signal(signal.SIGKILL)  # no chance to cancel: the jobs stay queued
        first.wait(timeout=30)
    (script,) = fake_slurm.glob("sbatch_*.sh")
    text = script.read_text()
    for line in ("#SBATCH --array=0-3%4", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --time=60", "#SBATCH --job-name=bnexp-smoke"):
        assert line in text, (line, text)
    assert sorted(job_ids) == [f"{script.stem.split('_')[1]}_{task}" for task in range(4)]
    assert not (fake_slurm / "scancel.log").exists()

    with background_sweep(arguments, env_extra=env) as second:
        wait_for(lambda: "following 4 still queued or running" in (second.stdout.readline() or ""), timeout=120)
        second.send_signal(signal.SIGTERM)
        _, stderr = second.communicate(timeout=120)
    assert second.returncode == 130, stderr
    assert len(list(fake_slurm.glob("sbatch_*.sh"))) == 1  # followed, not submitted again
    assert sorted((fake_slurm / "scancel.log").read_text().split()) == sorted(job_ids)
    status = read_status(out_dir)
    assert status["state"] == "interrupted" and status["counts"] == {"pending": 4}
    assert sorted(row["job_id"] for row in status["runs"]) == sorted(job_ids)
    assert stderr.count("not started: the sweep was stopped before it") == 4


def test_a_job_sbatch_refuses_fails_its_run_with_sbatchs_words(tmp_path: Path, fake_slurm: Path):
    out_dir = tmp_path / "sweep"
    result = run_sweep_cli([*FAKE, "sweep.executor=slurm", "sweep.slurm.partition=nope", f"sweep.out_dir={out_dir}"],
                           env_extra={"PATH": os.environ["PATH"], "FAKE_SLURM_DIR": str(fake_slurm),
                                      "FAKE_SBATCH_ERROR": "sbatch: error: invalid partition specified: nope"})
    assert result.returncode == 1, result.stderr[-3000:]
    status = read_status(out_dir)
    assert status["counts"] == {"failed": 4}
    assert all(row["error"] == "submitting the slurm job failed: sbatch: error: invalid partition specified: nope"
               for row in status["runs"])
    assert "see " not in result.stderr  # nothing ran, so there is no log to point at


def test_without_job_arrays_each_run_is_its_own_job_and_at_most_array_parallelism_are_out(tmp_path: Path,
                                                                                       fake_slurm: Path):
    out_dir = tmp_path / "sweep"
    arguments = [*FAKE, "sweep.executor=slurm", "sweep.slurm.job_arrays=false", "sweep.slurm.array_parallelism=3",
                 f"sweep.out_dir={out_dir}"]
    env = {"PATH": os.environ["PATH"], "FAKE_SLURM_DIR": str(fake_slurm)}
    with background_sweep(arguments, env_extra=env) as process:
        wait_for(lambda: len(list(fake_slurm.glob("sbatch_*.sh"))) == 3)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    scripts = sorted(fake_slurm.glob("sbatch_*.sh"))
    assert len(scripts) == 3  # the fourth waits for a free place, which never comes: the jobs stay queued
    assert not any("--array" in script.read_text() for script in scripts)
    assert sorted((fake_slurm / "scancel.log").read_text().split()) == sorted(script.stem[7:] for script in scripts)

