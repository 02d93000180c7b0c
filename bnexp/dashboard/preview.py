"""A local picture of the W&B comparison workspace: its sections and panels drawn with matplotlib from run dirs.

    python -m bnexp.dashboard --runs outputs/sweeps/<name> --preview results/dashboard/preview.png

Drawn the way the W&B panels draw grouped runs: one colour per group (the workspace's grouping), the mean with a
min-max band for a line panel, one thin line per matched key and group for a regex panel, one point per run for a
scatter, and the runs table's columns. No W&B involved.
"""
from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any

from bnexp.dashboard.spec import DashboardError, DashboardSpec, Key, Panel
from bnexp.report.records import variant_sort_key
from bnexp.config.keys import config_value
from bnexp.runs.files import as_float, read_metrics


def _run_value(run: Any, key: Key) -> Any:
    """A run's config or summary value for a spec key."""
    if key.source == "summary" and key.name.startswith("steps_to_acc."):  # its targets hold a dot: 0.5
        return (run.summary.get("steps_to_acc") or {}).get(key.name.split(".", 1)[1])
    return config_value(run.config if key.source == "config" else run.summary, key.name)


def _series(records: list[dict], x_key: str, y_key: str) -> dict[float, float]:
    points = {}
    for record in records:
        x, y = record.get(x_key), record.get(y_key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y):
            points[float(x)] = float(y)
    return points


def _draw_line_panel(ax: Any, panel: Panel, groups: dict[str, list], colors: dict[str, Any], logged: dict,
                     empty_note: str | None = None) -> None:
    """One line per group and y key (a mean with its min-max band), or per group and matched key for a regex panel;
    a y key after the first (a threshold to compare the first with) is dashed. empty_note: written when no run
    logged any of the keys."""
    import numpy as np
    from matplotlib.lines import Line2D

    kind = "epoch" if panel.x.name == "epoch" else "step"
    dashed_keys = {key.name for key in panel.y[1:]}
    drawn = False
    for label, runs in groups.items():
        per_key: dict[str, list[dict[float, float]]] = {}
        for run in runs:
            records = [record for record in logged[run.run_dir] if record.get("kind", "step") == kind]
            keys = [key.name for key in panel.y] or sorted(
                {k for record in records for k in record if re.search(panel.regex, k)})
            for key in keys:
                per_key.setdefault(key, []).append(_series(records, panel.x.name, key))
        for index, (key, series) in enumerate(sorted(per_key.items())):
            xs = sorted({x for points in series for x in points})
            if not xs:
                continue
            values = [[points[x] for points in series if x in points] for x in xs]
            mean = np.array([np.mean(v) for v in values])
            drawn = True
            if panel.regex:  # one thin line per (group, layer), as W&B draws a regex panel over grouped runs
                ax.plot(xs, mean, color=colors[label], lw=0.8, alpha=0.55, label=label if index == 0 else None)
            else:
                ax.plot(xs, mean, color=colors[label], lw=1.6, ls="--" if key in dashed_keys else "-", label=label)
                ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], color=colors[label],
                                alpha=0.18, lw=0)
    if drawn and dashed_keys:
        ax.legend([Line2D([], [], color="black", lw=1.2, ls="--" if key.name in dashed_keys else "-")
                   for key in panel.y], [key.name for key in panel.y], fontsize=7, frameon=False)
    if not drawn and empty_note:
        ax.text(0.5, 0.5, empty_note, ha="center", va="center", fontsize=8, transform=ax.transAxes)
    ax.set_xlabel(panel.x.name)
    if panel.log_y:
        ax.set_yscale("log")


def _draw_scatter_panel(ax: Any, panel: Panel, groups: dict[str, list], colors: dict[str, Any]) -> None:
    (y_key,) = panel.y
    drawn = False
    for label, runs in groups.items():
        points = [(as_float(_run_value(run, panel.x)), as_float(_run_value(run, y_key))) for run in runs]
        points = [point for point in points if None not in point]
        if points:
            ax.scatter(*zip(*points), color=colors[label], s=22, label=label, alpha=0.85)
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, f"no run has a {y_key.name}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(panel.x.name)
    ax.set_ylabel(y_key.name)
    if panel.log_x and drawn:
        ax.set_xscale("log")
    if panel.log_y and drawn:
        ax.set_yscale("log")


