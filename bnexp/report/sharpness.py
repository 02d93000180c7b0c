"""The report's sharpness section: the top Hessian eigenvalue over training against the optimiser's threshold.

From the probe's keys in metrics.jsonl (bnexp/instrument/sharpness.py, runs with `instrument.sharpness_every` > 0):
  sharpness/top_eig    the largest eigenvalue of the training loss's Hessian on a fixed batch (Lanczos)
  sharpness/threshold  the stability threshold of the optimiser at that step's lr: 2/η for gradient descent,
                       2(1+β)/η with heavy-ball momentum β, (2+2β)/(η(1+2β)) with Nesterov momentum (none for AdamW)
The field calls sharpness that rises to the threshold and hovers there the *edge of stability* (Cohen et al.
2021). The section draws sharpness over training per variant at up to three lrs (`sharpness.png`), and tables per
variant x lr the largest ratio of sharpness to threshold and whether, and at which step, it reached the threshold
(`sharpness.csv`); per variant it names the lowest lr at which any run's sharpness reached it. That lr is not the
largest trainable lr (bnexp/report/trainable_lr.py, the largest lr at which every seed trains), which the report
gives apart, with this one beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnexp.report import intervals
from bnexp.report.markdown_tables import INTERVAL_NAMES
from bnexp.report.plots import PlotResult, never_raises, plt, save_figure, series_colors
from bnexp.report.run_records import RunRecord, group_by, variant_sort_key
from bnexp.report.tables import model_table, write_csv
from bnexp.runs.files import as_float

SECTION_HEADING = "## Sharpness: the edge of stability"
TOP_KEY, THRESHOLD_KEY = "sharpness/top_eig", "sharpness/threshold"
# at most this many lrs get a panel of the plot (the lrs the most variants measured, spread over the range)
MAX_PLOT_LRS = 3


@dataclass
class SharpnessPoint:
    step: int
    top_eig: float
    threshold: float | None  # None: no threshold for this optimiser (AdamW)

    @property
    def ratio(self) -> float | None:
        return self.top_eig / self.threshold if self.threshold else None


def sharpness_points(run: RunRecord) -> list[SharpnessPoint]:
    """The run's measured steps in step order; a measurement that is not finite is left out."""
    points = []
    for record in sorted(run.step_records, key=lambda r: r["step"]):
        top = as_float(record.get(TOP_KEY))
        if top is None or not math.isfinite(top):
            continue
        threshold = as_float(record.get(THRESHOLD_KEY))
        points.append(SharpnessPoint(int(record["step"]), top,
                                     threshold if threshold is not None and math.isfinite(threshold) else None))
    return points


def _interval_text(values: list[float], method: str, spec: str) -> str:
    interval = intervals.mean_interval(values, method) if values else None
    if interval is None or not interval.has_interval:
        return "–"
    return f"[{format(interval.low, spec)}, {format(interval.high, spec)}]"


def sharpness_table(points_of: dict[Path, list[SharpnessPoint]], runs: list[RunRecord]) -> list[dict]:
    """Per model x variant x lr over the runs that measured sharpness: the largest sharpness / threshold of each
    run (mean over runs, with the values for the interval), how many runs reached the threshold (ratio >= 1), and
    the first step at which they did (the earliest over runs)."""
    measured = [run for run in runs if points_of.get(run.run_dir)]
    grouped = group_by(measured, lambda run: (run.model, run.variant, run.lr))
    rows = []
    for model, variant, lr in sorted(grouped, key=lambda key: (key[0], variant_sort_key(key[1]), key[2])):
        members = grouped[(model, variant, lr)]
        peak_ratios, first_steps = [], []
        for run in members:
            ratios = [(point.step, point.ratio) for point in points_of[run.run_dir] if point.ratio is not None]
            if ratios:
                peak_ratios.append(max(ratio for _, ratio in ratios))
            reached = [step for step, ratio in ratios if ratio >= 1]
            if reached:
                first_steps.append(reached[0])
        rows.append({"model": model, "variant": variant, "lr": lr, "n_runs": len(members),
                     "peak_top_eig": float(np.mean([max(p.top_eig for p in points_of[run.run_dir])
                                                    for run in members])),
                     "peak_ratio": float(np.mean(peak_ratios)) if peak_ratios else None, "peak_ratios": peak_ratios,
                     "runs_reaching_threshold": len(first_steps),
                     "first_step_at_threshold": min(first_steps) if first_steps else None})
    return rows


def lowest_lr_at_threshold(rows: list[dict]) -> dict[tuple[str, str], float | None]:
    """Per model x variant: the lowest lr at which some run's sharpness reached the threshold (None: at no lr
    measured). Only variants measured with a threshold are listed."""
    lowest: dict[tuple[str, str], float | None] = {}
    for row in rows:
        if row["peak_ratio"] is None:
            continue
        key = (row["model"], row["variant"])
        lowest.setdefault(key, None)
        if row["runs_reaching_threshold"] and (lowest[key] is None or row["lr"] < lowest[key]):
            lowest[key] = row["lr"]
    return lowest


@dataclass
class MeasuredSharpness:
    """The runs' sharpness read once for the whole report: each run's points and the variant x lr table."""
    points_of: dict[Path, list[SharpnessPoint]]
    rows: list[dict]


def measured_sharpness(runs: list[RunRecord]) -> MeasuredSharpness:
    points_of = {run.run_dir: sharpness_points(run) for run in runs}
    return MeasuredSharpness(points_of, sharpness_table(points_of, runs))


