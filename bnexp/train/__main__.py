"""`python -m bnexp.train +variant=<name> [overrides]`: one run (bnexp/train/cli.py)."""
import sys

from bnexp.runs.orphan_guard import die_with_parent

die_with_parent()  # a run started by bnexp.sweep ends with the sweep

from bnexp.config.compose import CONF_DIR  # noqa: E402

if not (CONF_DIR / "train.yaml").is_file():
    # conf/ sits beside the package in the repo; a non-editable install copies the package without it
    sys.exit(f"bnexp.train: error: the configs are not at {CONF_DIR}. Install bnexp from its repository "
             "with `pip install -e .` (editable), so that conf/ stays next to the package.")

from bnexp.train.cli import run_cli  # noqa: E402

run_cli()
