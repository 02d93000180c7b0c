"""The sweep config's keys and modes that had other names, and the one line that tells a config or command line
still using one the new name. 'Edge of stability' now means what the field means by it (sharpness reaching the
optimiser's threshold, bnexp/instrument/sharpness.py); the search the old `edge_*` keys set finds the largest
trainable lr."""
from __future__ import annotations

from typing import Mapping

RENAMED_KEYS = {"edge_start_lr": "lr_search_start", "edge_ratio": "lr_search_ratio", "edge_growth": "lr_search_growth",
                "edge_min_lr": "lr_search_min", "edge_max_lr": "lr_search_max", "edge_min_acc": "trains_min_acc"}
RENAMED_MODES = {"edge": "largest_lr"}


def renamed_problems(values: Mapping) -> tuple[list[str], dict]:
    """A line for each key or mode that was renamed, and the values without them (so that each gets one line)."""
    problems = [renamed_key_line(f"sweep.{key}") for key in values if key in RENAMED_KEYS]
    kept = {key: value for key, value in values.items() if key not in RENAMED_KEYS}
    if isinstance(kept.get("mode"), str) and kept["mode"] in RENAMED_MODES:
        problems.append(renamed_mode_line(kept.pop("mode")))
    return problems, kept


def renamed_key_line(dotted_key: str, override: str | None = None) -> str:
    """'sweep.edge_ratio was renamed sweep.lr_search_ratio ...', for a key of RENAMED_KEYS (`override`: the
    command-line argument that used it, rewritten with the new name)."""
    prefix, _, key = dotted_key.rpartition(".")
    new_key = f"{prefix}.{RENAMED_KEYS[key]}"
    use = f"; give {override.replace(dotted_key, new_key, 1)}" if override else ""
    return f"{dotted_key} was renamed {new_key} (it sets the search for the largest trainable lr){use}"


def renamed_mode_line(mode: str) -> str:
    return (f"sweep.mode={mode} was renamed sweep.mode={RENAMED_MODES[mode]} (the search for the largest trainable "
            "lr; 'edge of stability' now means sharpness reaching the optimiser's threshold)")
