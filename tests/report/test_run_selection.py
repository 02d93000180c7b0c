"""Which runs the report counts: one run per seed at each variant x lr (the newest that completed, named in the
report), runs that failed on a bad lr listed as failed, and run dirs whose summary.json is not a file skipped with
the reason."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from bnexp.report import build as report
from bnexp.report.run_records import load_runs
from tests.helpers import make_run_dir


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def section(text: str, heading: str) -> str:
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0] if f"## {heading}\n" in text else ""


def written_at(run_dir: Path, when: float) -> Path:
    os.utime(run_dir / "summary.json", (when, when))
    return run_dir


def test_a_seed_run_twice_counts_once_the_newest_that_completed(tmp_path: Path):
    """A sweep re-run after its yaml changed leaves a second run dir per seed (another settings hash)."""
    root = tmp_path / "sweep" / "runs"
    old = written_at(make_run_dir(root / "correct_bn_lr0.1_seed0_aaaa", "correct_bn", 0.1, 0, final_test_acc=0.30),
                     1_000_000)
    new = written_at(make_run_dir(root / "correct_bn_lr0.1_seed0_bbbb", "correct_bn", 0.1, 0, final_test_acc=0.70),
                     2_000_000)
    # seed 1: the newer attempt failed, so the older finished run is the one that counts
    done = written_at(make_run_dir(root / "correct_bn_lr0.1_seed1_aaaa", "correct_bn", 0.1, 1, final_test_acc=0.50),
                      1_000_000)
    failed = written_at(make_run_dir(root / "correct_bn_lr0.1_seed1_bbbb", "correct_bn", 0.1, 1, status="failed",
                                     final_test_acc=None), 2_000_000)
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "sweep"), "--out", str(out)]) == 0
    (row,) = read_csv(out / "summary.csv")
    assert int(row["n_runs"]) == 2 and int(row["final_test_acc_n"]) == 2
    assert float(row["final_test_acc_mean"]) == pytest.approx((0.70 + 0.50) / 2)
    assert sorted(r["run_dir"] for r in read_csv(out / "runs.csv")) == sorted(str(d.resolve()) for d in (new, done))
    text = (out / "report.md").read_text()
    assert "**Repeated seeds:** 2 runs repeat a seed" in text
    repeats = section(text, "Repeated seeds")
    assert (f"- correct_bn lr=0.1 seed=0: kept `{new.resolve()}` (finished, " in repeats
            and f"the newest that finished or diverged; left out `{old.resolve()}` (finished, " in repeats)
    assert f"- correct_bn lr=0.1 seed=1: kept `{done.resolve()}` (finished, " in repeats
    assert f"left out `{failed.resolve()}` (failed, " in repeats
    assert "Runs that did not complete" not in text  # the failed attempt was made good by its seed's other run


def test_seeds_of_other_variants_lrs_or_models_are_not_repeats(tmp_path: Path):
    root = tmp_path / "runs"
    for index, (variant, lr, model) in enumerate([("correct_bn", 0.1, "airbench"), ("shared_bn", 0.1, "airbench"),
                                                  ("correct_bn", 0.2, "airbench"), ("correct_bn", 0.1, "vgg")]):
        make_run_dir(root / str(index), variant, lr, 0, model=model)
    from bnexp.report.selection import counted_runs
    runs, repeats = counted_runs(load_runs([root])[0])
    assert len(runs) == 4 and repeats == []


def test_a_run_that_failed_on_a_nan_lr_is_a_failed_run_not_a_skipped_dir(tmp_path: Path):
    root = tmp_path / "runs"
    make_run_dir(root / "ok", "correct_bn", 0.1, 0)
    # what the trainer leaves when the schema refuses optim.lr=nan: the summary's lr is null, the config's nan
    bad = make_run_dir(root / "nan_lr", "correct_bn", 0.1, 1, status="failed", final_test_acc=None)
    summary = json.loads((bad / "summary.json").read_text())
    summary.update(lr=None, error="ConfigError: optim.lr=nan is not a finite number; e.g. optim.lr=0.1")
    (bad / "summary.json").write_text(json.dumps(summary))
    config = yaml.safe_load((bad / "config.yaml").read_text())
    config["optim"]["lr"] = float("nan")
    (bad / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## Run dirs skipped" not in text
    assert "**Missing results:** 1 run failed" in text
    assert (f"- correct_bn lr=nan seed=1 (failed): ConfigError: optim.lr=nan is not a finite number; "
            f"e.g. optim.lr=0.1 — `{bad.resolve()}`") in section(text, "Runs that did not complete")
    rows = {row["run_dir"]: row for row in read_csv(out / "runs.csv")}
    assert rows[str(bad.resolve())]["status"] == "failed" and rows[str(bad.resolve())]["lr"] == ""
    (summary_row,) = read_csv(out / "summary.csv")  # the tables hold only the run with an lr
    assert float(summary_row["lr"]) == 0.1 and int(summary_row["n_runs"]) == 1


def test_a_finished_run_without_an_lr_is_still_skipped(tmp_path: Path):
    run_dir = make_run_dir(tmp_path / "runs" / "a", "correct_bn", 0.1, 0)
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "lr": -1}))
    runs, skipped = load_runs([tmp_path / "runs"])
    assert runs == [] and "is not a positive number" in skipped[0].reason


def test_a_summary_json_that_is_a_directory_is_skipped_with_the_reason(tmp_path: Path):
    root = tmp_path / "runs"
    make_run_dir(root / "ok", "correct_bn", 0.1, 0)
    odd = make_run_dir(root / "odd", "correct_bn", 0.1, 1)
    (odd / "summary.json").unlink()
    (odd / "summary.json").mkdir()
    (odd / "summary.json" / "config.yaml").write_text("a: 1\n")  # not a run dir of its own
    (root / "not_a_run" / "summary.json").mkdir(parents=True)  # nothing marks this one as a run dir
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "**Skipped:** 1 run dir that could not be read" in text
    assert (f"- `{odd.resolve()}`: summary.json is a directory, so the run's result cannot be read"
            in section(text, "Run dirs skipped"))
    assert "not_a_run" not in text
