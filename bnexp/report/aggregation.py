"""Runs grouped by model x variant x lr into GroupStats, and the largest stable lr per variant read off them.

Each group's mean final accuracy is over the seeds that finished (a diverged run's last accuracy is not a result;
divergence has its own column, as a fraction of the runs that completed) and carries a 95% interval over those
seeds (bnexp/report/intervals.py); the group also holds steps to the accuracy targets and the grad-norm trajectory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnexp.report import intervals
from bnexp.report.run_records import RunRecord, group_by, variant_sort_key
from bnexp.runs.files import as_float
from bnexp.runs.outcome import DEFAULT_MIN_ACC

# The report's interval over seeds: Student-t (honest about 3 seeds) unless asked for the bootstrap.
DEFAULT_INTERVAL_METHOD = "t"
INTERVAL_METHODS = ("t", "bootstrap")


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _std(values: list[float]) -> float:
    # Sample std over seeds; undefined for a single seed.
    return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan


@dataclass
class GroupStats:
    model: str
    variant: str
    lr: float
    runs: list[RunRecord]
    values: dict[str, Any]

    @property
    def stable(self) -> bool:
        """Every seed finished, none diverged (failed or unfinished runs make it not-known-stable)."""
        return bool(self.runs) and all(run.status == "finished" for run in self.runs)

    def trains(self, min_acc: float) -> bool:
        """Stable, and every seed's final test accuracy reached min_acc."""
        return self.stable and all((as_float(run.summary.get("final_test_acc")) or 0.0) >= min_acc
                                   for run in self.runs)


def accuracy_targets(runs: list[RunRecord]) -> list[str]:
    targets = {key for run in runs for key in (run.summary.get("steps_to_acc") or {})}
    return sorted(targets, key=lambda t: float(t))


def _summary_numbers(runs: list[RunRecord], key: str) -> list[float]:
    """The runs' summary.json `key`, where it is a number (not NaN)."""
    return [value for value in (as_float(run.summary.get(key)) for run in runs) if value is not None]


def final_accuracies(runs: list[RunRecord]) -> list[float]:
    """Final test accuracy of each seed that finished (diverged seeds have none; they are counted apart)."""
    return _summary_numbers([run for run in runs if run.status == "finished"], "final_test_acc")


def aggregate(runs: list[RunRecord], min_acc: float = DEFAULT_MIN_ACC,
              interval_method: str = DEFAULT_INTERVAL_METHOD) -> list[GroupStats]:
    targets = accuracy_targets(runs)
    with_roles = any(run.role for run in runs)
    groups = []
    for (model, variant, lr), members in group_by(runs, lambda run: (run.model, run.variant, run.lr)).items():
        members.sort(key=lambda run: (run.seed is None, run.seed))
        finished = [run for run in members if run.status == "finished"]
        diverged = [run for run in members if run.status == "diverged"]
        # Accuracy over seeds that finished without diverging; divergence is reported in its own column.
        accuracies = final_accuracies(members)
        interval = intervals.mean_interval(accuracies, interval_method) if accuracies else None
        has_interval = interval is not None and interval.has_interval  # no interval over fewer than 2 seeds
        best = _summary_numbers(finished, "best_test_acc")
        grad_norms = _summary_numbers(members, "max_grad_norm")
        completed = len(finished) + len(diverged)
        values: dict[str, Any] = {
            "n_runs": len(members), "n_finished": len(finished), "n_diverged": len(diverged),
            "n_incomplete": len(members) - completed,
            "frac_diverged": len(diverged) / completed if completed else math.nan,
            "final_test_acc_mean": _mean(accuracies), "final_test_acc_std": _std(accuracies),
            "final_test_acc_n": len(accuracies),
            "final_test_acc_ci_low": interval.low if has_interval else math.nan,
            "final_test_acc_ci_high": interval.high if has_interval else math.nan, "interval": interval_method,
            "best_test_acc_mean": _mean(best),
            "n_below_min_acc": sum(a < min_acc for a in accuracies),
        }
        for target in targets:
            steps = [s for s in (as_float((run.summary.get("steps_to_acc") or {}).get(target)) for run in finished)
                     if s is not None]
            values[f"steps_to_acc_{target}_mean"] = _mean(steps)
            values[f"steps_to_acc_{target}_reached"] = len(steps)
        values["max_grad_norm"] = max(grad_norms, default=math.nan)
        trajectories = [run.grad_norms for run in members]
        at_init = [t.at_init for t in trajectories if t.at_init is not None]
        peaks = [t.peak_after_init for t in trajectories if t.peak_after_init is not None]
        # the last value of a diverged run is its blow-up, already in the peak: average the finished runs
        last = [run.grad_norms.last for run in finished if run.grad_norms.last is not None]
        values["grad_norm_at_init_mean"] = _mean(at_init)
        values["grad_norm_peak_after_init_max"] = max(peaks, default=math.nan)
        values["grad_norm_last_mean"] = _mean(last)
        for key in ("train_loss_auc", "wall_time_s", "images_per_s"):
            values[f"{key}_mean"] = _mean(_summary_numbers(finished, key))
        if with_roles:  # a best_lr sweep's runs: how many tuned the lr, how many are fresh seeds
            values["n_tuning_runs"] = sum(run.role == "tune" for run in members)
            values["n_fresh_runs"] = sum(run.role == "final" for run in members)
        groups.append(GroupStats(model, variant, lr, members, values))
    groups.sort(key=lambda g: (g.model, variant_sort_key(g.variant), g.lr))
    return groups


@dataclass
class StableLr:
    """One variant's stable lrs; the fields are stable_lr.csv's columns, in order."""
    model: str
    variant: str
    largest_stable_lr: float | None
    smallest_unstable_lr: float | None
    stable_at_top_of_grid: bool  # stable at the largest lr tried: the grid did not find the limit
    largest_training_lr: float | None  # stable and every seed reached min_acc
    seeds_per_lr: str = ""             # how many seeds each lr was decided on: "3", or "2-3" when they differ


def count_range(counts: list[int]) -> str:
    """'3' when every count is 3, '2-3' when they range from 2 to 3."""
    low, high = min(counts, default=0), max(counts, default=0)
    return str(low) if low == high else f"{low}-{high}"


def largest_stable_lrs(groups: list[GroupStats], min_acc: float = DEFAULT_MIN_ACC) -> list[StableLr]:
    results = []
    for (model, variant), members in group_by(groups, lambda g: (g.model, g.variant)).items():
        largest = max((g.lr for g in members if g.stable), default=None)
        results.append(StableLr(model, variant, largest,
                                min((g.lr for g in members if g.values["n_diverged"] > 0), default=None),
                                largest is not None and largest == max(g.lr for g in members),
                                max((g.lr for g in members if g.trains(min_acc)), default=None),
                                count_range([len(g.runs) for g in members])))
    results.sort(key=lambda r: (r.model, variant_sort_key(r.variant)))
    return results
