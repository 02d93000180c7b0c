"""The dashboard spec: plain data (sections of panels, the keys they read, the grouping), no wandb.

bnexp/dashboard/panels.py builds it, bnexp/dashboard/workspace.py turns it into W&B objects and
bnexp/dashboard/preview.py draws it locally.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import partial


class DashboardError(Exception):
    """A user-facing failure: printed without a traceback, exit code 2."""


@dataclass(frozen=True)
class Key:
    """One value a panel reads. source: history (logged with run.log), summary (run summary), config (run config,
    dotted path) or run (a run attribute such as its group)."""
    source: str
    name: str


history = partial(Key, "history")
summary = partial(Key, "summary")
config = partial(Key, "config")


@dataclass
class Panel:
    kind: str                 # line | scatter | markdown | runs_table
    title: str
    x: Key | None = None      # line: the history key on the x axis; scatter: a config or summary key
    y: list[Key] = field(default_factory=list)
    regex: str | None = None  # line: every history key this matches is a y series
    log_x: bool = False
    log_y: bool = False
    markdown: str | None = None
    columns: list[Key] = field(default_factory=list)  # runs_table


@dataclass
class Section:
    name: str
    x_axis: str               # the section's default x axis (a history key)
    panels: list[Panel]
    pinned: bool = False
    logged_when: str | None = None  # a config key: runs log this section's keys only when it is > 0; None: every run


@dataclass
class Grouping:
    """Runs grouped by `keys` in order: one line per group, `aggregate` over its runs, `band` around it."""
    keys: list[Key]
    mirrors: dict[str, str]   # run attribute -> the config key the W&B sink copies into it
    lr_key: Key
    lr_filter: float | None = None
    split_by_lr: bool = False
    aggregate: str = "mean"
    band: str = "minmax"

    def group_keys(self) -> list[Key]:
        return self.keys + ([self.lr_key] if self.split_by_lr else [])


@dataclass
class ReportSpec:
    title: str
    filter: dict[str, str]    # exactly one of tag, sweep, group
    text: str
    sections: list[str]       # the workspace sections the report repeats, in order


@dataclass
class DashboardSpec:
    format: str
    project: str
    entity: str | None        # None: the API key's default entity
    workspace_name: str
    grouping: Grouping
    sections: list[Section]
    report: ReportSpec | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def panels(self) -> list[Panel]:
        return [panel for section in self.sections for panel in section.panels]

    def section(self, name: str) -> Section:
        return next(section for section in self.sections if section.name == name)
