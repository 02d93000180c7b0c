"""The report's "Best against best" section (best_vs_best.csv, best_vs_best.png): each variant at its own best lr,
from the runs of a `sweep.mode=best_lr` sweep, which record their role in sweep_job.json: "tune" (the runs that
chose the lr) or "final" (fresh seeds at it).

Per model x variant:
- the tuning curve: the tuning runs' mean score per lr, an lr counting once every tuning seed has a run there, and
  the lr the sweep's rule picks from it (bnexp/lr_search/best_lr.py: a diverged or failed run scores 0, a tie goes
  to the smaller lr), interior or at an end of the lrs tuned (the bound, where the fresh seeds' record says so);
- the fresh seeds at that lr: the mean final test accuracy of those that finished, with its 95% interval and n, and
  how many diverged (they have no accuracy: counted apart, as in the per-lr tables);
- the difference to the reference variant's fresh seeds, each at its own lr, with the Welch interval and the
  p-value after Holm's correction over this section's comparisons (bnexp/report/comparisons.py);
and over the fresh seeds of every variant, Kendall's τ between group size and final accuracy (bnexp/report/trend.py).
Tuning runs are never pooled with the fresh seeds here: their lr was chosen because they did well (selection bias).
Fresh seeds at an lr other than the one the curve picks (a sweep whose grid changed) are left out and counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.ticker
import numpy as np

from bnexp.lr_search.best_lr import TunedLr, best_of, run_score
from bnexp.lr_search.lrs import same_lr
from bnexp.report import intervals
from bnexp.report.aggregation import final_accuracies
from bnexp.report.comparisons import Comparison, with_holm
from bnexp.report.markdown_tables import INTERVAL_NAMES, accuracy_text
from bnexp.report.plots import PlotResult, never_raises, plt, save_figure, series_colors
from bnexp.report.run_records import RunRecord, group_by, variant_sort_key
from bnexp.report.tables import model_table, write_csv
from bnexp.report.trainable_lr import channels_per_statistic
from bnexp.report.trend import GroupSizeTrend, trend_at
from bnexp.report.trend import with_holm as trend_with_holm
from bnexp.runs.files import as_float

SECTION_HEADING = "## Best against best"


@dataclass
class BestLr:
    """One variant's tuning and its fresh seeds at the lr the tuning picks."""
    model: str
    variant: str
    channels_per_statistic: int | str | None
    tune_seeds: list[int]
    curve: list[TunedLr]            # the lrs every tuning seed ran at, by lr
    best: TunedLr | None
    position: str                   # 'interior', 'at the lower bound', ...
    finals: list[RunRecord]         # fresh seeds at the best lr (completed or not)
    left_out: int                   # fresh seeds at another lr
    interval: intervals.Interval | None  # the finished fresh seeds' accuracy
    comparison: Comparison | None = None

    @property
    def final_values(self) -> list[float]:
        return final_accuracies(self.finals)

    @property
    def n_diverged(self) -> int:
        return sum(run.status == "diverged" for run in self.finals)


def has_roles(runs: list[RunRecord]) -> bool:
    return any(run.role for run in runs)


def _position(curve: list[TunedLr], best: TunedLr, finals: list[RunRecord]) -> str:
    """Where the best lr sits on the curve: interior, or at an end (the sweep's bound when its record says so)."""
    if curve[0].lr < best.lr < curve[-1].lr:
        return "interior"
    end = "lower" if best is curve[0] else "upper"
    bounds = {run.tuning.get("bound") for run in finals if run.tuning}
    if end in bounds:
        return f"at the {end} bound"
    if finals:  # the sweep moved on to the fresh seeds, which it does at an end only when a bound stops it
        return f"at the {'lowest' if end == 'lower' else 'highest'} lr tuned (the sweep's bound)"
    return f"at the {'lowest' if end == 'lower' else 'highest'} lr tuned so far (tuning not finished)"


