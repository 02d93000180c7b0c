"""The report's CSV files, one writer each: runs.csv, summary.csv, stable_lr.csv, largest_trainable_lr.csv,
differences.csv and trend.csv (the mechanism section writes its own mechanism.csv)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from bnexp.report.aggregation import GroupStats, StableLr
from bnexp.report.comparisons import Comparison
from bnexp.report.run_records import RunRecord, variant_sort_key
from bnexp.report.shown_paths import shown_path
from bnexp.report.tables import write_csv
from bnexp.report.trainable_lr import LargestTrainableLr
from bnexp.report.trend import GroupSizeTrend
from bnexp.runs.files import first_line

RUN_COLUMNS = ("model", "variant", "lr", "seed", "role", "status", "final_test_acc", "best_test_acc", "diverged_step",
               "max_grad_norm", "max_grad_norm_layer", "train_loss_auc", "steps_done", "wall_time_s",
               "images_per_s", "data_source", "run_dir", "error")


def write_runs_csv(runs: list[RunRecord], path: Path) -> None:
    rows = []
    # a run without an lr (it failed on a bad one) follows its variant's runs
    for run in sorted(runs, key=lambda r: (r.model, variant_sort_key(r.variant), r.lr if r.on_lr_axis else math.inf,
                                           r.seed or 0)):
        row = {"model": run.model, "variant": run.variant, "lr": run.lr, "seed": run.seed, "role": run.role,
               "status": run.status,
               "run_dir": shown_path(run.run_dir), "error": first_line(run.summary.get("error"))}
        rows.append([row.get(c, run.summary.get(c)) for c in RUN_COLUMNS])
    write_csv(path, list(RUN_COLUMNS), rows)


def write_summary_csv(groups: list[GroupStats], path: Path) -> None:
    value_columns = list(dict.fromkeys(key for group in groups for key in group.values))
    write_csv(path, ["model", "variant", "lr", *value_columns],
              [[group.model, group.variant, group.lr, *(group.values.get(c, math.nan) for c in value_columns)]
               for group in groups])


def write_stable_csv(stable: list[StableLr], path: Path) -> None:
    write_csv(path, [column.name for column in dataclasses.fields(StableLr)], map(dataclasses.astuple, stable))


def write_largest_trainable_lr_csv(found: list[LargestTrainableLr], path: Path,
                                   threshold_lrs: dict[tuple[str, str], float | None] | None = None) -> None:
    """One row per variant; `threshold_lrs` ((model, variant) -> the lowest lr at which sharpness reached the
    optimiser's threshold, from bnexp/report/sharpness.py) fills the last column where runs measured it."""
    threshold_lrs = threshold_lrs or {}
    write_csv(path, ["model", "variant", "channels_per_statistic", "largest_trainable_lr", "first_failing_lr",
                     "capped", "floored", "lrs_tried", "bracket", "seeds_per_lr", "lowest_lr_sharpness_at_threshold"],
              [[item.model, item.variant, item.channels_per_statistic, item.largest_trainable_lr,
                item.first_failing_lr, item.bracket.capped, item.bracket.floored,
                " ".join(f"{lr:g}" for lr in item.lrs_tried), item.bracket.describe(), item.seeds_per_lr,
                threshold_lrs.get((item.model, item.variant))] for item in found])


def write_differences_csv(comparisons: list[Comparison], path: Path) -> None:
    write_csv(path, ["model", "lr", "variant", "reference", "difference", "ci_low", "ci_high", "n_variant",
                     "n_reference", "resolved", "verdict", "p_value", "p_holm", "holds_after_holm"],
              [[c.model, c.lr, c.variant, c.reference, c.difference.difference, c.difference.low,
                c.difference.high, c.difference.n_a, c.difference.n_b, c.difference.resolved, c.verdict(),
                c.difference.p_value, c.p_holm, c.holds_after_holm] for c in comparisons])


def write_trend_csv(trends: list[GroupSizeTrend], path: Path) -> None:
    write_csv(path, ["model", "lr", "group_sizes", "n_runs", "n_diverged_left_out", "variants", "variants_left_out",
                     "kendall_tau_b", "p_value", "p_holm"],
              [[t.model, t.lr, " ".join(map(str, t.group_sizes)), t.n_runs, t.n_diverged, " ".join(t.variants),
                " ".join(t.left_out), t.tau, t.p_value, t.p_holm] for t in trends])
