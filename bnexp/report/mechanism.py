"""The report's mechanism section: how the channels leave each norm layer and how many units die, next to outcome.

From the probe's keys in metrics.jsonl (bnexp/instrument/hooks.py):
  bn/<norm>/xhat_std_ratio  largest / smallest per-channel std after normalising, before gamma (the mixing: 1 with
                            per-channel statistics, the input channels' spread with shared ones)
  bn/<norm>/out_std_ratio   largest / smallest per-channel output std of a norm layer (what the next layer sees)
  act/<act>/dead_frac       fraction of an activation's channels with no positive output in the whole batch
  act/<linear>/in_zero_frac fraction of exactly-zero inputs of a linear layer (the head: 1 = zero gradients)
it draws, per variant at the report's shared lr, these over training (`mechanism_lr<lr>.png`), and for every run
the value at the end against its final test accuracy (`mechanism_vs_accuracy.png`), plus a table per variant x lr
(`mechanism.csv`, each mean with its 95% interval over the runs). Runs made before the probe measured these keys
are left out, and the section says so.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnexp.report import intervals
from bnexp.report.aggregation import final_accuracies
from bnexp.report.markdown_tables import INTERVAL_NAMES
from bnexp.report.run_records import RunRecord, group_by, variant_sort_key
from bnexp.report.series import runs_at_lr
from bnexp.report.plots import PlotResult, plt, save_figure, series_colors
from bnexp.runs.files import as_float
from bnexp.report.tables import model_table, write_csv

# the report prints it also when the section could not be made
SECTION_HEADING = "## Mechanism: channel scales and dead units"
# Each MechanismPoint field: the suffix of the probe's keys it summarises, and how (over layers)
POINT_SUMMARIES = {"xhat_max": ("/xhat_std_ratio", max), "spread_max": ("/out_std_ratio", max),
                   "dead_mean": ("/dead_frac", lambda values: sum(values) / len(values)),
                   "dead_max": ("/dead_frac", max), "zero_input_max": ("/in_zero_frac", max)}
SUFFIXES = {suffix for suffix, _ in POINT_SUMMARIES.values()}
LR_MARKERS = "osD^vP*Xph"
# MechanismPoint's fields in the order of mechanism.csv's columns, with their format in the report's table
TABLE_FIELDS = {"dead_mean": ".2f", "dead_max": ".2f", "xhat_max": ".3g", "spread_max": ".3g",
                "zero_input_max": ".2f"}


@dataclass
class MechanismPoint:
    """One measured step of one run, summarised over layers (None where the run has no such layer)."""
    step: int
    xhat_max: float | None        # max over norm layers of xhat_std_ratio
    spread_max: float | None      # max over norm layers of out_std_ratio
    dead_mean: float | None       # mean over activation calls of dead_frac
    dead_max: float | None        # the deadest activation call
    zero_input_max: float | None  # max over linear layers of in_zero_frac (the head, in bnexp's models)


def mechanism_points(run: RunRecord) -> list[MechanismPoint]:
    """The run's measured steps that carry mechanism keys, in step order; non-finite values are left out."""
    points = []
    for record in sorted(run.step_records, key=lambda r: r["step"]):
        found: dict[str, list[float]] = defaultdict(list)
        for key, value in record.items():
            for suffix in SUFFIXES:
                if key.endswith(suffix) and (number := as_float(value)) is not None and math.isfinite(number):
                    found[suffix].append(number)
        if found:
            points.append(MechanismPoint(int(record["step"]), **{
                field: how(found[suffix]) if found[suffix] else None
                for field, (suffix, how) in POINT_SUMMARIES.items()}))
    return points