def _plot_lrs(rows: list[dict]) -> list[float]:
    """Up to MAX_PLOT_LRS lrs, those measured for the most variants, then spread over the range."""
    variants_at = {lr: len({row["variant"] for row in rows if row["lr"] == lr}) for lr in {row["lr"] for row in rows}}
    most = max(variants_at.values())
    candidates = sorted(lr for lr, count in variants_at.items() if count == most)
    if len(candidates) <= MAX_PLOT_LRS:
        return candidates
    picks = np.linspace(0, len(candidates) - 1, MAX_PLOT_LRS).round().astype(int)
    return [candidates[index] for index in sorted(set(picks))]


@never_raises("Sharpness over training")
def plot_sharpness(runs: list[RunRecord], points_of: dict[Path, list[SharpnessPoint]], lrs: list[float],
                   out_dir: Path) -> PlotResult:
    title = "Sharpness over training"
    measured = [run for run in runs if points_of.get(run.run_dir)]
    variants = sorted({run.variant for run in measured}, key=variant_sort_key)
    colors = series_colors(variants)
    figure, axes = plt.subplots(1, len(lrs), figsize=(5.2 * len(lrs), 4.4), sharey=True, squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        threshold_drawn = False
        for variant in variants:
            members = [run for run in measured if run.variant == variant and math.isclose(run.lr, lr)]
            for index, run in enumerate(members):
                points = points_of[run.run_dir]
                ax.plot([p.step for p in points], [p.top_eig for p in points], color=colors[variant], lw=1.2,
                        alpha=0.85, ls="--" if run.status == "diverged" else "-",
                        label=variant if index == 0 else None)
                with_threshold = [p for p in points if p.threshold is not None]
                if with_threshold and not threshold_drawn:  # the threshold depends on the lr schedule only
                    ax.plot([p.step for p in with_threshold], [p.threshold for p in with_threshold], color="black",
                            lw=1.6, ls=":", label="threshold")
                    threshold_drawn = True
        ax.set_yscale("log")
        ax.set_title(f"lr {lr:g}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("top Hessian eigenvalue of the training loss")
    axes[0][-1].legend(fontsize=8, loc="best")
    path = save_figure(figure, out_dir / "sharpness.png")
    return PlotResult(title, path,
                      "One line per run (dashed: diverged), coloured by variant; the dotted black line is the "
                      "optimiser's stability threshold at each step's lr (it rises as the schedule lowers the lr). "
                      "Sharpness that climbs to the threshold and stays there is the edge of stability.")


def sharpness_section(runs: list[RunRecord], out_dir: Path, interval_method: str = "t",
                      measured: MeasuredSharpness | None = None) -> list[str]:
    """The report's markdown lines for sharpness (sharpness.png and sharpness.csv are written to out_dir);
    `measured` is measured_sharpness(runs) when the caller has it already."""
    lines = [SECTION_HEADING, ""]
    measured = measured or measured_sharpness(runs)
    points_of, rows = measured.points_of, measured.rows
    if not rows:
        return lines + ["_Not shown: no run measured sharpness (`instrument.sharpness_every` > 0 turns it on)._", ""]
    columns = ["model", "variant", "lr", "n_runs", "peak_top_eig", "peak_ratio", "runs_reaching_threshold",
               "first_step_at_threshold"]
    write_csv(out_dir / "sharpness.csv", columns, ([row[column] for column in columns] for row in rows))
    measured = sum(row["n_runs"] for row in rows)
    show_model = len({row["model"] for row in rows}) > 1
    lines += [f"{measured} of {len(runs)} runs measured the sharpness: the largest eigenvalue of the training "
              "loss's Hessian, on a fixed batch with the step's own loss (batch statistics, label smoothing), "
              "against the optimiser's stability threshold at that step's lr (2/η for gradient descent; "
              "2(1+β)/η with heavy-ball momentum β; (2+2β)/(η(1+2β)) with Nesterov momentum). Sharpness that "
              "reaches the threshold is the edge of stability (Cohen et al. 2021); with mini-batch SGD and "
              "momentum it often levels off below it. Per variant x lr (`sharpness.csv`): the largest sharpness "
              f"over training (mean over runs), the largest sharpness / threshold with its 95% "
              f"{INTERVAL_NAMES[interval_method]} interval, and the runs whose sharpness reached the threshold.", ""]
    header = ["model", "variant", "lr", "runs", "peak sharpness", "peak / threshold", "95% interval",
              "reached threshold", "first step there"]
    table = [[row["model"], row["variant"], f"{row['lr']:g}", str(row["n_runs"]), f"{row['peak_top_eig']:.3g}",
              "–" if row["peak_ratio"] is None else f"{row['peak_ratio']:.2f}",
              _interval_text(row["peak_ratios"], interval_method, ".2f"),
              f"{row['runs_reaching_threshold']} of {row['n_runs']}",
              "–" if row["first_step_at_threshold"] is None else str(row["first_step_at_threshold"])]
             for row in rows]
    lines += [model_table(header, table, show_model), ""]
    lowest = lowest_lr_at_threshold(rows)
    if lowest:
        lines += ["The edge of stability per variant, the lowest lr at which sharpness reached the threshold (of the "
                  "lrs measured; not the largest trainable lr, the largest lr at which every seed trains, which its "
                  "own section gives with this lr beside it): "
                  + "; ".join(f"{variant}{f' ({model})' if show_model else ''}: "
                              + ("none" if lr is None else f"{lr:g}")
                              for (model, variant), lr in sorted(lowest.items(),
                                                                  key=lambda item: variant_sort_key(item[0][1])))
                  + ".", ""]
    lines += plot_sharpness(runs, points_of, _plot_lrs(rows), out_dir).markdown("Not shown")
    return lines
