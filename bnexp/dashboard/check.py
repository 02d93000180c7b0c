"""The check that keeps the dashboard true to the trainer: every key, regex and grouping key of a spec against what
one run logged (tests/dashboard/test_dashboard.py runs it on a real run logged to W&B offline)."""
from __future__ import annotations

import re
from typing import Any

from bnexp.config.keys import config_value
from bnexp.dashboard.spec import DashboardSpec, Key, history


def flatten_keys(mapping: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of every leaf and inner node of a nested dict (W&B shows nested summary/config dotted)."""
    keys = set()
    for name, value in mapping.items():
        dotted = f"{prefix}{name}"
        keys.add(dotted)
        if isinstance(value, dict):
            keys |= flatten_keys(value, dotted + ".")
    return keys


def missing_keys(spec: DashboardSpec, history_keys: set[str], summary_keys: set[str], config: dict[str, Any],
                 run_attributes: dict[str, Any]) -> list[str]:
    """Every key, regex and grouping key of the spec that the given run does not have; [] when all are there."""
    known = {"history": history_keys, "summary": summary_keys, "config": flatten_keys(config)}
    problems = []

    def check(key: Key, where: str) -> None:
        if key.source == "run":
            if run_attributes.get(key.name) in (None, ""):
                problems.append(f"{where}: run attribute {key.name!r} is not set")
        elif key.name not in known[key.source]:
            problems.append(f"{where}: {key.source} key {key.name!r} was not logged")

    for section in spec.sections:
        # A section whose switch is off (or absent: a run from before the switch existed) expects no keys of this run.
        if section.logged_when and not config_value(config, section.logged_when, 0) > 0:
            continue
        check(history(section.x_axis), f"section {section.name!r} x axis")
        for panel in section.panels:
            where = f"{section.name} / {panel.title[:40]!r}"
            for key in ([panel.x] if panel.x else []) + panel.y + panel.columns:
                check(key, where)
            if panel.regex and not any(re.search(panel.regex, name) for name in history_keys):
                problems.append(f"{where}: regex {panel.regex!r} matches no logged key")
    for key in spec.grouping.keys + [spec.grouping.lr_key]:
        check(key, "grouping")
    for attribute, config_key in spec.grouping.mirrors.items():
        if run_attributes.get(attribute) != config_value(config, config_key):
            problems.append(f"grouping: run {attribute} {run_attributes.get(attribute)!r} is not config "
                            f"{config_key} {config_value(config, config_key)!r}")
    return problems
