"""bnexp.sweep: grid expansion, deterministic run dirs, failure recording, kill + resume, GPU worker plan,
and one end-to-end sweep with the real trainer.

The failure / kill mechanics use tests/support/fake_train.py (a stand-in trainer that starts in milliseconds and whose
behaviour is chosen by its variant) so they are fast and deterministic; the end-to-end test uses bnexp.train.
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bnexp.sweep import grid, processes
from tests.helpers import REPO, background_sweep, read_status, repo_env, run_sweep_cli, wait_for

FAKE = ["sweep=smoke", "sweep.train_module=tests.support.fake_train"]


def rows_by_variant(out_dir: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in read_status(out_dir)["runs"]:
        rows.setdefault(row["variant"], []).append(row)
    return rows


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------------------------
# Grid expansion and run dirs (no subprocesses)
# ----------------------------------------------------------------------------------------------------------------

def test_grid_is_variants_x_models_x_lrs_x_seeds_with_deterministic_dirs(tmp_path: Path):
    cfg = grid.compose_sweep_config(["sweep=lr_stability", f"sweep.out_dir={tmp_path}",
                                      "sweep.models=[airbench,vgg]", "sweep.lrs=[0.1,0.2]", "sweep.seeds=[0,1]"])
    jobs = grid.build_jobs(cfg, ["data=synthetic"])
    assert len(jobs) == len(cfg.variants) * 2 * 2 * 2
    again = grid.build_jobs(cfg, ["data=synthetic"])
    assert [j.run_dir for j in jobs] == [j.run_dir for j in again]
    assert len({j.run_dir for j in jobs}) == len(jobs)
    grouped = next(j for j in jobs if j.variant == "grouped_bn_g8" and j.model == "vgg")
    assert {"+variant=grouped_bn", "variant.stat_groups=8", "model=vgg", "data=synthetic"} <= set(grouped.overrides)
    assert grouped.run_dir.parent == tmp_path / "runs"
    assert grouped.run_dir.name.startswith("vgg_grouped_bn_g8_lr0.")
    # A different recipe (train override) must not reuse the dirs: resume would skip runs it never did.
    other = grid.build_jobs(cfg, ["data=synthetic", "train.epochs=3"])
    assert not {j.run_dir for j in jobs} & {j.run_dir for j in other}


@pytest.mark.slow
@pytest.mark.parametrize("sweep_name", sorted(p.stem for p in (REPO / "conf" / "sweep").glob("*.yaml")))
def test_every_sweep_config_composes_into_valid_runs(sweep_name: str, tmp_path: Path):
    """Each conf/sweep/*.yaml: every variant x model of its grid composes a train config that builds its model."""
    from bnexp.config.compose import compose_train_config
    from bnexp.models import build_model

    cfg = grid.compose_sweep_config([f"sweep={sweep_name}", f"sweep.out_dir={tmp_path}"])
    jobs = grid.build_jobs(cfg, [])
    assert len(jobs) == len(cfg.variants) * max(1, len(cfg.models or [])) * len(cfg.lrs) * len(cfg.seeds)
    for job in {(j.variant, j.model): j for j in jobs}.values():
        train_cfg = compose_train_config(list(job.overrides))
        assert train_cfg.optim.lr == job.lr and train_cfg.seed == job.seed
        if job.model:
            assert train_cfg.model.name == job.model
        build_model(train_cfg.model.name, train_cfg.variant.norm, width=train_cfg.model.width,
                    stat_groups=train_cfg.variant.stat_groups,
                    channels_per_group=train_cfg.variant.get("channels_per_group"), backend="torch")


def test_cli_overrides_split_and_later_train_override_wins(tmp_path: Path):
    sweep_overrides, train_overrides = grid.split_cli_overrides(
        ["sweep=smoke", "sweep.seeds=[1]", "+sweep.variants.x=[a]", "data.train_size=64", "+foo=1"])
    assert sweep_overrides == ["sweep=smoke", "sweep.seeds=[1]", "+sweep.variants.x=[a]"]
    assert train_overrides == ["data.train_size=64", "+foo=1"]
    cfg = grid.compose_sweep_config(["sweep=smoke", f"sweep.out_dir={tmp_path}", "sweep.only_variants=[no_bn]"])
    jobs = grid.build_jobs(cfg, ["data.train_size=64"])
    assert [j.variant for j in jobs] == ["no_bn", "no_bn"]
    assert "data.train_size=64" in jobs[0].overrides and "data.train_size=256" not in jobs[0].overrides
    with pytest.raises(ValueError, match="grid axes"):
        grid.build_jobs(cfg, ["optim.lr=0.3"])


def test_lr_stability_grid_covers_every_variant_on_a_wide_log_grid(tmp_path: Path):
    cfg = grid.compose_sweep_config(["sweep=lr_stability"])
    labels = set(cfg.variants)
    assert {"correct_bn", "shared_bn", "no_bn", "torch_bn"} <= labels
    groups = sorted(int(o.split("=")[1]) for v in cfg.variants.values() for o in v if "stat_groups" in o)
    assert len(groups) >= 3
    assert list(cfg.seeds) == [0, 1, 2]
    lrs = sorted(cfg.lrs)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) / min(ratios) < 1.01 and lrs[-1] / lrs[0] >= 64  # a wide log grid
    # stat_groups must divide every norm layer's channel count of the sweep's model (airbench, width 1)
    from bnexp.models import build_model
    from bnexp.norm import BatchNorm2d

    for stat_groups in groups:
        model = build_model("airbench", "grouped", width=1.0, stat_groups=stat_groups)
        widths = [m.num_features for m in model.modules() if isinstance(m, BatchNorm2d)]
        assert widths and all(c % stat_groups == 0 for c in widths), (stat_groups, widths)


def test_gpu_plan_one_worker_per_gpu_and_env(monkeypatch):
    cfg = grid.compose_sweep_config(["sweep=smoke", "sweep.gpus=[0,1,2]"])
    plan = processes.plan_workers(cfg, n_jobs=10)
    assert plan.count == 3 and plan.gpu_of_worker == ["0", "1", "2"]
    assert processes.child_env(plan.gpu_of_worker[1], 1)["CUDA_VISIBLE_DEVICES"] == "1"
    cpu = processes.plan_workers(grid.compose_sweep_config(["sweep=smoke", "sweep.gpus=[]", "sweep.workers=2"]), 10)
    assert cpu.count == 2 and cpu.gpu_of_worker == [None, None]
    assert cpu.threads_per_worker == max(1, (os.cpu_count() or 1) // 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert processes.visible_gpu_ids("auto") == ["3", "5"]


def test_override_keys_and_values_go_through_hydras_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    assert grid.merge_overrides(["+variant=a", "data.path='/x y,z'", "~model"], ["variant=b", "++model=vgg"]) == [
        "data.path='/x y,z'", "variant=b", "++model=vgg"]
    with pytest.raises(OverrideParseException):
        grid.split_cli_overrides(["data.train_size=[1,"])
    parser = OverridesParser.create()
    for path in ["/runs/a", "/my runs/a,b=c", "/runs/it's", "/runs/a\\b", "/runs/a\\'b", "/runs/end\\"]:
        quoted = grid.quote_for_hydra(path)
        assert parser.parse_override(f"hydra.run.dir={quoted}").value() == path, (path, quoted)


def test_malformed_override_is_a_clear_error():
    result = run_sweep_cli(["sweep=smoke", "data.train_size=[1,"])
    assert result.returncode == 2
    assert "bnexp.sweep: error" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("module", ["bnexp.train", "tests.support.fake_train"])
def test_a_run_whose_sweep_died_before_it_started_stops_itself(module: str, tmp_path: Path):
    """The die-with-parent guard runs first in the training process; when the sweep that started it is already
    gone (its pid is not the parent's), the run stops at once instead of training as an orphan."""
    from bnexp.runs.orphan_guard import SWEEP_PID_VARIABLE

    not_the_parent = str(2 ** 22 + 1)  # above Linux's largest pid
    env = repo_env({SWEEP_PID_VARIABLE: not_the_parent})
    result = subprocess.run([sys.executable, "-m", module, "+variant=slow", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGTERM, result.stderr[-2000:]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_dry_run_prints_commands_and_runs_nothing(tmp_path: Path):
    result = run_sweep_cli([*FAKE, f"sweep.out_dir={tmp_path}", "--dry-run"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("hydra.run.dir=") == 4
    assert not (tmp_path / "runs").exists()


def test_bad_sweep_name_is_a_clear_error():
    result = run_sweep_cli(["sweep=does_not_exist"])
    assert result.returncode == 2
    assert "bnexp.sweep: error" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["lots", "2.5", "0"])
def test_bad_worker_count_is_a_clear_error_before_any_status_is_written(tmp_path: Path, value: str):
    result = run_sweep_cli([*FAKE, f"sweep.out_dir={tmp_path}", "sweep.gpus=[]", f"sweep.workers={value}"])
    assert result.returncode == 2
    assert re.search(r"sweep\.workers=\S+ must be a whole number of at least 1, or auto", result.stderr), \
        result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "sweep_status.json").exists()


@pytest.mark.parametrize("key, value", [("workers", True), ("workers", -3), ("workers", 2.5),
                                        ("threads_per_worker", 0), ("threads_per_worker", -2)])
def test_worker_counts_that_are_not_whole_and_positive_are_refused_not_rounded(key: str, value):
    with pytest.raises(ValueError, match=rf"sweep\.{key}=.* must be a whole number of at least 1, or auto"):
        processes.plan_workers(OmegaConf.create({"gpus": [], key: value}), n_jobs=8)
    plan = processes.plan_workers(OmegaConf.create({"gpus": [], key: 2.0}), n_jobs=8)  # a whole float is that count
    assert (plan.count if key == "workers" else plan.threads_per_worker) == 2


@pytest.mark.parametrize("lrs", ["[-1,nan]", "[]", "[abc]", "0.1"])
def test_bad_lrs_are_one_line_naming_the_key_before_anything_is_written(lrs: str, tmp_path: Path):
    out_dir = tmp_path / "sweep"
    for extra in ([], ["--dry-run"]) if lrs == "[-1,nan]" else ([],):
        result = run_sweep_cli([*FAKE, f"sweep.out_dir={out_dir}", f"sweep.lrs={lrs}", *extra])
        assert result.returncode == 2, (extra, result.stdout, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("bnexp.sweep: error: sweep.lrs=") and "; e.g. sweep.lrs=[" in line, line
        assert not out_dir.exists()


@pytest.mark.parametrize("value", ["0", "2.5"])
def test_a_dry_run_refuses_the_worker_count_the_run_refuses(value: str, tmp_path: Path):
    result = run_sweep_cli([*FAKE, f"sweep.out_dir={tmp_path / 'sweep'}", "sweep.gpus=[]", f"sweep.workers={value}",
                            "--dry-run"])
    assert result.returncode == 2, result.stdout
    assert re.search(r"sweep\.workers=\S+ must be a whole number of at least 1, or auto", result.stderr)
    assert "hydra.run.dir=" not in result.stdout


# ----------------------------------------------------------------------------------------------------------------
# Failures, kills and resume (fake trainer)
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_failing_run_is_recorded_and_the_rest_complete(tmp_path: Path):
    result = run_sweep_cli([*FAKE, f"sweep.out_dir={tmp_path}", "sweep.workers=2",
                            "+sweep.variants.crash=['+variant=crash']", "+sweep.variants.diverge=['+variant=diverge']"])
    assert result.returncode == 1
    assert "did not finish" in result.stderr and "stat_groups=3 must divide" in result.stderr
    rows = rows_by_variant(tmp_path)
    assert [r["status"] for r in rows["correct_bn"] + rows["no_bn"]] == ["finished"] * 4
    assert [r["status"] for r in rows["diverge"]] == ["diverged"] * 2
    for row in rows["crash"]:
        assert row["status"] == "failed" and row["returncode"] == 1
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        # merged into what the run wrote: its own fields survive, status/error are the sweep's
        assert summary["status"] == "failed" and summary["data_source"] == "synthetic"
        assert "ValueError: stat_groups=3 must divide" in summary["error"]
    with open(tmp_path / "runs.csv") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert sorted(r["status"] for r in csv_rows) == ["diverged"] * 2 + ["failed"] * 2 + ["finished"] * 4
    assert read_status(tmp_path)["state"] == "done"


@pytest.mark.slow
def test_killed_run_is_failed_and_resume_redoes_only_it(tmp_path: Path):
    arguments = [*FAKE, f"sweep.out_dir={tmp_path}", "sweep.workers=2", "+sweep.variants.slow=['+variant=slow']"]
    with background_sweep(arguments, env_extra={"FAKE_TRAIN_SLEEP": "60"}) as process:
        def running_slow_pid():
            for path in (tmp_path / "runs").glob("slow_*/summary.json"):
                try:
                    summary = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if summary.get("status") == "running":
                    return summary["pid"]
            return None
        pid = wait_for(running_slow_pid, timeout=60)
        os.kill(pid, signal.SIGKILL)  # a worker's training process dies mid-run
        # the other slow run is killed too once it starts, so the sweep can end
        second = wait_for(lambda: (p := running_slow_pid()) not in (None, pid) and p, timeout=60)
        os.kill(second, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    rows = rows_by_variant(tmp_path)
    assert all(r["status"] == "failed" and "SIGKILL" in r["error"] for r in rows["slow"])
    done_before = {r["run_id"]: (Path(r["run_dir"]) / "summary.json").stat().st_mtime_ns
                   for r in rows["correct_bn"] + rows["no_bn"]}
    assert len(done_before) == 4

    result = run_sweep_cli(arguments, env_extra={"FAKE_TRAIN_SLEEP": "0"})
    assert result.returncode == 0, result.stderr
    assert "4 already finished/diverged, 2 to run" in result.stdout
    rows = rows_by_variant(tmp_path)
    assert all(r["status"] == "finished" for rs in rows.values() for r in rs)
    for run_id, mtime in done_before.items():  # untouched
        assert (tmp_path / "runs" / run_id / "summary.json").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_killed_sweep_takes_its_runs_down_and_resumes(tmp_path: Path):
    arguments = [*FAKE, f"sweep.out_dir={tmp_path}", "sweep.workers=1", "+sweep.variants.slow=['+variant=slow']",
                 "sweep.only_variants=[slow]", "sweep.lrs=[0.1,0.2,0.3]"]
    with background_sweep(arguments, env_extra={"FAKE_TRAIN_SLEEP": "3"}) as process:
        # wait until one run finished and the next one is running, then SIGKILL the sweep itself
        status = wait_for(lambda: (tmp_path / "sweep_status.json").exists()
                          and read_status(tmp_path)["counts"].get("finished", 0) >= 1
                          and read_status(tmp_path)["counts"].get("running", 0) == 1 and read_status(tmp_path))
        running = next(r for r in status["runs"] if r["status"] == "running")
        child_pid = wait_for(lambda: json.loads((Path(running["run_dir"]) / "summary.json").read_text())["pid"]
                             if (Path(running["run_dir"]) / "summary.json").exists() else None)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    wait_for(lambda: not pid_alive(child_pid), timeout=20)  # PDEATHSIG: no orphan left writing the run dir
    assert json.loads((Path(running["run_dir"]) / "summary.json").read_text())["status"] == "running"

    result = run_sweep_cli(arguments, env_extra={"FAKE_TRAIN_SLEEP": "0"})
    assert result.returncode == 0, result.stderr
    finished_before = status["counts"]["finished"]
    assert f"{finished_before} already finished/diverged, {3 - finished_before} to run" in result.stdout
    assert read_status(tmp_path)["counts"] == {"finished": 3}


@pytest.mark.slow
def test_second_sweep_on_a_dir_is_refused_and_sigterm_stops_cleanly(tmp_path: Path):
    arguments = [*FAKE, f"sweep.out_dir={tmp_path}", "sweep.workers=2", "+sweep.variants.slow=['+variant=slow']",
                 "sweep.only_variants=[slow]"]
    with background_sweep(arguments, env_extra={"FAKE_TRAIN_SLEEP": "60"}) as first:
        wait_for(lambda: (tmp_path / "sweep_status.json").exists()
                 and read_status(tmp_path)["counts"].get("running") == 2)
        second = run_sweep_cli(arguments)
        assert second.returncode == 2 and "another sweep" in second.stderr
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr
    status = read_status(tmp_path)
    assert status["state"] == "interrupted" and status["counts"] == {"failed": 2}
    assert all("SIGTERM" in row["error"] for row in status["runs"])


@pytest.mark.slow
def test_runs_that_never_started_are_told_as_such_and_every_log_pointed_at_exists(tmp_path: Path):
    """One worker, three slow runs: the first finds its run dir held by another process and never starts, the
    second is running when the sweep gets SIGTERM, the third has not started yet. Only the second has a log."""
    from bnexp.runs.lock import take_lock

    arguments = [*FAKE, f"sweep.out_dir={tmp_path}", "sweep.workers=1", "+sweep.variants.slow=['+variant=slow']",
                 "sweep.only_variants=[slow]", "sweep.lrs=[0.1,0.2,0.3]"]
    dry = run_sweep_cli([*arguments, "--dry-run"])
    run_dirs = re.findall(r"hydra\.run\.dir=(\S+)", dry.stdout)
    assert len(run_dirs) == 3, dry.stdout
    held = take_lock(Path(run_dirs[0]) / "run.lock", patience_s=0)  # a live process holds the first run dir
    try:
        with background_sweep(arguments, env_extra={"FAKE_TRAIN_SLEEP": "60"}) as process:
            wait_for(lambda: (tmp_path / "sweep_status.json").exists()
                     and read_status(tmp_path)["counts"].get("running") == 1)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
    finally:
        held.close()
    assert process.returncode == 130, stderr
    assert "3 run(s) did not finish" in stderr
    logs = re.findall(r"see (\S+)", stderr)
    assert logs == [f"{run_dirs[1]}/stderr.log"], stderr
    assert all(Path(log).is_file() for log in logs)
    assert "in use by another run" in stderr and "not started" in stderr


@pytest.mark.slow
def test_timeout_fails_the_run(tmp_path: Path):
    result = run_sweep_cli([*FAKE, f"sweep.out_dir={tmp_path}", "sweep.timeout_s=1", "sweep.only_variants=[slow]",
                            "sweep.lrs=[0.1]", "+sweep.variants.slow=['+variant=slow']"],
                           env_extra={"FAKE_TRAIN_SLEEP": "30"})
    assert result.returncode == 1
    (row,) = read_status(tmp_path)["runs"]
    assert row["status"] == "failed" and "timed out after 1 s" in row["error"]


# ----------------------------------------------------------------------------------------------------------------
# End to end with the real trainer
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_sweep_end_to_end_with_failure_and_report(tmp_path: Path):
    """2 variants x 2 lrs x 1 seed with bnexp.train, plus a grouped_bn whose stat_groups does not divide the
    channel count: that run is recorded failed, the others complete, the report agrees with the summaries."""
    out_dir = tmp_path / "sweep"
    arguments = ["sweep=smoke", f"sweep.out_dir={out_dir}", "sweep.workers=2",
                 "+sweep.variants.grouped_bn_g3=['+variant=grouped_bn','variant.stat_groups=3']",
                 "data.train_size=128", "data.test_size=64"]
    result = run_sweep_cli(arguments, timeout=400)
    assert result.returncode == 1, result.stderr[-3000:]
    rows = rows_by_variant(out_dir)
    for variant in ("correct_bn", "no_bn"):
        assert [r["status"] in ("finished", "diverged") for r in rows[variant]] == [True, True], rows[variant]
    assert [r["status"] for r in rows["grouped_bn_g3"]] == ["failed", "failed"]
    failed_summary = json.loads((Path(rows["grouped_bn_g3"][0]["run_dir"]) / "summary.json").read_text())
    assert failed_summary["status"] == "failed" and "stat_groups" in failed_summary["error"]

    # A run killed mid-way leaves summary.json at "running": fake that for one finished run, then re-run for real.
    # Only it and the two failed runs are redone; the other finished runs are left alone.
    killed = Path(rows["correct_bn"][0]["run_dir"])
    summary = json.loads((killed / "summary.json").read_text())
    (killed / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    untouched = {Path(r["run_dir"]): (Path(r["run_dir"]) / "summary.json").stat().st_mtime_ns
                 for r in rows["correct_bn"][1:] + rows["no_bn"]}
    result = run_sweep_cli(arguments, timeout=400)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "3 already finished/diverged, 3 to run" in result.stdout
    assert json.loads((killed / "summary.json").read_text())["status"] in ("finished", "diverged")
    for run_dir, mtime in untouched.items():
        assert (run_dir / "summary.json").stat().st_mtime_ns == mtime

    from bnexp.report import build as report
    report_dir = tmp_path / "report"
    assert report.main([str(out_dir), "--out", str(report_dir)]) == 0
    with open(report_dir / "runs.csv") as handle:
        report_rows = list(csv.DictReader(handle))
    assert len(report_rows) == 6
    for row in report_rows:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert row["status"] == summary["status"]
        if summary.get("final_test_acc") is not None:
            assert float(row["final_test_acc"]) == pytest.approx(summary["final_test_acc"])
    for png in report_dir.glob("*.png"):
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 2000
    assert (report_dir / "acc_vs_lr.png").exists()
