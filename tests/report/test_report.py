"""bnexp.report: discovery of run dirs (sweep + Hydra multirun layouts), aggregation numbers, plots, robustness."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnexp.report import records
from bnexp.report import build as report
from bnexp.runs.files import find_run_dirs
from tests.helpers import PNG_SIGNATURE, make_run_dir, repo_env

@pytest.fixture
def sweep_like_dir(tmp_path: Path) -> Path:
    """2 variants (one grouped) x 2 lrs x 2 seeds; no_bn diverges at the high lr for one seed."""
    root = tmp_path / "sweep" / "runs"
    accs = {("correct_bn", 0.1): (0.80, 0.84), ("correct_bn", 1.0): (0.70, 0.74),
            ("no_bn", 0.1): (0.60, 0.50), ("no_bn", 1.0): (0.40, None),
            ("grouped_bn", 0.1): (0.75, 0.77), ("grouped_bn", 1.0): (0.65, 0.66)}
    for (variant, lr), by_seed in accs.items():
        for seed, acc in enumerate(by_seed):
            make_run_dir(root / f"{variant}_lr{lr}_seed{seed}", variant, lr, seed,
                         status="diverged" if acc is None else "finished", final_test_acc=acc,
                         stat_groups=8 if variant == "grouped_bn" else None)
    return tmp_path / "sweep"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 2000, path


def test_report_numbers_equal_per_run_summaries(sweep_like_dir: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert report.main([str(sweep_like_dir), "--out", str(out)]) == 0
    rows = {(r["variant"], float(r["lr"])): r for r in read_csv(out / "summary.csv")}
    assert set(rows) == {(v, lr) for v in ("correct_bn", "grouped_bn_g8", "no_bn") for lr in (0.1, 1.0)}

    # Recompute every group from the summary.json files themselves.
    for (variant, lr), row in rows.items():
        summaries = [json.loads(p.read_text()) for p in sweep_like_dir.rglob("summary.json")]
        members = [s for s in summaries if s["lr"] == lr and variant.startswith(s["variant"])]
        finished = [s for s in members if s["status"] == "finished"]
        accs = [s["final_test_acc"] for s in finished]
        assert int(row["n_runs"]) == len(members) == 2
        assert int(row["n_diverged"]) == len(members) - len(finished)
        assert float(row["frac_diverged"]) == pytest.approx((len(members) - len(finished)) / len(members))
        assert float(row["final_test_acc_mean"]) == pytest.approx(sum(accs) / len(accs))
        if len(accs) == 2:
            assert float(row["final_test_acc_std"]) == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
        else:
            assert row["final_test_acc_std"] == ""
        assert float(row["max_grad_norm"]) == pytest.approx(max(s["max_grad_norm"] for s in members))
        reached = [s["steps_to_acc"]["0.5"] for s in finished if s["steps_to_acc"]["0.5"] is not None]
        assert int(row["steps_to_acc_0.5_reached"]) == len(reached)
        if reached:
            assert float(row["steps_to_acc_0.5_mean"]) == pytest.approx(sum(reached) / len(reached))

    stable = {r["variant"]: r for r in read_csv(out / "stable_lr.csv")}
    assert float(stable["correct_bn"]["largest_stable_lr"]) == 1.0
    assert stable["correct_bn"]["stable_at_top_of_grid"] == "True"
    assert float(stable["no_bn"]["largest_stable_lr"]) == 0.1
    assert float(stable["no_bn"]["smallest_unstable_lr"]) == 1.0
    assert float(stable["correct_bn"]["largest_training_lr"]) == 1.0

    per_run = read_csv(out / "runs.csv")
    assert len(per_run) == 12

    for name in ("acc_vs_lr.png", "loss_curves_lr1.png", "grad_norm_heatmap_lr1.png", "init_grad_norms.png"):
        assert_png(out / name)
    text = (out / "report.md").read_text()
    for name in ("acc_vs_lr.png", "loss_curves_lr1.png", "grad_norm_heatmap_lr1.png", "init_grad_norms.png"):
        assert f"]({name})" in text
    assert "JPEG" in text and "Skipped" not in text
    assert "| correct_bn | 1 (top of grid) | – |" in text
    assert (out / "summary.md").read_text().startswith("| variant | lr |")


def test_shared_lr_for_curves_is_largest_where_reference_is_stable(sweep_like_dir: Path):
    groups = records.aggregate(records.discover_runs([sweep_like_dir]))
    assert records.choose_shared_lr(groups, None) == 1.0
    assert records.choose_shared_lr(groups, 0.1) == 0.1


def test_report_tolerates_old_failed_and_truncated_runs(tmp_path: Path):
    root = tmp_path / "old"
    make_run_dir(root / "a", "correct_bn", 0.1, 0, instrumented=False)
    make_run_dir(root / "b", "no_bn", 0.1, 0, instrumented=False)
    make_run_dir(root / "c", "no_bn", 0.2, 0, status="failed", final_test_acc=None, instrumented=False)
    make_run_dir(root / "d", "no_bn", 0.2, 1, status="running", final_test_acc=None, instrumented=False)
    with open(root / "a" / "metrics.jsonl", "a") as metrics:
        metrics.write('{"kind": "step", "step": 7, "train/lo')  # a killed run's half-written last line
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert text.count("_Skipped:") == 2  # heatmap and init grad norms need instrumentation
    assert_png(out / "acc_vs_lr.png")
    assert_png(out / "loss_curves_lr0.1.png")
    assert "Runs that did not complete" in text and "(failed)" in text and "(incomplete)" in text
    stable = {r["variant"]: r for r in read_csv(out / "stable_lr.csv")}
    assert float(stable["no_bn"]["largest_stable_lr"]) == 0.1  # lr 0.2 never completed: not stable


def test_report_warns_when_non_axis_settings_differ(tmp_path: Path):
    make_run_dir(tmp_path / "runs" / "a", "correct_bn", 0.1, 0, extra_config={"train": {"epochs": 1}})
    make_run_dir(tmp_path / "runs" / "b", "correct_bn", 0.1, 1, extra_config={"train": {"epochs": 5}})
    out = tmp_path / "report"
    report.main([str(tmp_path / "runs"), "--out", str(out)])
    assert "`train.epochs`: 1, 5" in (out / "report.md").read_text()


def test_discovers_hydra_multirun_layout_and_dedupes(tmp_path: Path):
    multirun = tmp_path / "multirun" / "2026-01-01_00-00-00"
    for index, (variant, lr) in enumerate([("correct_bn", 0.05), ("shared_bn", 0.05)]):
        make_run_dir(multirun / f"{index}_+variant={variant},optim.lr={lr}", variant, lr, 0, hydra_layout=True)
    (multirun / "multirun.yaml").write_text("hydra: {}\n")
    found = find_run_dirs([tmp_path / "multirun", multirun / "0_+variant=correct_bn,optim.lr=0.05"])
    assert len(found) == 2
    runs = records.discover_runs([tmp_path / "multirun"])
    assert sorted(run.variant for run in runs) == ["correct_bn", "shared_bn"]


def test_missing_path_is_a_clear_error(tmp_path: Path, capsys):
    assert report.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such path" in capsys.readouterr().err


@pytest.mark.slow
def test_report_reads_real_hydra_multirun_output(tmp_path: Path):
    """`python -m bnexp.train -m ...` (Hydra's basic launcher) writes dirs the report understands."""
    env = repo_env({"OMP_NUM_THREADS": "2"})
    command = [sys.executable, "-m", "bnexp.train", "-m", "+variant=correct_bn,no_bn", "optim.lr=0.05",
               "seed=0", "data=synthetic", "data.train_size=128", "data.test_size=64", "model.width=0.125",
               "train.epochs=1", "train.batch_size=64", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "multirun"), "--out", str(out)]) == 0
    rows = read_csv(out / "runs.csv")
    assert sorted(r["variant"] for r in rows) == ["correct_bn", "no_bn"]
    assert all(r["status"] in ("finished", "diverged") for r in rows)
    for row in rows:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        acc = summary["final_test_acc"]
        assert (row["final_test_acc"] == "" and acc is None) or float(row["final_test_acc"]) == pytest.approx(acc)
    assert_png(out / "acc_vs_lr.png")