def best_lrs(runs: list[RunRecord], interval_method: str = "t") -> list[BestLr]:
    """Per model x variant with runs that carry a role, its tuning curve, best lr and fresh seeds there."""
    found = []
    with_role = [run for run in runs if run.role and run.seed is not None]
    for (model, variant), members in group_by(with_role, lambda run: (run.model, run.variant)).items():
        tuning_runs = [run for run in members if run.role == "tune"]
        tune_seeds = sorted({run.seed for run in tuning_runs})
        scores: dict[float, dict[int, float]] = {}
        for run in tuning_runs:
            score = run_score(run.status, as_float(run.summary.get("final_test_acc")))
            if score is not None:
                lr = next((known for known in scores if same_lr(known, run.lr)), run.lr)
                scores.setdefault(lr, {})[run.seed] = score
        curve = [TunedLr(lr, by_seed) for lr, by_seed in sorted(scores.items()) if len(by_seed) == len(tune_seeds)]
        best = best_of(curve)
        fresh = [run for run in members if run.role == "final"]
        finals = [run for run in fresh if best is not None and same_lr(run.lr, best.lr)]
        values = final_accuracies(finals)
        config = next((run.config for run in members if run.config), {})
        found.append(BestLr(model, variant, channels_per_statistic(config), tune_seeds, curve, best,
                            _position(curve, best, finals) if best else "no lr tuned on every tuning seed yet",
                            finals, len(fresh) - len(finals),
                            intervals.mean_interval(values, interval_method) if values else None))
    found.sort(key=lambda item: (item.model, variant_sort_key(item.variant)))
    return found


def compare_best(found: list[BestLr], reference: str) -> None:
    """Each variant's fresh seeds against the reference's (each at its own best lr), Holm over all of them."""
    by_key = {(item.model, item.variant): item for item in found}
    pairs = []
    for item in found:
        base = by_key.get((item.model, reference))
        if item.variant == reference or base is None or not item.final_values or not base.final_values:
            continue
        difference = intervals.difference_interval(item.final_values, base.final_values)
        pairs.append((item, Comparison(item.model, item.best.lr, item.variant, reference, difference)))
    for (item, _), comparison in zip(pairs, with_holm([comparison for _, comparison in pairs])):
        item.comparison = comparison


def best_trends(found: list[BestLr]) -> list[GroupSizeTrend]:
    """Per model, the trend with group size over the fresh seeds (each variant at its own lr; `lr` is nan)."""
    return trend_with_holm([trend for model, items in group_by(found, lambda item: item.model).items()
                            if (trend := trend_at(model, math.nan, [run for item in items for run in item.finals]))
                            is not None])


