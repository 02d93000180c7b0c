"""The report's reading of runs in one import, for callers outside the report (the dashboard) and for scripts.

Each name lives in the module that does its job; this module only gathers them:
  run_records   run dirs read into RunRecords (`load_runs`), variant labels and their order
  selection     the runs the tables count: on the lr axis, one per seed (`counted_runs`, `discover_runs`)
  aggregation   runs grouped by model x variant x lr (`aggregate` -> GroupStats), `largest_stable_lrs`
  comparisons   each variant against the reference at each lr, as a Welch difference (`compare_to_reference`)
  trend         Kendall's τ of accuracy against group size at each lr (`group_size_trends`)
  trainable_lr  the largest trainable lr per variant, with its bracket (`largest_trainable_lrs`)
  provenance    the code and library versions that made the runs (`provenance_counts`)
  series        how the plots group runs, and the lr of the per-variant curve plots (`choose_shared_lr`)
  study_config  the settings that differ between runs but are not grid axes (`varying_config_keys`)
"""
from __future__ import annotations

from bnexp.report.aggregation import (DEFAULT_INTERVAL_METHOD, INTERVAL_METHODS, GroupStats, StableLr,
                                      accuracy_targets, aggregate, final_accuracies, largest_stable_lrs)
from bnexp.report.comparisons import Comparison, compare_to_reference
from bnexp.report.provenance import PROVENANCE_KEYS, ProvenanceCounts, provenance_counts
from bnexp.report.run_records import (VARIANT_ORDER, GradNormTrajectory, RunRecord, Skipped, SkippedRunDir, group_by,
                                      load_run, load_runs, variant_label, variant_sort_key)
from bnexp.report.selection import RepeatedSeed, counted_runs, discover_runs
from bnexp.report.series import choose_shared_lr, runs_at_lr, runs_by_series, series_labeller
from bnexp.report.study_config import varying_config_keys
from bnexp.report.trend import GroupSizeTrend, group_size_trends
from bnexp.report.trainable_lr import (ALL_CHANNELS, NO_NORM, LargestTrainableLr, channels_per_statistic,
                                       largest_trainable_lrs, run_outcome)
from bnexp.runs.outcome import DEFAULT_MIN_ACC

__all__ = [
    "ALL_CHANNELS", "DEFAULT_INTERVAL_METHOD", "DEFAULT_MIN_ACC", "INTERVAL_METHODS", "NO_NORM", "PROVENANCE_KEYS",
    "VARIANT_ORDER", "Comparison", "GradNormTrajectory", "GroupSizeTrend", "GroupStats", "LargestTrainableLr",
    "ProvenanceCounts", "RepeatedSeed", "RunRecord", "Skipped", "SkippedRunDir", "StableLr", "accuracy_targets",
    "aggregate", "channels_per_statistic", "choose_shared_lr", "compare_to_reference", "counted_runs",
    "discover_runs", "final_accuracies", "group_by", "group_size_trends", "largest_stable_lrs",
    "largest_trainable_lrs", "load_run", "load_runs", "provenance_counts", "run_outcome", "runs_at_lr",
    "runs_by_series", "series_labeller", "variant_label", "variant_sort_key", "varying_config_keys",
]