def test_two_models_are_separate_rows_and_series(tmp_path: Path):
    for model in ("airbench", "vgg"):
        for lr in (0.1, 0.2):
            make_run_dir(tmp_path / "runs" / f"{model}_{lr}", "correct_bn", lr, 0, model=model,
                         final_test_acc=0.6 if model == "vgg" else 0.8)
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    rows = read_csv(out / "summary.csv")
    assert {(r["model"], float(r["lr"]), float(r["final_test_acc_mean"])) for r in rows} == {
        ("airbench", 0.1, 0.8), ("airbench", 0.2, 0.8), ("vgg", 0.1, 0.6), ("vgg", 0.2, 0.6)}
    assert (out / "summary.md").read_text().startswith("| model | variant |")
    for name in ("acc_vs_lr.png", "loss_curves_lr0.2.png", "grad_norm_heatmap_lr0.2.png", "init_grad_norms.png"):
        assert_png(out / name)


@pytest.mark.slow
def test_stuck_at_chance_is_stable_but_does_not_train(tmp_path: Path):
    for lr in (0.1, 1.0):
        for seed in (0, 1):
            make_run_dir(tmp_path / "runs" / f"{lr}_{seed}", "no_bn", lr, seed, final_test_acc=0.1)
    make_run_dir(tmp_path / "runs" / "ok", "correct_bn", 1.0, 0, final_test_acc=0.3)
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    stable = {r["variant"]: r for r in read_csv(out / "stable_lr.csv")}
    assert float(stable["no_bn"]["largest_stable_lr"]) == 1.0 and stable["no_bn"]["largest_training_lr"] == ""
    assert float(stable["correct_bn"]["largest_training_lr"]) == 1.0
    assert report.main([str(tmp_path / "runs"), "--out", str(out), "--min-acc", "0.5"]) == 0
    assert {r["variant"]: r["largest_training_lr"] for r in read_csv(out / "stable_lr.csv")} == {
        "correct_bn": "", "no_bn": ""}
    assert "| no_bn | 1 (top of grid) | – | none |" in (out / "report.md").read_text()