def plot_mechanism_over_training(runs: list[RunRecord], lr: float | None, out_dir: Path,
                                 points_of: dict[Path, list[MechanismPoint]]) -> PlotResult:
    title = f"Channel-scale spread and dead units over training at lr={lr:g}" if lr is not None else \
        "Channel-scale spread and dead units over training"
    by_variant = {}
    for variant, members in runs_at_lr(runs, lr).items():
        measured = [run for run in members if points_of.get(run.run_dir)]
        if measured:
            by_variant[variant] = measured
    if not by_variant:
        return PlotResult(title, None, note=f"no run at lr={lr} records the mechanism metrics")
    colors = series_colors(list(by_variant))
    panels = (("xhat_max", "channel std spread after normalising,\nbefore γ (max over norm layers)", True),
              ("spread_max", "largest / smallest channel output std\n(max over norm layers)", True),
              ("dead_mean", "dead units after activations\n(mean over layers)", False),
              ("dead_max", "dead units in the deadest layer", False),
              ("zero_input_max", "exactly-zero inputs of the head", False))
    figure, axes = plt.subplots(3, 2, figsize=(11, 10), sharex=True)
    axes[2][1].set_visible(False)
    for (field, label, log_y), ax in zip(panels, axes.flat):
        for variant, members in by_variant.items():
            for index, run in enumerate(members):
                pairs = [(p.step, getattr(p, field)) for p in points_of[run.run_dir] if getattr(p, field) is not None]
                if not pairs:
                    continue
                steps, values = zip(*pairs)
                ax.plot(steps, values, color=colors[variant], lw=1.2, alpha=0.8,
                        ls="--" if run.status == "diverged" else "-", label=variant if index == 0 else None)
        if log_y and ax.lines:  # a log scale needs something drawn
            ax.set_yscale("log")
        if not log_y:
            ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    for ax in (axes[2][0], axes[1][1]):
        ax.set_xlabel("step")
        ax.xaxis.set_tick_params(labelbottom=True)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"lr={lr:g}: one line per seed, dashed = diverged", fontsize=10)
    path = save_figure(figure, out_dir / f"mechanism_lr{lr:g}.png")
    return PlotResult(title, path,
                      "Top left: the mixing itself, how unequal the channels are after subtracting and dividing by "
                      "their statistic, before γ (1 with per-channel statistics; with shared statistics the input "
                      "channels' own spread passes through). Top right: how unequal they leave the layer, γ "
                      "included (per-channel statistics keep it near the γ spread). Middle: channels with no "
                      "positive output anywhere in the batch (ReLU: exactly 0; GELU: a pre-activation never above "
                      "~0). Bottom: the head's inputs that are exactly 0; at 1 every gradient of the network is "
                      "exactly 0.")


def plot_mechanism_vs_accuracy(runs: list[RunRecord], out_dir: Path,
                               at_end: list[tuple[RunRecord, MechanismPoint]]) -> PlotResult:
    title = "Mechanism at the end against final test accuracy"
    rows = [(run, point) for run, point in at_end
            if run.status == "finished" and as_float(run.summary.get("final_test_acc")) is not None]
    if not rows:
        return PlotResult(title, None, note="no finished run records both the mechanism metrics and a final accuracy")
    variants = sorted({run.variant for run, _ in rows}, key=variant_sort_key)
    lrs = sorted({run.lr for run, _ in rows})
    colors = series_colors(variants)
    markers = {lr: LR_MARKERS[i % len(LR_MARKERS)] for i, lr in enumerate(lrs)}
    figure, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    panels = (("dead_mean", "dead units at the end (mean over activation layers)", False),
              ("spread_max", "channel output-std spread at the end (max over norm layers)", True))
    for (field, label, log_x), ax in zip(panels, axes):
        for run, point in rows:
            value = getattr(point, field)
            if value is None:
                continue
            ax.scatter([value], [100 * float(run.summary["final_test_acc"])], color=colors[run.variant],
                       marker=markers[run.lr], s=36, alpha=0.8, edgecolors="none")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("final test accuracy (%)")
    handles = [plt.Line2D([], [], color=colors[v], marker="o", ls="", label=v) for v in variants]
    handles += [plt.Line2D([], [], color="grey", marker=markers[lr], ls="", label=f"lr {lr:g}") for lr in lrs]
    axes[1].legend(handles=handles, fontsize=8, loc="best")
    path = save_figure(figure, out_dir / "mechanism_vs_accuracy.png")
    left_out = sum(1 for run in runs if run.status == "diverged")
    return PlotResult(title, path, "One point per finished run: colour = variant, marker = lr. "
                      + (f"{left_out} diverged run(s) have no final accuracy and are not shown." if left_out else ""))


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    values = [value for value in values if value is not None]
    return float(np.mean(values)) if values else None


def _interval(values: list[float | None], method: str) -> intervals.Interval | None:
    """The interval over the values that are not None (none without two of them)."""
    values = [value for value in values if value is not None]
    interval = intervals.mean_interval(values, method) if values else None
    return interval if interval is not None and interval.has_interval else None


