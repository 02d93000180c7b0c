"""bnexp.report's command line: settings it cannot use are refused with one line and exit code 2, before anything
is written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bnexp.report import build as report
from tests.helpers import REPO, make_run_dir, repo_env


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for variant in ("correct_bn", "shared_bn"):
        for seed in (0, 1):
            make_run_dir(tmp_path / "runs" / f"{variant}_{seed}", variant, 0.1, seed, instrumented=False)
    return tmp_path / "runs"


def refused(argv: list[str], capsys) -> str:
    """The one line main printed when it refused `argv` with exit code 2."""
    assert report.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnexp.report: error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("value", ["2", "-0.1", "nan", "20"])
def test_min_acc_outside_0_to_1_is_refused(runs, tmp_path, capsys, value):
    line = refused([str(runs), "--out", str(tmp_path / "out"), "--min-acc", value], capsys)
    assert f"--min-acc {float(value):g} is not an accuracy" in line and "between 0 and 1" in line
    assert not (tmp_path / "out").exists()


def test_min_acc_at_the_ends_is_taken(runs, tmp_path):
    for value in ("0", "1"):
        assert report.main([str(runs), "--out", str(tmp_path / value), "--min-acc", value]) == 0


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_shared_lr_that_is_not_positive_is_refused(runs, tmp_path, capsys, value):
    assert f"--lr {float(value):g} is not a learning rate" in refused(
        [str(runs), "--out", str(tmp_path / "out"), "--lr", value], capsys)


def test_an_unknown_reference_is_refused_with_the_variants_there_are(runs, tmp_path, capsys):
    line = refused([str(runs), "--out", str(tmp_path / "out"), "--reference", "shraed_bn"], capsys)
    assert "--reference shraed_bn is not a variant of these runs (correct_bn, shared_bn)" in line
    assert line.endswith("did you mean --reference shared_bn?")
    assert not (tmp_path / "out").exists()
    # a reference that is there is taken, and the differences are against it
    assert report.main([str(runs), "--out", str(tmp_path / "out"), "--reference", "shared_bn"]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "- correct_bn − shared_bn: " in text


def test_the_default_reference_need_not_be_among_the_runs(tmp_path):
    make_run_dir(tmp_path / "runs" / "a", "shared_bn", 0.1, 0, instrumented=False)
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert "_No lr has finished seeds of `correct_bn` and another variant._" in (
        tmp_path / "out" / "report.md").read_text()


def test_out_that_is_a_file_is_one_line_and_exit_2(runs, tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    command = [sys.executable, "-m", "bnexp.report", str(runs), "--out", str(existing)]
    result = subprocess.run(command, cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"bnexp.report: error: --out {existing} is a file: give a directory for the report (it is created if "
        "missing)"]
    assert existing.read_text() == "keep me\n"


def test_out_below_a_file_is_one_line_and_exit_2(runs, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me\n")
    line = refused([str(runs), "--out", str(tmp_path / "notes.txt" / "report")], capsys)
    assert f"--out {tmp_path / 'notes.txt' / 'report'} cannot be made: Not a directory" in line
    assert (tmp_path / "notes.txt").read_text() == "keep me\n"
