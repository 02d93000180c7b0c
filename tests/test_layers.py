"""The layering of bnexp (pyproject.toml's import-linter contracts) holds, and the contracts catch a break."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # import-linter's command, installed beside this Python by the dev extra
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert command, "lint-imports is not installed: pip install -e '.[dev]'"
    # it finds the package on sys.path: point it at the tree under test, not the installed one
    return subprocess.run([command, "--no-cache"], cwd=root, text=True, capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_every_layer_contract_is_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_a_contract(tmp_path):
    shutil.copytree(REPO / "bnexp", tmp_path / "bnexp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    layer = tmp_path / "bnexp" / "norm" / "layer.py"
    layer.write_text(layer.read_text() + "\nfrom bnexp.report import records  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "bnexp.norm.layer -> bnexp.report.records" in result.stdout
