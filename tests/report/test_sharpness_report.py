"""The report's sharpness section: peak sharpness against the threshold per variant x lr, the lowest lr at which it
reaches the threshold, and the plot, from the probe's sharpness keys in metrics.jsonl."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from bnexp.report import build as report
from tests.helpers import PNG_SIGNATURE, make_run_dir


def add_sharpness(run_dir: Path, top_eigs: list[float], threshold: float | None) -> None:
    """Give the run's step records sharpness keys, one measurement per step (the fake run logs 6 steps)."""
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [record for record in records if record["kind"] == "step"]
    for record, top in zip(steps, top_eigs):
        record["sharpness/top_eig"] = top
        if threshold is not None:
            record["sharpness/threshold"] = threshold
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def test_sharpness_section_tables_the_peak_ratio_and_the_lowest_lr_at_the_threshold(tmp_path):
    root = tmp_path / "runs"
    # correct_bn stays below its threshold (2/lr-like: 40 at lr 0.1, 4 at lr 1.0) at lr 0.1 and reaches it at 1.0;
    # shared_bn reaches it at lr 0.1 already, in one of its two seeds
    cases = {("correct_bn", 0.1, 0): [5, 10, 20, 30, 30, 30], ("correct_bn", 0.1, 1): [5, 10, 20, 20, 20, 20],
             ("correct_bn", 1.0, 0): [1, 2, 3, 4.5, 4, 4], ("shared_bn", 0.1, 0): [10, 30, 41, 40, 39, 40],
             ("shared_bn", 0.1, 1): [10, 20, 30, 35, 35, 35]}
    for (variant, lr, seed), tops in cases.items():
        run_dir = make_run_dir(root / f"{variant}_{lr}_{seed}", variant, lr, seed)
        add_sharpness(run_dir, tops, threshold=4.0 / lr)
    make_run_dir(root / "no_bn", "no_bn", 0.1, 0)  # measured nothing: not in the table

    out = tmp_path / "report"
    text = report.build_report([root], out).read_text()
    rows = {(row["variant"], float(row["lr"])): row for row in csv.DictReader(open(out / "sharpness.csv"))}
    assert set(rows) == {("correct_bn", 0.1), ("correct_bn", 1.0), ("shared_bn", 0.1)}
    assert float(rows[("correct_bn", 0.1)]["peak_ratio"]) == (30 / 40 + 20 / 40) / 2
    assert rows[("correct_bn", 0.1)]["runs_reaching_threshold"] == "0"
    assert rows[("correct_bn", 1.0)]["runs_reaching_threshold"] == "1"
    assert rows[("correct_bn", 1.0)]["first_step_at_threshold"] == "3"  # 4.5 >= 4 at the fourth step
    assert rows[("shared_bn", 0.1)]["runs_reaching_threshold"] == "1"
    assert float(rows[("shared_bn", 0.1)]["peak_top_eig"]) == (41 + 35) / 2
    assert "## Sharpness: the edge of stability" in text
    assert "correct_bn: 1; shared_bn: 0.1." in text
    assert (out / "sharpness.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "5 of 6 runs measured the sharpness" in text
    # the largest trainable lr (a different notion) is given with the edge of stability beside it
    beside = {row["variant"]: row["lowest_lr_sharpness_at_threshold"]
              for row in csv.DictReader(open(out / "largest_trainable_lr.csv"))}
    assert beside == {"correct_bn": "1.0", "shared_bn": "0.1", "no_bn": ""}
    assert "| edge of stability: lowest lr where sharpness reached the threshold |" in text
    assert "| 0.1, 1 | 1-2 | 1 |" in text and "| shared_bn | all | 0.1 |" in text
    assert text.count("| not measured |") == 1
    assert "The last column is the other notion, the *edge of stability* in the field's sense" in text


def test_without_sharpness_the_section_says_how_to_turn_it_on(tmp_path):
    make_run_dir(tmp_path / "runs" / "a", "correct_bn", 0.1, 0)
    text = report.build_report([tmp_path / "runs"], tmp_path / "report").read_text()
    assert "no run measured sharpness (`instrument.sharpness_every` > 0 turns it on)" in text
    assert not (tmp_path / "report" / "sharpness.csv").exists()


def test_adamw_runs_have_sharpness_but_no_threshold(tmp_path):
    run_dir = make_run_dir(tmp_path / "runs" / "a", "correct_bn", 0.1, 0)
    add_sharpness(run_dir, [1, 2, 3, 4, 5, 6], threshold=None)
    text = report.build_report([tmp_path / "runs"], tmp_path / "report").read_text()
    row = next(csv.DictReader(open(tmp_path / "report" / "sharpness.csv")))
    assert row["peak_top_eig"] == "6.0" and row["peak_ratio"] == "" and row["runs_reaching_threshold"] == "0"
    assert "lowest lr at which sharpness reached the threshold" not in text
