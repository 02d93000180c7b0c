"""The report's result tables as markdown: per variant x lr, the stable lrs, the largest trainable lrs, the
differences and the trend with group size."""
from __future__ import annotations

import itertools
import math
from typing import Any

from bnexp.report.aggregation import DEFAULT_INTERVAL_METHOD, GroupStats, StableLr
from bnexp.report.comparisons import Comparison
from bnexp.report.tables import model_table
from bnexp.report.trainable_lr import LargestTrainableLr
from bnexp.report.trend import GroupSizeTrend
from bnexp.runs.files import as_float
from bnexp.runs.outcome import DEFAULT_MIN_ACC


def _fmt(value: Any) -> str:
    number = as_float(value)
    if number is None:
        return "–"
    return "inf" if math.isinf(number) else f"{number:.3g}"


def accuracy_text(mean: float, low: float, high: float) -> str:
    """'55.40 [53.10, 57.70]' in percent; the mean alone when there is no interval (one seed)."""
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.2f}" + ("" if math.isnan(low) else f" [{100 * low:.2f}, {100 * high:.2f}]")


INTERVAL_NAMES = {"t": "Student-t", "bootstrap": "percentile bootstrap"}


def _lr_text(lr: float | None, missing: str = "none") -> str:
    return missing if lr is None else f"{lr:g}"


def summary_markdown(groups: list[GroupStats], targets: list[str], show_model: bool,
                     interval_method: str = DEFAULT_INTERVAL_METHOD) -> str:
    show_incomplete = any(group.values["n_incomplete"] for group in groups)  # a column of blanks says nothing
    show_roles = any("n_tuning_runs" in group.values for group in groups)  # a best_lr sweep's runs
    header = ["model", "variant", "lr", f"test acc % (mean [95% {INTERVAL_NAMES[interval_method]} interval])",
              "n", "diverged"]
    header += (["tuning / fresh"] if show_roles else [])
    header += (["incomplete"] if show_incomplete else [])
    header += [f"steps to {float(t):.0%}" for t in targets]
    header += ["grad norm at step 0", "peak grad norm after step 0", "last grad norm"]
    rows = []
    for group in groups:
        v = group.values
        completed = v["n_finished"] + v["n_diverged"]
        row = [group.model, group.variant, f"{group.lr:g}",
               accuracy_text(v["final_test_acc_mean"], v["final_test_acc_ci_low"], v["final_test_acc_ci_high"]),
               str(v["final_test_acc_n"]), f"{v['n_diverged']}/{completed}" if completed else "–"]
        if show_roles:
            row.append(f"{v['n_tuning_runs']} / {v['n_fresh_runs']}")
        if show_incomplete:
            row.append(str(v["n_incomplete"]) if v["n_incomplete"] else "")
        for target in targets:
            mean, reached = v[f"steps_to_acc_{target}_mean"], v[f"steps_to_acc_{target}_reached"]
            row.append("–" if not reached else f"{mean:.0f} ({reached}/{v['n_finished']})")
        rows.append(row + [_fmt(v[key]) for key in ("grad_norm_at_init_mean", "grad_norm_peak_after_init_max",
                                                     "grad_norm_last_mean")])
    return model_table(header, rows, show_model)


def stable_markdown(stable: list[StableLr], show_model: bool, min_acc: float = DEFAULT_MIN_ACC) -> str:
    header = ["model", "variant", "largest stable lr", "smallest lr with a divergence",
              f"largest lr that trains (acc ≥ {100 * min_acc:g}%)", "seeds per lr"]
    rows = [[item.model, item.variant,
             _lr_text(item.largest_stable_lr) + (" (top of grid)" if item.stable_at_top_of_grid else ""),
             _lr_text(item.smallest_unstable_lr, missing="–"), _lr_text(item.largest_training_lr),
             item.seeds_per_lr or "–"] for item in stable]
    return model_table(header, rows, show_model)


def largest_trainable_lr_markdown(found: list[LargestTrainableLr], show_model: bool,
                                  threshold_lrs: dict[tuple[str, str], float | None] | None = None) -> str:
    """The largest trainable lr per variant; with `threshold_lrs` (where runs measured sharpness) a last column: the
    lowest lr at which sharpness reached the optimiser's threshold, the edge of stability."""
    header = ["model", "variant", "channels per statistic", "largest trainable lr", "bracket", "lrs tried",
              "seeds per lr"]
    if threshold_lrs:
        header.append("edge of stability: lowest lr where sharpness reached the threshold")
    rows = []
    for item in found:
        channels = "–" if item.channels_per_statistic is None else str(item.channels_per_statistic)
        row = [item.model, item.variant, channels, _lr_text(item.largest_trainable_lr), item.bracket.describe(),
               ", ".join(f"{lr:g}" for lr in item.lrs_tried), item.seeds_per_lr or "–"]
        if threshold_lrs:
            key = (item.model, item.variant)
            row.append("not measured" if key not in threshold_lrs else _lr_text(threshold_lrs[key],
                                                                                missing="not reached"))
        rows.append(row)
    return model_table(header, rows, show_model)


def differences_markdown(comparisons: list[Comparison], show_model: bool) -> list[str]:
    """Per lr, one line per variant: its difference from the reference with the interval, and the verdict."""
    lines: list[str] = []
    for (model, lr), same_lr in itertools.groupby(comparisons, key=lambda c: (c.model, c.lr)):
        prefix = f"{model}, " if show_model else ""
        lines += ["", f"**{prefix}lr {lr:g}**", ""]
        lines += [f"- {comparison.format()}" for comparison in same_lr]
    return lines


def _p_text(p: float | None) -> str:
    return "–" if p is None else f"{p:.2g}"


def trend_markdown(trends: list[GroupSizeTrend], show_model: bool) -> str:
    header = ["model", "lr", "group sizes (order)", "runs", "Kendall τ-b", "p", "Holm p", "diverged, left out",
              "variants left out"]
    rows = [[t.model, f"{t.lr:g}", " < ".join(map(str, t.group_sizes)), str(t.n_runs),
             "–" if t.tau is None else f"{t.tau:+.2f}", _p_text(t.p_value), _p_text(t.p_holm), str(t.n_diverged),
             ", ".join(t.left_out) or "–"] for t in trends]
    return model_table(header, rows, show_model)
