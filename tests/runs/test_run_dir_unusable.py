"""A run dir that cannot be created or written is a user error: exit code 2 and one line, not a traceback.

Read-only folders do not stop root, so as root a folder is made read-only with the immutable attribute (chattr +i,
which binds root too); where that is not available to root, those cases are skipped and say why.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnexp.runs.lock import RunDirUnusable
from tests.helpers import REPO, TINY_RUN, compose_config, repo_env


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` read-only for this process, root included, for the block's length."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    made = shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    if not made:
        pytest.skip("running as root, and chattr +i is not available here: root writes into any folder")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def below_a_file(tmp_path: Path) -> tuple[Path, contextlib.AbstractContextManager]:
    (tmp_path / "notes.txt").write_text("a file where a folder is expected\n")
    return tmp_path / "notes.txt" / "run", contextlib.nullcontext()


def in_a_read_only_folder(tmp_path: Path) -> tuple[Path, contextlib.AbstractContextManager]:
    return tmp_path / "locked" / "run", read_only(tmp_path / "locked")


def read_only_itself(tmp_path: Path) -> tuple[Path, contextlib.AbstractContextManager]:
    return tmp_path / "run", read_only(tmp_path / "run")


CASES = {"below a regular file": below_a_file, "in a read-only folder": in_a_read_only_folder,
         "read-only itself": read_only_itself}


@pytest.mark.parametrize("case", list(CASES))
def test_the_command_exits_2_with_one_line_for_a_run_dir_it_cannot_use(case, tmp_path):
    run_dir, condition = CASES[case](tmp_path)
    with condition:
        result = subprocess.run([sys.executable, "-m", "bnexp.train", "+variant=no_bn", *TINY_RUN,
                                 f"hydra.run.dir={run_dir}"], cwd=REPO, env=repo_env(), capture_output=True,
                                text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("bnexp.train: error:")]
    assert len(errors) == 1 and "the run dir" in errors[0] and "cannot be created or written" in errors[0], \
        result.stderr[-3000:]
    assert str(run_dir) in errors[0] and "hydra.run.dir=" in errors[0]


@pytest.mark.parametrize("case", list(CASES))
def test_train_raises_one_clear_error_for_a_run_dir_it_cannot_use(case, tmp_path):
    """The same from Python, where no Hydra made the dir first."""
    run_dir, condition = CASES[case](tmp_path)
    with condition, pytest.raises(RunDirUnusable) as caught:
        from bnexp.train.run import train
        train(compose_config(["+variant=no_bn", *TINY_RUN]), str(run_dir))
    assert str(run_dir) in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)  # the command line's user errors are ValueErrors
