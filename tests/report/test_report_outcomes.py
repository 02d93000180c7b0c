"""The report's accuracy and divergence numbers by how each run ended.

The trainer writes `final_test_acc` after every epoch, so a run that diverged, failed or is still running after
its first epoch has one in its summary. Only finished runs' accuracies enter the means and the differences; the
diverged fraction counts diverged runs among the completed ones (finished or diverged), never among failed or
unfinished ones."""
import csv
import json
import math
from pathlib import Path

import pytest

from bnexp.report import build as report
from bnexp.report import records
from tests.helpers import make_run_dir


@pytest.fixture
def mixed_outcomes(tmp_path: Path) -> Path:
    """A sweep dir with runs in every state, all at lr 0.1: correct_bn 2 finished, 1 diverged, 1 failed and 1
    unfinished, each with an accuracy; shared_bn 2 finished and 1 diverged; grouped_bn 2 finished, one of them on
    synthetic data; no_bn a failed and an unfinished run, and one that died before its config (no data source
    either); and one damaged run dir."""
    root = tmp_path / "sweep"
    runs = [("correct_bn", 0, "finished", 0.80), ("correct_bn", 1, "finished", 0.60),
            ("correct_bn", 2, "diverged", 0.10), ("correct_bn", 3, "failed", 0.05), ("correct_bn", 4, "running", 0.30),
            ("shared_bn", 0, "finished", 0.50), ("shared_bn", 1, "finished", 0.40), ("shared_bn", 2, "diverged", 0.99),
            ("grouped_bn", 0, "finished", 0.70), ("grouped_bn", 1, "finished", 0.72),
            ("no_bn", 0, "failed", 0.70), ("no_bn", 1, "running", 0.70)]
    for variant, seed, status, acc in runs:
        make_run_dir(root / f"{variant}_seed{seed}", variant, 0.1, seed, status=status, final_test_acc=acc,
                     stat_groups=4 if variant == "grouped_bn" else None,
                     **({"data_source": "synthetic"} if (variant, seed) == ("grouped_bn", 1) else {}))
    died = root / "no_bn_seed2"  # the sweep's record of a trainer that died before writing its config
    died.mkdir()
    (died / "summary.json").write_text(json.dumps({"status": "failed", "error": "ImportError: boom"}))
    (died / "sweep_job.json").write_text(json.dumps({"variant": "no_bn", "lr": 0.1, "seed": 2}))
    damaged = make_run_dir(root / "damaged", "correct_bn", 0.1, 9)
    (damaged / "summary.json").write_text('{"status": "fini')  # cut short by a crash
    return root


def groups_by_variant(root: Path) -> dict[str, records.GroupStats]:
    runs, skipped = records.load_runs([root])
    assert [item.run_dir.name for item in skipped] == ["damaged"]
    return {group.variant: group for group in records.aggregate(runs)}


def test_only_finished_runs_enter_the_accuracy_mean(mixed_outcomes: Path):
    groups = groups_by_variant(mixed_outcomes)
    correct = groups["correct_bn"].values
    assert correct["final_test_acc_n"] == 2
    assert correct["final_test_acc_mean"] == pytest.approx(0.70)
    assert correct["final_test_acc_std"] == pytest.approx(math.sqrt(0.02))
    assert correct["best_test_acc_mean"] == pytest.approx(0.70)
    assert correct["n_below_min_acc"] == 0  # the diverged and failed runs' 0.10 and 0.05 are not counted
    assert groups["shared_bn"].values["final_test_acc_mean"] == pytest.approx(0.45)
    assert math.isnan(groups["no_bn"].values["final_test_acc_mean"])
    assert groups["no_bn"].values["final_test_acc_n"] == 0
    assert records.final_accuracies(groups["correct_bn"].runs) == pytest.approx([0.80, 0.60])


def test_the_diverged_fraction_counts_completed_runs_only(mixed_outcomes: Path):
    groups = groups_by_variant(mixed_outcomes)
    correct = groups["correct_bn"].values
    assert (correct["n_runs"], correct["n_finished"], correct["n_diverged"], correct["n_incomplete"]) == (5, 2, 1, 2)
    assert correct["frac_diverged"] == pytest.approx(1 / 3)
    assert groups["shared_bn"].values["frac_diverged"] == pytest.approx(1 / 3)
    assert groups["no_bn"].values["n_incomplete"] == 3
    assert math.isnan(groups["no_bn"].values["frac_diverged"])  # nothing completed: no fraction, not 0


def test_differences_use_finished_seeds_only(mixed_outcomes: Path):
    groups = records.aggregate(records.load_runs([mixed_outcomes])[0])
    (comparison,) = [c for c in records.compare_to_reference(groups) if c.variant == "shared_bn"]
    assert comparison.difference.difference == pytest.approx(0.45 - 0.70)
    assert (comparison.difference.n_a, comparison.difference.n_b) == (2, 2)
    assert not any(c.variant == "no_bn" for c in records.compare_to_reference(groups))


def test_the_report_files_show_the_same_numbers(mixed_outcomes: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert report.main([str(mixed_outcomes), "--out", str(out)]) == 0
    with open(out / "summary.csv") as handle:
        rows = {row["variant"]: row for row in csv.DictReader(handle)}
    assert float(rows["correct_bn"]["final_test_acc_mean"]) == pytest.approx(0.70)
    assert float(rows["correct_bn"]["frac_diverged"]) == pytest.approx(1 / 3)
    assert rows["no_bn"]["final_test_acc_mean"] == rows["no_bn"]["frac_diverged"] == ""
    table = (out / "report.md").read_text()
    correct_row = next(line for line in table.splitlines() if line.startswith("| correct_bn | 0.1 |"))
    cells = [cell.strip() for cell in correct_row.strip("|").split("|")]
    assert cells[2].startswith("70.0") and cells[3:6] == ["2", "1/3", "2"]  # mean, n, diverged, incomplete


def test_the_report_counts_runs_by_outcome_in_words(mixed_outcomes: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert report.main([str(mixed_outcomes), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "13 runs: 6 finished, 3 failed, " in text
    assert ("**Missing results:** 3 runs failed, 2 runs incomplete (no end written, no lock to ask); the tables "
            "and plots use the 8 that finished or diverged.") in text
    assert "**Skipped:** 1 run dir that could not be read" in text
    assert "- `CIFAR-10 JPEG copy (cifar10-jpeg.tar.xz)` (11 runs): the CIFAR-10 JPEG re-encoding" in text
    assert "- `synthetic` (1 run): synthetic data" in text
    assert "- 1 run(s) failed before recording a data source" in text
    assert "largest lr that trains (acc ≥ 20%)" in text
    assert "also asks every seed to reach 20% final test accuracy (`--min-acc`)" in text


def test_a_report_without_usable_runs_says_so(tmp_path: Path):
    root = tmp_path / "sweep"
    damaged = make_run_dir(root / "damaged", "correct_bn", 0.1, 0)
    (damaged / "summary.json").write_text('{"status": "fini')
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert (f"No usable run dirs under `{root}` (1 skipped, listed at the end). The tables below are empty and the "
            "plots skipped.") in text