def _points(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


def _interval_text(interval: intervals.Interval | None) -> str:
    if interval is None:
        return "–"
    no_interval = not interval.has_interval
    return accuracy_text(interval.mean, math.nan if no_interval else interval.low,
                         math.nan if no_interval else interval.high)


def _curve_text(item: BestLr) -> str:
    return ", ".join(f"{point.lr:g}: {100 * point.mean:.1f}%" for point in item.curve) or "–"


def write_best_csv(found: list[BestLr], path: Path) -> None:
    header = ["model", "variant", "channels_per_statistic", "tuned_lr", "position", "lrs_tuned", "tuning_acc_by_lr",
              "tune_seeds", "final_seeds", "final_n", "final_n_diverged", "final_acc_mean", "final_acc_ci_low",
              "final_acc_ci_high", "final_runs_left_out", "reference", "difference", "difference_ci_low",
              "difference_ci_high", "p_value", "p_holm", "holds_after_holm"]
    rows = []
    for item in found:
        interval, comparison = item.interval, item.comparison
        difference = comparison.difference if comparison else None
        rows.append([item.model, item.variant, item.channels_per_statistic, item.best.lr if item.best else None,
                     item.position, " ".join(f"{point.lr:g}" for point in item.curve),
                     " ".join(f"{point.lr:g}:{point.mean:.6g}" for point in item.curve),
                     " ".join(map(str, item.tune_seeds)), " ".join(str(run.seed) for run in item.finals),
                     len(item.final_values), item.n_diverged, interval.mean if interval else None,
                     interval.low if interval else None, interval.high if interval else None, item.left_out,
                     comparison.reference if comparison else None, difference.difference if difference else None,
                     difference.low if difference else None, difference.high if difference else None,
                     difference.p_value if difference else None, comparison.p_holm if comparison else None,
                     comparison.holds_after_holm if comparison else None])
    write_csv(path, header, rows)


@never_raises("Tuning curves and the fresh seeds at each best lr")
def plot_best_vs_best(found: list[BestLr], out_dir: Path) -> PlotResult:
    title = "Tuning curves and the fresh seeds at each best lr"
    drawn = [item for item in found if item.curve]
    if not drawn:
        return PlotResult(title, None, note="no variant has an lr tuned on every tuning seed yet")
    names = [f"{item.model}/{item.variant}" if len({i.model for i in drawn}) > 1 else item.variant for item in drawn]
    colors = series_colors(names)
    figure, axes = plt.subplots(figsize=(8, 5))
    # each variant's fresh seeds slightly apart on x, so that variants with the same best lr do not hide each other
    shifts = 10 ** np.linspace(-0.025, 0.025, len(drawn)) if len(drawn) > 1 else np.ones(1)
    for item, name, shift in zip(drawn, names, shifts):
        lrs = [point.lr for point in item.curve]
        axes.plot(lrs, [100 * point.mean for point in item.curve], marker="o", ms=4, lw=1.2, color=colors[name],
                  label=f"{name} (tuning)")
        axes.scatter([item.best.lr], [100 * item.best.mean], s=160, facecolors="none", edgecolors=[colors[name]],
                     linewidths=1.6, zorder=3)
        values = [100 * value for value in item.final_values]
        if values:
            axes.scatter([item.best.lr * shift] * len(values), values, marker="x", s=30, color=colors[name], zorder=4)
        if item.interval is not None and item.interval.has_interval:
            mean = 100 * item.interval.mean
            axes.errorbar([item.best.lr * shift * 1.06], [mean], yerr=[[mean - 100 * item.interval.low],
                                                               [100 * item.interval.high - mean]],
                          fmt="s", ms=5, capsize=3, color=colors[name], zorder=4)
    axes.set(xscale="log", xlabel="learning rate", ylabel="final test accuracy (%)",
             title="line: tuning score per lr; circle: the lr chosen; x: fresh seeds there; square: their mean")
    # the lrs tuned as the ticks, written as the sweep writes them (0.05, not 5e-2)
    axes.set_xticks(sorted({point.lr for item in drawn for point in item.curve}))
    axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda lr, _: f"{lr:g}"))
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    path = save_figure(figure, out_dir / "best_vs_best.png")
    return PlotResult(title, path,
                      "Per variant, the tuning curve (mean score over the tuning seeds at each lr; a diverged or "
                      "failed run scores 0), the lr chosen from it (open circle), the fresh seeds' final accuracies "
                      "at that lr (x, set slightly apart per variant; a diverged seed has none) and their mean with its "
                      "95% interval (square, just right of them). Fresh seeds falling below the circle are the tuning's selection "
                      "bias made visible.")