def test_zero_grad_norm_is_dead_not_missing():
    """A dead network logs exact zeros: they must stay distinguishable from steps with no measurement."""
    from bnexp.report.plots import LAYER_PREFIX, log_grad_norm_matrix
    step_records = [{LAYER_PREFIX + "conv": 10.0}, {LAYER_PREFIX + "conv": 0.0}, {"train/loss": 2.3}]
    matrix = log_grad_norm_matrix(step_records, ["conv"])
    assert matrix[0, 0] == 1.0
    assert np.isneginf(matrix[0, 1])
    assert np.isnan(matrix[0, 2])


def test_grad_norm_columns_separate_init_explosion_and_death(tmp_path: Path):
    """The table's grad-norm columns come from grad_norm/global in metrics.jsonl: the step-0 value, the peak
    after step 0 (inf when a norm went non-finite) and the last value (finished seeds only)."""
    root = tmp_path / "runs"
    trajectories = {("shared_bn", 0): [5.0, 2.0, 0.0, 0.0], ("shared_bn", 1): [7.0, 3.0, 0.5, 0.0],
                    ("no_bn", 0): [5.0, 40.0, float("nan")], ("no_bn", 1): [7.0, 9.0, 8.0, 4.0]}
    for (variant, seed), norms in trajectories.items():
        run_dir = make_run_dir(root / f"{variant}_{seed}", variant, 0.4, seed, steps=len(norms),
                               status="diverged" if variant == "no_bn" and seed == 0 else "finished")
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        for record in lines:
            if record["kind"] == "step":
                record["grad_norm/global"] = norms[record["step"]]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in read_csv(out / "summary.csv")}
    assert float(rows["shared_bn"]["grad_norm_at_init_mean"]) == pytest.approx(6.0)
    assert float(rows["shared_bn"]["grad_norm_peak_after_init_max"]) == pytest.approx(3.0)
    assert float(rows["shared_bn"]["grad_norm_last_mean"]) == 0.0  # a dead network, not a missing value
    assert math.isinf(float(rows["no_bn"]["grad_norm_peak_after_init_max"]))
    assert float(rows["no_bn"]["grad_norm_last_mean"]) == pytest.approx(4.0)  # the diverged seed is left out
    table = (out / "summary.md").read_text()
    assert "| peak grad norm after step 0 | last grad norm |" in table
    assert "| 6 | 3 | 0 |" in table and "| 6 | inf | 4 |" in table