def _draw_runs_table(ax: Any, panel: Panel, runs: list) -> None:
    def cell(run: Any, key: Key) -> str:
        value = _run_value(run, key)
        if isinstance(value, float):
            return f"{value:.3g}"
        return "–" if value is None else str(value)

    ordered = sorted(runs, key=lambda r: (r.variant, r.lr, r.seed or 0))
    header = ["run"] + [key.name.replace("steps_to_acc.", "steps to ") for key in panel.columns]
    rows = [[f"{run.variant}"] + [cell(run, key) for key in panel.columns] for run in ordered]
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.2)


def _draw_markdown(ax: Any, text: str, fontsize: float, width: int) -> None:
    ax.axis("off")
    plain = re.sub(r"[*`#]", "", text)
    lines = [line for line in plain.splitlines() if not re.fullmatch(r"\|?[-| ]+\|?", line)]
    ax.text(0.0, 1.0, "\n".join(_wrap(line, width) for line in lines), va="top", ha="left", fontsize=fontsize,
            family="monospace", transform=ax.transAxes)


def _wrap(line: str, width: int) -> str:
    return "\n".join(textwrap.wrap(line, width)) if len(line) > width and not line.startswith("|") else line


def render_preview(spec: DashboardSpec, runs: list, out_path: Path) -> Path:
    """The preview figure (draw_preview) saved as a PNG at out_path."""
    import matplotlib.pyplot as plt

    figure = draw_preview(spec, runs)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=64, bbox_inches="tight")
    plt.close(figure)
    return out_path


def draw_preview(spec: DashboardSpec, runs: list) -> Any:
    """One matplotlib figure of the workspace's sections, drawn from local run dirs the way the W&B panels draw
    them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if spec.grouping.lr_filter is not None:
        runs = [run for run in runs if math.isclose(run.lr, spec.grouping.lr_filter)]
    if not runs:
        raise DashboardError("no runs to draw (check --runs and --lr)")
    logged = {run.run_dir: read_metrics(run.run_dir) for run in runs}
    groups: dict[str, list] = {}
    for run in sorted(runs, key=lambda r: (variant_sort_key(r.variant), r.lr, r.seed or 0)):
        # run.variant is variant.name, with _g<stat_groups> for grouped BN: the workspace's two grouping keys
        label = f"{run.variant} lr{run.lr:g}" if spec.grouping.split_by_lr else run.variant
        groups.setdefault(label, []).append(run)
    palette = plt.get_cmap("tab10")
    colors = {label: palette(index % 10) for index, label in enumerate(groups)}

    columns = 4
    # a row per section, then the runs table
    heights = [2.6 if section.pinned else 3.0 for section in spec.sections] + [0.3 * (len(runs) + 2)]
    figure = plt.figure(figsize=(6.0 * columns, sum(heights) * 1.25))
    grid = figure.add_gridspec(len(heights), columns, height_ratios=heights, hspace=0.6, wspace=0.25)
    handles = [plt.Line2D([], [], color=colors[label], lw=2) for label in groups]
    for row, section in enumerate(spec.sections):
        panels = [p for p in section.panels if p.kind != "runs_table"]
        if section.pinned:
            ax = figure.add_subplot(grid[row, :])
            _draw_markdown(ax, f"{spec.workspace_name}: section {section.name!r}\n" + panels[0].markdown, 9, 170)
            ax.legend(handles, list(groups), loc="upper right", ncol=1, fontsize=10, title="groups (colour)",
                      frameon=False)
            continue
        for column, panel in enumerate(panels[:columns]):
            ax = figure.add_subplot(grid[row, column])
            ax.set_title("\n".join(_wrap(panel.title, 62).splitlines()[:3]), fontsize=8, loc="left")
            if panel.kind == "line":
                note = (None if section.logged_when is None else
                        f"no run logged {', '.join(key.name for key in panel.y) or panel.regex}\n"
                        f"(runs log them when {section.logged_when} > 0)")
                _draw_line_panel(ax, panel, groups, colors, logged, note)
            elif panel.kind == "scatter":
                _draw_scatter_panel(ax, panel, groups, colors)
            else:
                _draw_markdown(ax, panel.markdown, 7.5, 75)
            ax.tick_params(labelsize=7)
            if column == 0:
                ax.annotate(section.name, xy=(-0.2, 0.5), xycoords="axes fraction", rotation=90, va="center",
                            ha="center", fontsize=11, weight="bold")
    table_panel = next(p for p in spec.panels() if p.kind == "runs_table")
    ax = figure.add_subplot(grid[len(spec.sections), :])
    ax.set_title(table_panel.title + " (the workspace's runs table, pinned columns)", fontsize=10, loc="left")
    _draw_runs_table(ax, table_panel, runs)
    return figure