def best_vs_best_section(runs: list[RunRecord], out_dir: Path, reference: str,
                         interval_method: str = "t") -> list[str]:
    """The report's markdown lines for best against best (best_vs_best.csv and .png are written to out_dir)."""
    lines = [SECTION_HEADING, ""]
    if not has_roles(runs):
        return lines + ["_Best against best needs a `sweep.mode=best_lr` sweep, whose runs record whether they tuned "
                        "their variant's lr or are fresh seeds at it; these runs are not from one, so the variants "
                        "are compared at fixed lrs only (above)._", ""]
    found = best_lrs(runs, interval_method)
    compare_best(found, reference)
    trends = best_trends(found)
    write_best_csv(found, out_dir / "best_vs_best.csv")
    show_model = len({item.model for item in found}) > 1
    n_tune = sum(run.role == "tune" for run in runs)
    n_final = sum(run.role == "final" for run in runs)
    tested = [item.comparison for item in found if item.comparison and item.comparison.p_holm is not None]
    lines += [
        f"Each variant at its own best lr, from {n_tune} tuning runs and {n_final} fresh runs "
        "(`sweep.mode=best_lr`; `best_vs_best.csv`). The tuned lr is the one with the highest mean final test "
        "accuracy over the tuning seeds (a diverged or failed run scores 0, a tie goes to the smaller lr); it is "
        "*interior* when an lr on each side of it was tuned, else at an end of the lrs tuned, where the sweep "
        "stops only at its bound (`sweep.lr_search_min`/`lr_search_max`). The fresh seeds ran at that lr after it "
        "was chosen, and only they give the accuracy here: the tuning runs at the chosen lr were picked for doing "
        "well and are left out (selection bias). Test accuracy: mean over the fresh seeds that finished, with a "
        f"95% {INTERVAL_NAMES[interval_method]} interval; diverged seeds have no accuracy and are counted apart. "
        f"The difference is to `{reference}`'s fresh seeds at its own best lr, in points, with the 95% Welch "
        "t-interval, Welch's p and the p after Holm's correction over the "
        f"{len(tested)} comparison{'s' if len(tested) != 1 else ''} of this section"
        + (f" ({sum(c.holds_after_holm for c in tested)} of {len(tested)} hold after it)." if tested else "."), ""]
    header = ["model", "variant", "channels per statistic", "tuned lr", "where", "tuning curve (lr: mean acc)",
              f"fresh seeds: test acc % (mean [95% {INTERVAL_NAMES[interval_method]} interval])", "n", "diverged",
              f"− {reference} (points [95% Welch])", "p", "Holm p"]
    rows = []
    for item in found:
        comparison = item.comparison
        difference = comparison.difference if comparison else None
        channels = "–" if item.channels_per_statistic is None else str(item.channels_per_statistic)
        where = item.position + (f"; {item.left_out} fresh seed(s) at another lr left out" if item.left_out else "")
        points = "–"
        if difference is not None:
            points = _points(difference.difference) + (
                "" if difference.low is None else f" [{_points(difference.low)}, {_points(difference.high)}]")
        rows.append([item.model, item.variant, channels, "–" if item.best is None else f"{item.best.lr:g}", where,
                     _curve_text(item) + f" (seeds {', '.join(map(str, item.tune_seeds)) or '–'})",
                     _interval_text(item.interval), str(len(item.final_values)), str(item.n_diverged), points,
                     "–" if difference is None or difference.p_value is None else f"{difference.p_value:.2g}",
                     "–" if comparison is None or comparison.p_holm is None else f"{comparison.p_holm:.2g}"])
    lines += [model_table(header, rows, show_model), ""]
    lines += _trend_lines(trends, show_model)
    lines += plot_best_vs_best(found, out_dir).markdown("Not shown")
    return lines


def _trend_lines(trends: list[GroupSizeTrend], show_model: bool) -> list[str]:
    """The trend with group size over the fresh seeds, one sentence per model."""
    if not trends:
        return ["Trend with group size over the fresh seeds: _fewer than two group sizes have finished fresh "
                "seeds_.", ""]
    lines = []
    for trend in trends:
        prefix = f"{trend.model}: " if show_model else ""
        tau = "no τ (the accuracies do not vary)" if trend.tau is None else (
            f"Kendall's τ-b = {trend.tau:+.2f}, p = {trend.p_value:.2g}"
            + (f", Holm p = {trend.p_holm:.2g}" if show_model and trend.p_holm is not None else ""))
        lines.append(f"{prefix}Trend with group size over the fresh seeds ({trend.n_runs} finished runs, each variant "
                     f"at its own best lr; group sizes {' < '.join(map(str, trend.group_sizes))}): {tau}"
                     + (f"; left out: {', '.join(trend.left_out)}" if trend.left_out else "")
                     + (f"; {trend.n_diverged} diverged" if trend.n_diverged else "") + ".")
    return lines + [""]