def test_sweep_run_that_died_before_its_config_is_still_reported(tmp_path: Path):
    """A sweep run dir with summary.json and sweep_job.json but no config (the trainer died early) is a run."""
    root = tmp_path / "sweep" / "runs"
    make_run_dir(root / "ok", "correct_bn", 0.1, 0)
    died = root / "no_bn_lr0.1_seed0"
    died.mkdir(parents=True)
    (died / "summary.json").write_text(json.dumps({"status": "failed", "error": "ImportError: boom"}))
    (died / "sweep_job.json").write_text(json.dumps({"variant": "no_bn", "lr": 0.1, "seed": 0}))
    (root / "stray").mkdir()
    (root / "stray" / "summary.json").write_text(json.dumps({"status": "finished"}))  # neither config nor job
    runs = {run.variant: run for run in records.discover_runs([tmp_path / "sweep"])}
    assert set(runs) == {"correct_bn", "no_bn"}
    assert runs["no_bn"].status == "failed" and runs["no_bn"].lr == 0.1 and runs["no_bn"].seed == 0


PROVENANCE = {"bnexp_version": "0.1.0", "git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False,
              "python": "3.11.7", "torch": "2.14.1", "triton": "3.8.0", "cuda": None, "device": "cpu"}


def made_from_section(report_md: str) -> str:
    return report_md.split("## Made from\n", 1)[1].split("\n## ", 1)[0]


def test_report_lists_the_versions_its_runs_were_made_from(tmp_path: Path):
    root = tmp_path / "runs"
    make_run_dir(root / "a", "correct_bn", 0.1, 0, provenance=PROVENANCE)
    make_run_dir(root / "b", "correct_bn", 0.1, 1, provenance={**PROVENANCE, "torch": "2.11.0", "git_dirty": True})
    make_run_dir(root / "c", "no_bn", 0.1, 0)  # from before summaries recorded their provenance
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    section = made_from_section((out / "report.md").read_text())
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(records.PROVENANCE_KEYS)
    assert "| `torch` | `2.14.1` (1), `2.11.0` (1) |" in rows
    assert "| `git_dirty` | `false` (1), `true` (1) |" in rows
    assert f"| `git_commit` | `{PROVENANCE['git_commit']}` (2) |" in rows
    assert "| `cuda` | `none` (2) |" in rows and "| `device` | `cpu` (2) |" in rows
    assert "1 of the 3 runs record no provenance" in section

    only_old = tmp_path / "report_old"
    assert report.main([str(root / "c"), "--out", str(only_old)]) == 0
    section = made_from_section((only_old / "report.md").read_text())
    assert "No run records what made it" in section and "| `" not in section


def test_report_shows_run_dirs_below_the_current_dir_relative(tmp_path: Path, monkeypatch):
    """A committed report must not carry the absolute paths of the machine that made it: neither the run dirs below the current
    dir nor the data archive beside it, which the runs' configs name by its absolute path."""
    checkout = tmp_path / "checkout"
    archive = tmp_path / "shared" / "cifar10.tar.xz"
    data = {"data": {"name": "cifar10_folder", "path": str(archive), "data_dir": str(tmp_path / "cache")}}
    make_run_dir(checkout / "sweep" / "runs" / "ok", "correct_bn", 0.1, 0, extra_config=data)
    make_run_dir(checkout / "sweep" / "runs" / "bad", "no_bn", 0.1, 0, status="failed", final_test_acc=None,
                 extra_config=data)
    monkeypatch.chdir(checkout)
    assert report.main(["sweep", "--out", "report"]) == 0
    assert sorted(row["run_dir"] for row in read_csv(checkout / "report" / "runs.csv")) == [
        os.path.join("sweep", "runs", "bad"), os.path.join("sweep", "runs", "ok")]
    text = (checkout / "report" / "report.md").read_text()
    assert str(tmp_path) not in text
    assert f"`{os.path.join('sweep', 'runs', 'bad')}`" in text
    assert f"path: {os.path.join('..', 'shared', 'cifar10.tar.xz')}" in text
    assert f"data_dir: {os.path.join('..', 'cache')}" in text


# ----------------------------------------------------------------------------------------------------------------
# Uncertainty: intervals over seeds, differences, per-seed points; the largest trainable lr
# ----------------------------------------------------------------------------------------------------------------

T_975_DF1 = 12.706204736174707   # published two-sided 95% Student-t quantiles
T_975_DF4 = 2.7764451051977987


