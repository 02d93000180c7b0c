"""The report's mechanism section, from synthetic run dirs: its table against the metrics, its plots, and old run
dirs without the keys."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from bnexp.report import build as report
from bnexp.report.records import load_run
from bnexp.report.mechanism import mechanism_points
from tests.helpers import PNG_SIGNATURE, make_run_dir

NORMS, ACTS = ["stem.1", "groups.0.norm1"], ["stem.2", "groups.0.act", "groups.0.act.call2"]


def mechanism_record(step: int, dead: list[float], xhat: list[float], spread: list[float], zero: float) -> dict:
    record = {f"act/{name}/dead_frac": value for name, value in zip(ACTS, dead)}
    record.update({f"bn/{name}/xhat_std_ratio": value for name, value in zip(NORMS, xhat)})
    record.update({f"bn/{name}/out_std_ratio": value for name, value in zip(NORMS, spread)})
    record["act/head/in_zero_frac"] = zero
    record["act/head/rms"] = 0.5  # not a mechanism key
    return record


def add_mechanism(run_dir: Path, final: dict, earlier: dict | None = None) -> None:
    """Merge mechanism keys into the run's step records: `final` into the last one, `earlier` into step 0."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in lines if record["kind"] == "step"]
    steps[-1].update(final)
    if earlier is not None:
        steps[0].update(earlier)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in lines))


@pytest.mark.slow
def test_mechanism_section_tables_and_plots(tmp_path):
    runs = tmp_path / "runs"
    values = {  # (variant, seed): final dead fractions, x_hat spreads, output spreads, head zero inputs, accuracy
        ("correct_bn", 0): ([0.0, 0.1, 0.2], [1.0, 1.0], [2.0, 3.0], 0.0, 0.55),
        ("correct_bn", 1): ([0.0, 0.0, 0.3], [1.0, 1.01], [2.5, 4.0], 0.0, 0.53),
        ("shared_bn", 0): ([0.0, 0.0, 1.0], [8.0, 30.0], [9.0, 40.0], 1.0, 0.10),
        ("shared_bn", 1): ([0.0, float("nan"), 1.0], [6.0, 20.0], [7.0, 25.0], 1.0, 0.10),
    }
    for (variant, seed), (dead, xhat, spread, zero, acc) in values.items():
        run_dir = make_run_dir(runs / f"{variant}_{seed}", variant, 0.4, seed, final_test_acc=acc)
        add_mechanism(run_dir, mechanism_record(5, dead, xhat, spread, zero),
                      earlier=mechanism_record(0, [0.0] * 3, [1.0, 1.0], [1.0, 1.0], 0.0))
    make_run_dir(runs / "old_run", "correct_bn", 0.4, 2, final_test_acc=0.54)  # made before the keys existed

    report_path = report.build_report([runs], tmp_path / "out", shared_lr=0.4)
    text = report_path.read_text()
    assert "## Mechanism: channel scales and dead units" in text
    assert "4 of 5 runs record the mechanism metrics; the other 1 predate them" in text
    for name in ("mechanism_lr0.4.png", "mechanism_vs_accuracy.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({name})" in text
    with open(tmp_path / "out" / "mechanism.csv") as handle:
        rows = {row["variant"]: row for row in csv.DictReader(handle)}
    correct, shared = rows["correct_bn"], rows["shared_bn"]
    assert int(correct["n_runs"]) == 2 and int(shared["n_runs"]) == 2
    assert float(correct["dead_mean"]) == pytest.approx((0.3 / 3 + 0.3 / 3) / 2)
    assert float(shared["dead_mean"]) == pytest.approx((1 / 3 + 1 / 2) / 2)  # the NaN layer left out
    assert float(correct["dead_max"]) == pytest.approx(0.25)
    assert float(shared["xhat_max"]) == pytest.approx(25.0) and float(correct["xhat_max"]) == pytest.approx(1.005)
    assert float(shared["spread_max"]) == pytest.approx(32.5)
    assert float(shared["zero_input_max"]) == 1.0 and float(correct["zero_input_max"]) == 0.0
    assert float(correct["final_test_acc"]) == pytest.approx(0.54)
    assert "| shared_bn | 0.4 | 2 | 0.42 | 1.00 | 25 | 32.5 | 1.00 | 10.0% |" in text


def test_mechanism_points_follow_the_measured_steps(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", "shared_bn", 1.6, 0)
    add_mechanism(run_dir, mechanism_record(5, [0.0, 0.5, 1.0], [3.0, 4.0], [5.0, math.inf], 1.0),
                  earlier=mechanism_record(0, [0.0, 0.0, 0.0], [1.0, 2.0], [1.0, 1.5], 0.0))
    points = mechanism_points(load_run(run_dir))
    assert [point.step for point in points] == [0, 5]
    assert points[1].dead_mean == pytest.approx(0.5) and points[1].dead_max == 1.0
    assert points[1].spread_max == 5.0  # the infinite value left out
    assert points[0].xhat_max == 2.0 and points[1].zero_input_max == 1.0


def test_runs_without_mechanism_keys_are_skipped_with_a_note(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        make_run_dir(runs / f"old_{seed}", "shared_bn", 0.4, seed, final_test_acc=0.1)
    text = report.build_report([runs], tmp_path / "out", shared_lr=0.4).read_text()
    assert "_Not shown: no run records the mechanism metrics" in text
    assert not (tmp_path / "out" / "mechanism.csv").exists()
    assert not list((tmp_path / "out").glob("mechanism*.png"))


@pytest.mark.slow
def test_a_diverged_runs_last_accuracy_is_not_in_the_mechanism_table(tmp_path):
    """The trainer leaves a diverged run's last test accuracy in its summary; like the summary table, the mechanism
    table's accuracy is over the runs that finished."""
    runs = tmp_path / "runs"
    for seed, (status, acc) in enumerate([("finished", 0.50), ("finished", 0.60), ("diverged", 0.95)]):
        run_dir = make_run_dir(runs / f"run_{seed}", "shared_bn", 0.4, seed, status=status, final_test_acc=acc)
        add_mechanism(run_dir, mechanism_record(5, [0.0, 0.5, 1.0], [3.0, 4.0], [5.0, 6.0], 0.0))
    text = report.build_report([runs], tmp_path / "out", shared_lr=0.4).read_text()
    with open(tmp_path / "out" / "mechanism.csv") as handle:
        (row,) = csv.DictReader(handle)
    assert int(row["n_runs"]) == 3
    assert float(row["final_test_acc"]) == pytest.approx(0.55)
    assert "| 55.0%" in text
