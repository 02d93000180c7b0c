"""The runs' configs as the report states them: the settings that differ between runs but are not grid axes."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from bnexp.config.keys import flatten
from bnexp.report.run_records import RunRecord

# Settings that identify the grid axes or only the machine; everything else should agree across compared runs.
AXIS_OR_MACHINE_KEYS = ("seed", "optim.lr", "variant.", "model.name", "device", "logger.", "hydra.", "data.path",
                        "data.data_dir", "data.cache_dir", "instrument.")


def varying_config_keys(runs: list[RunRecord]) -> dict[str, list[Any]]:
    """Config keys (other than the grid axes) whose values differ between runs: a warning sign when comparing."""
    seen: dict[str, set] = defaultdict(set)
    for run in runs:
        for key, value in flatten(run.config).items():
            if not key.startswith(AXIS_OR_MACHINE_KEYS):  # a key equal to one starts with it too
                seen[key].add(repr(value))
    return {key: sorted(values) for key, values in sorted(seen.items()) if len(values) > 1}