def mechanism_table(at_end: list[tuple[RunRecord, MechanismPoint]], interval_method: str = "t") -> list[dict]:
    """Per model x variant x lr, means over the runs that record the metrics, at each run's last measured step;
    the final test accuracy over those of them that finished. Each mean has its 95% interval over those runs
    (`<field>_ci_low`, `<field>_ci_high`; empty for fewer than two)."""
    grouped = group_by(at_end, lambda member: (member[0].model, member[0].variant, member[0].lr))
    rows = []
    for model, variant, lr in sorted(grouped, key=lambda key: (key[0], variant_sort_key(key[1]), key[2])):
        members = grouped[(model, variant, lr)]
        values = {field: [getattr(p, field) for _, p in members] for field in TABLE_FIELDS}
        # a diverged run's last accuracy is not a result (as in the summary table)
        values["final_test_acc"] = final_accuracies([run for run, _ in members])
        row = {"model": model, "variant": variant, "lr": lr, "n_runs": len(members),
               **{field: _mean(field_values) for field, field_values in values.items()},
               "final_test_acc_n": len(values["final_test_acc"])}
        for field, field_values in values.items():
            interval = _interval(field_values, interval_method)
            row[f"{field}_ci_low"] = interval.low if interval else None
            row[f"{field}_ci_high"] = interval.high if interval else None
        rows.append(row)
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _fmt_interval(row: dict, field: str, spec: str, scale: float = 1.0) -> str:
    low, high = row[f"{field}_ci_low"], row[f"{field}_ci_high"]
    return "–" if low is None else f"[{format(scale * low, spec)}, {format(scale * high, spec)}]"


def mechanism_section(runs: list[RunRecord], out_dir: Path, shared_lr: float | None,
                      interval_method: str = "t") -> list[str]:
    """The report's markdown lines for the mechanism (its plots and mechanism.csv are written to out_dir)."""
    lines = [SECTION_HEADING, ""]
    points_of = {run.run_dir: mechanism_points(run) for run in runs}
    # each run that records the metrics, with its last measured step: what the table and the accuracy plot show
    at_end = [(run, points_of[run.run_dir][-1]) for run in runs if points_of[run.run_dir]]
    measured = len(at_end)
    if not measured:
        return lines + ["_Not shown: no run records the mechanism metrics (`bn/<norm>/out_std_ratio`, "
                        "`act/<act>/dead_frac`, `act/<linear>/in_zero_frac`); these runs were made before the "
                        "probe measured them, or with `instrument.every=0`._", ""]
    table = mechanism_table(at_end, interval_method)
    write_csv(out_dir / "mechanism.csv", list(table[0]), (row.values() for row in table))
    show_model = len({row["model"] for row in table}) > 1
    lines += [f"{measured} of {len(runs)} runs record the mechanism metrics"
              + (f"; the other {len(runs) - measured} predate them and are left out" if measured < len(runs) else "")
              + ". Values at each run's last measured step, mean over its seeds (`mechanism.csv`): dead units "
              "after the activations (mean over layers, and the deadest layer), the largest ratio of channel "
              "stds over the norm layers after normalising (x̂, before γ) and at the output, and the fraction of "
              "the head's inputs that are exactly 0.", ""]
    header = ["model", "variant", "lr", "runs", "dead (mean)", "dead (max layer)", "x̂-std spread",
              "out-std spread", "head zero inputs", "final test acc"]
    rows = [[
        row["model"], row["variant"], f"{row['lr']:g}", str(row["n_runs"]),
        *(_fmt(row[field], spec) for field, spec in TABLE_FIELDS.items()),
        "–" if row["final_test_acc"] is None else f"{100 * row['final_test_acc']:.1f}%"] for row in table]
    lines += [model_table(header, rows, show_model), ""]
    lines += [f"Each mean's 95% {INTERVAL_NAMES[interval_method]} interval over the same runs (the final test "
              "accuracy's over those that finished, n of them; a diverged run's last accuracy is not a result); "
              "one run gives none:", ""]
    rows = [[row["model"], row["variant"], f"{row['lr']:g}", str(row["n_runs"]),
             *(_fmt_interval(row, field, spec) for field, spec in TABLE_FIELDS.items()),
             f"{_fmt_interval(row, 'final_test_acc', '.1f', scale=100)}% (n={row['final_test_acc_n']})"
             if row["final_test_acc_ci_low"] is not None else f"– (n={row['final_test_acc_n']})"] for row in table]
    lines += [model_table(header, rows, show_model), ""]
    for plot in (plot_mechanism_over_training(runs, shared_lr, out_dir, points_of),
                 plot_mechanism_vs_accuracy(runs, out_dir, at_end)):
        lines += plot.markdown("Not shown")
    return lines