@pytest.mark.slow
def test_summary_gives_each_mean_its_95_interval_and_n(sweep_like_dir: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert report.main([str(sweep_like_dir), "--out", str(out)]) == 0
    rows = {(r["variant"], float(r["lr"])): r for r in read_csv(out / "summary.csv")}
    row = rows[("correct_bn", 0.1)]  # seeds 0.80, 0.84: s = 0.02·√2, half width t(0.975, 1)·s/√2
    assert int(row["final_test_acc_n"]) == 2 and row["interval"] == "t"
    assert float(row["final_test_acc_ci_low"]) == pytest.approx(0.82 - T_975_DF1 * 0.02, rel=1e-9)
    assert float(row["final_test_acc_ci_high"]) == pytest.approx(0.82 + T_975_DF1 * 0.02, rel=1e-9)
    one = rows[("no_bn", 1.0)]  # one seed finished, one diverged: n=1, no interval
    assert int(one["final_test_acc_n"]) == 1 and one["final_test_acc_ci_low"] == "" == one["final_test_acc_ci_high"]
    table = (out / "summary.md").read_text()
    assert "| test acc % (mean [95% Student-t interval]) | n |" in table
    assert "| correct_bn | 0.1 | 82.00 [56.59, 107.41] | 2 |" in table
    assert "| no_bn | 1 | 40.00 | 1 | 1/2 |" in table
    assert "95% Student-t interval over those seeds" in (out / "report.md").read_text()

    bootstrap = tmp_path / "bootstrap"
    assert report.main([str(sweep_like_dir), "--out", str(bootstrap), "--interval", "bootstrap"]) == 0
    row = {(r["variant"], float(r["lr"])): r for r in read_csv(bootstrap / "summary.csv")}[("correct_bn", 0.1)]
    # every resample of 2 seeds: means 0.80, 0.82, 0.82, 0.84; their 2.5% and 97.5% points, interpolated
    assert row["interval"] == "bootstrap"
    assert float(row["final_test_acc_ci_low"]) == pytest.approx(0.80 + 0.075 * 0.02)
    assert float(row["final_test_acc_ci_high"]) == pytest.approx(0.82 + 0.925 * 0.02)
    assert "percentile bootstrap" in (bootstrap / "report.md").read_text()


@pytest.mark.slow
def test_differences_hold_only_beyond_their_interval(tmp_path: Path):
    root = tmp_path / "runs"
    accs = {"correct_bn": (0.80, 0.81, 0.82), "shared_bn": (0.50, 0.51, 0.52), "no_bn": (0.60, 0.95, 0.75)}
    for variant, by_seed in accs.items():
        for seed, acc in enumerate(by_seed):
            make_run_dir(root / f"{variant}_{seed}", variant, 0.2, seed, final_test_acc=acc)
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in read_csv(out / "differences.csv")}
    assert set(rows) == {"shared_bn", "no_bn"} and all(r["reference"] == "correct_bn" for r in rows.values())
    # equal variances (0.0001) and n: Welch's df is 2(n-1) = 4, the standard error √(2 · 0.0001 / 3)
    half = T_975_DF4 * math.sqrt(2 * 0.0001 / 3)
    assert float(rows["shared_bn"]["difference"]) == pytest.approx(-0.30)
    assert float(rows["shared_bn"]["ci_low"]) == pytest.approx(-0.30 - half, rel=1e-6)
    assert float(rows["shared_bn"]["ci_high"]) == pytest.approx(-0.30 + half, rel=1e-6)
    assert rows["shared_bn"]["resolved"] == "True" and rows["no_bn"]["resolved"] == "False"
    section = (out / "report.md").read_text().split("## Differences\n", 1)[1].split("\n## ", 1)[0]
    assert "**lr 0.2**" in section
    assert ("- shared_bn − correct_bn: -30.0 points [-32.3, -27.7] (n=3 vs 3) → holds: shared_bn < correct_bn"
            in section)
    assert "- no_bn − correct_bn: -4.3 points" in section and "no_bn vs correct_bn: not resolved" in section


def test_accuracy_plot_draws_every_seed_and_the_interval(sweep_like_dir: Path, tmp_path: Path, monkeypatch):
    from bnexp.report import plots as report_plots

    drawn = {}

    def keep_figure(figure, path):
        axes = figure.axes[0]
        drawn["points"] = sorted(round(float(y), 6) for collection in axes.collections
                                 if type(collection).__name__ == "PathCollection"
                                 for _, y in collection.get_offsets())
        drawn["bars"] = sorted((round(float(segment[0][1]), 6), round(float(segment[1][1]), 6))
                               for collection in axes.collections if type(collection).__name__ == "LineCollection"
                               for segment in collection.get_segments())
        return report_plots.plt.close(figure)

    monkeypatch.setattr(report_plots, "save_figure", keep_figure)
    groups = records.aggregate(records.discover_runs([sweep_like_dir]))
    report_plots.plot_accuracy_vs_lr(groups, tmp_path)
    finished = {round(100 * acc, 6) for acc in (0.80, 0.84, 0.70, 0.74, 0.60, 0.50, 0.40, 0.75, 0.77, 0.65, 0.66)}
    assert finished <= set(drawn["points"])
    low, high = 100 * (0.82 - T_975_DF1 * 0.02), 100 * (0.82 + T_975_DF1 * 0.02)
    assert (round(low, 6), round(high, 6)) in drawn["bars"]


