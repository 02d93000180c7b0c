"""The spec (bnexp/dashboard/spec.py) as wandb-workspaces objects: the comparison Workspace and a study's Report,
built without the network (bnexp/dashboard/publish.py saves them). The only module that imports wandb-workspaces.
"""
from __future__ import annotations

from typing import Any

from bnexp.dashboard.spec import DashboardSpec, Grouping, Key, Panel

# W&B draws only the first max_runs runs (or groups) of a workspace panel, 10 by default; a full lr_stability
# grid is 168 runs.
MAX_RUNS_PER_PANEL = 200


def _column_name(key: Key) -> str:
    """The runs-table accessor W&B uses: summary:<dotted>, run:<attr>, config:<first>.value.<rest>."""
    if key.source == "config":
        first, _, rest = key.name.partition(".")
        return f"config:{first}.value" + (f".{rest}" if rest else "")
    return f"{key.source}:{key.name}"


def _wr_metric(key: Key, wr: Any) -> Any:
    return {"history": wr.Metric, "summary": wr.SummaryMetric, "config": wr.Config}[key.source](key.name)


def _wandb_panel(panel: Panel, grouping: Grouping, wr: Any) -> Any:
    if panel.kind == "line":
        return wr.LinePlot(title=panel.title, x=panel.x.name, y=[key.name for key in panel.y],
                           metric_regex=panel.regex, log_y=panel.log_y or None,
                           groupby_aggfunc=grouping.aggregate, groupby_rangefunc=grouping.band,
                           max_runs_to_show=MAX_RUNS_PER_PANEL)
    if panel.kind == "scatter":
        (y,) = panel.y
        return wr.ScatterPlot(title=panel.title, x=_wr_metric(panel.x, wr), y=_wr_metric(y, wr),
                              log_x=panel.log_x or None, log_y=panel.log_y or None)
    if panel.kind == "markdown":
        return wr.MarkdownPanel(markdown=panel.markdown)
    raise ValueError(f"no W&B panel for kind {panel.kind!r}")


def _groupby(grouping: Grouping, expr: Any) -> list:
    metric = {"run": lambda name: expr.Metric({"group": "Group"}.get(name, name)), "config": expr.Config,
              "summary": expr.Summary}
    return [metric[key.source](key.name) for key in grouping.group_keys()]


def _filters(grouping: Grouping, expr: Any, report_filter: dict[str, str] | None = None) -> Any:
    conditions = []
    if grouping.lr_filter is not None:
        conditions.append(expr.Config(grouping.lr_key.name) == grouping.lr_filter)
    for kind, value in (report_filter or {}).items():
        conditions.append({"tag": lambda v: expr.Tags().isin([v]), "sweep": lambda v: expr.Metric("Sweep") == v,
                           "group": lambda v: expr.Metric("Group") == v}[kind](value))
    return expr.And(*conditions) if conditions else ""


def _pinned_columns(panels: list[Panel]) -> list[str]:
    """The runs table's columns, as W&B names them; [] when these panels hold no runs table."""
    return [_column_name(key) for panel in panels if panel.kind == "runs_table" for key in panel.columns]


def build_workspace(spec: DashboardSpec, entity: str | None = None) -> Any:
    """The comparison workspace as a wandb_workspaces.workspaces.Workspace (not saved)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    sections = [
        ws.Section(name=section.name, is_open=True, pinned=section.pinned,
                   panels=[_wandb_panel(p, spec.grouping, wr) for p in section.panels if p.kind != "runs_table"],
                   panel_settings=ws.SectionPanelSettings(x_axis=section.x_axis),
                   layout_settings=ws.SectionLayoutSettings(columns=min(3, max(1, len(section.panels))), rows=2))
        for section in spec.sections
    ]
    return ws.Workspace(
        entity=entity or spec.entity or "", project=spec.project, name=spec.workspace_name, sections=sections,
        settings=ws.WorkspaceSettings(x_axis="step", max_runs=MAX_RUNS_PER_PANEL),
        runset_settings=ws.RunsetSettings(groupby=_groupby(spec.grouping, expr),
                                          filters=_filters(spec.grouping, expr),
                                          pinned_columns=_pinned_columns(spec.panels())),
    )


def build_report(spec: DashboardSpec, entity: str | None = None) -> Any:
    """The study report as a wandb_workspaces.reports.v2.Report (not saved): its text, then each section's panels
    over the study's runs, grouped like the workspace."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    if spec.report is None:
        raise ValueError("this spec has no report (build it with a report filter)")
    entity = entity or spec.entity or ""
    groupby = ["group" if key.source == "run" and key.name == "group" else f"{key.source}.{key.name}"
               for key in spec.grouping.group_keys()]
    blocks: list[Any] = [wr.MarkdownBlock(text=spec.report.text)]
    for name in spec.report.sections:
        section = spec.section(name)
        runset = wr.Runset(entity=entity, project=spec.project, name=spec.report.title,
                           filters=_filters(spec.grouping, expr, spec.report.filter), groupby=groupby,
                           pinned_columns=_pinned_columns(section.panels))
        panels = [_wandb_panel(p, spec.grouping, wr) for p in section.panels if p.kind != "runs_table"]
        blocks += [wr.H2(text=section.name), wr.PanelGrid(runsets=[runset], panels=panels)]
    (kind, value), = spec.report.filter.items()
    return wr.Report(project=spec.project, entity=entity, title=spec.report.title,
                     description=f"Runs with {kind} {value}, grouped by variant; built by python -m bnexp.dashboard",
                     blocks=blocks)