def write_grad_norms(run_dir: Path, norms: list[float]) -> None:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in lines:
        if record["kind"] == "step":
            record["grad_norm/global"] = norms[min(record["step"], len(norms) - 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_largest_trainable_lr_per_variant_with_its_bracket_and_plot(tmp_path: Path):
    root = tmp_path / "runs"
    by_size = {"variant": {"name": "grouped_bn_4ch", "norm": "grouped", "stat_groups": None,
                           "channels_per_group": 4}}
    lrs = (0.1, 0.4, 1.6)
    for seed in (0, 1):
        for lr in lrs:
            # correct_bn: seed 1 diverges at 1.6 only
            make_run_dir(root / f"c_{lr}_{seed}", "correct_bn", lr, seed,
                         status="diverged" if (lr, seed) == (1.6, 1) else "finished", final_test_acc=0.7)
            # shared_bn: at 0.4 and above the gradient dies (accuracy alone would pass), so it collapses
            shared = make_run_dir(root / f"s_{lr}_{seed}", "shared_bn", lr, seed, final_test_acc=0.5)
            if lr >= 0.4:
                write_grad_norms(shared, [3.0, 1.0, 0.0])
            # 4 channels per statistic: at chance from 1.6 on
            make_run_dir(root / f"g_{lr}_{seed}", "grouped_bn", lr, seed, extra_config=by_size,
                         final_test_acc=0.1 if lr >= 1.6 else 0.6)
            # no normalisation: diverges at every lr tried
            make_run_dir(root / f"n_{lr}_{seed}", "no_bn", lr, seed, status="diverged", final_test_acc=None)
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    found = {r["variant"]: r for r in read_csv(out / "largest_trainable_lr.csv")}
    assert found["correct_bn"]["bracket"] == "largest trainable lr 0.4 (0.4 trains, 1.6 diverges)"
    assert found["shared_bn"]["bracket"] == "largest trainable lr 0.1 (0.1 trains, 0.4 collapses)"
    assert found["grouped_bn_4ch"]["bracket"] == "largest trainable lr 0.4 (0.4 trains, 1.6 collapses)"
    assert found["no_bn"]["bracket"] == "no trainable lr down to 0.1 (0.1 diverges)"
    assert found["no_bn"]["largest_trainable_lr"] == "" and found["no_bn"]["floored"] == "True"
    assert {v: r["channels_per_statistic"] for v, r in found.items()} == {
        "correct_bn": "1", "grouped_bn_4ch": "4", "shared_bn": "all", "no_bn": "no norm"}
    assert float(found["correct_bn"]["largest_trainable_lr"]) == 0.4
    assert float(found["correct_bn"]["first_failing_lr"]) == 1.6
    assert_png(out / "largest_trainable_lr.png")
    text = (out / "report.md").read_text()
    assert "| correct_bn | 1 | 0.4 | largest trainable lr 0.4 (0.4 trains, 1.6 diverges) | 0.1, 0.4, 1.6 |" in text
    assert "](largest_trainable_lr.png)" in text
    # the old name is gone, and the section says how it differs from the edge of stability (no sharpness here)
    assert "## Largest trainable learning rate" in text and "Edge of stability" not in text
    assert "This is not the *edge of stability* in the field's sense" in text
    assert not (out / "edge_of_stability.csv").exists()
    assert found["correct_bn"]["lowest_lr_sharpness_at_threshold"] == ""

    only_low = tmp_path / "low"
    for seed in (0, 1):
        make_run_dir(only_low / f"c_{seed}", "correct_bn", 0.1, seed)
    assert report.main([str(only_low), "--out", str(tmp_path / "low_report")]) == 0
    (capped,) = read_csv(tmp_path / "low_report" / "largest_trainable_lr.csv")
    assert capped["capped"] == "True" and capped["bracket"].startswith("largest trainable lr >= 0.1")
