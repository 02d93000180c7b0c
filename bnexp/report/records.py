"""Run records and their aggregation: what the report's tables and plots are computed from.

`discover_runs` finds every run dir below the given paths and reads each into a RunRecord (summary, config, grid
coordinates); `aggregate` groups runs by model x variant x lr into GroupStats (accuracy over seeds, divergence,
steps to targets, grad-norm trajectory); `largest_stable_lrs` reads the stable lr per variant off those groups;
`provenance_counts` says which code and library versions made the runs. Uncertainty: each group's mean accuracy
carries a 95% interval over its seeds (bnexp/report/intervals.py), `compare_to_reference` words the difference of each
variant from the reference at each lr, and `edges_of_stability` reads each variant's edge bracket off its runs
(bnexp/lr_search.py), with the channels each statistic pools (`channels_per_statistic`).
"""
from __future__ import annotations

import functools
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from bnexp import lr_search as edge_search
from bnexp.report import intervals
from bnexp.config.keys import config_value, flatten
from bnexp.runs.fileio import read_json
from bnexp.runs.outcome import DEFAULT_MIN_ACC
from bnexp.runs.files import (
    COMPLETED_STATUSES,
    RUN_STATUSES,
    SWEEP_JOB_FILE,
    as_float,
    find_run_dirs,
    read_config,
    read_metrics,
    read_summary,
    run_status,
)

# Settings that identify the grid axes or only the machine; everything else should agree across compared runs.
AXIS_OR_MACHINE_KEYS = ("seed", "optim.lr", "variant.", "model.name", "device", "logger.", "hydra.", "data.path",
                        "data.data_dir", "data.cache_dir", "instrument.")
UNKNOWN_MODEL = "default"
# "Stable" (no seed diverged) is not "trains": a net can sit at chance without its loss ever blowing up.
# A run counts as having learned when its final test accuracy reaches this (CIFAR-10 chance is 0.1).
# The report's interval over seeds: Student-t (honest about 3 seeds) unless asked for the bootstrap.
DEFAULT_INTERVAL_METHOD = "t"
INTERVAL_METHODS = ("t", "bootstrap")
VARIANT_ORDER = ("correct_bn", "torch_bn", "grouped_bn", "shared_bn", "no_bn")
# summary.json's `provenance` fields, in the order the report lists them (unknown fields follow, sorted).
PROVENANCE_KEYS = ("bnexp_version", "git_commit", "git_dirty", "python", "torch", "triton", "cuda", "device")


def group_by(items: Iterable, key: Callable) -> dict[Any, list]:
    """The items in lists by key(item), keys and items in their first-seen order."""
    groups: dict[Any, list] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(groups)  # a plain dict: looking up a missing key must not add an empty group


@dataclass
class RunRecord:
    run_dir: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    status: str
    variant: str          # label, e.g. correct_bn or grouped_bn_g8
    model: str
    lr: float             # load_run refuses a run without a positive lr
    seed: int | None

    @property
    def completed(self) -> bool:
        return self.status in COMPLETED_STATUSES

    @functools.cached_property
    def step_records(self) -> list[dict[str, Any]]:
        """The per-step records of metrics.jsonl (read once; the tables and several plots use them)."""
        # a record whose step is not a number (another program's line) has no place on a step axis
        return [r for r in read_metrics(self.run_dir)
                if r.get("kind", "step") == "step" and _is_finite_number(r.get("step"))]

    @functools.cached_property
    def grad_norms(self) -> GradNormTrajectory:
        """grad_norm/global's trajectory (worked out once: the summary table and the edge of stability use it)."""
        values = []
        for record in sorted(self.step_records, key=lambda r: r["step"]):
            if "grad_norm/global" in record:
                value = as_float(record["grad_norm/global"])  # None for NaN
                values.append(math.inf if value is None else value)
        if not values:
            return GradNormTrajectory(None, None, None)
        return GradNormTrajectory(values[0], max(values[1:], default=None), values[-1])


@dataclass
class GradNormTrajectory:
    """grad_norm/global of one run at its first logged step, the largest after it, and at its last logged step.

    The first value is set by the initialisation alone (the same for every lr of a seed), so the maximum over a
    whole run mostly repeats it; the peak after step 0 and the last value show what training did: a peak far
    above the start is an explosion, a last value of exactly 0 a network that died. Non-finite norms count as inf.
    """
    at_init: float | None
    peak_after_init: float | None
    last: float | None


def variant_label(config: dict[str, Any], summary: dict[str, Any]) -> str:
    """correct_bn, shared_bn, ... with the group count appended for grouped BN (grouped_bn_g8): runs that differ
    only in stat_groups are different variants for this study."""
    name = str(config_value(config, "variant.name") or summary.get("variant") or summary.get("sweep_variant")
               or "unknown")
    norm = config_value(config, "variant.norm")
    groups = config_value(config, "variant.stat_groups")
    if groups is not None and (norm == "grouped" or name.startswith("grouped")) and f"_g{groups}" not in name:
        return f"{name}_g{groups}"
    return name


class SkippedRunDir(Exception):
    """A run dir the report cannot use; the message says why."""


@dataclass
class Skipped:
    run_dir: Path
    reason: str


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json with the fields the report reads in the types it reads them in: a field of another type (a
    foreign or damaged file) is dropped rather than allowed to break a table."""
    plain = dict(summary)
    if not isinstance(plain.get("steps_to_acc"), dict):
        plain.pop("steps_to_acc", None)
    else:
        plain["steps_to_acc"] = {key: value for key, value in plain["steps_to_acc"].items()
                                 if as_float(key) is not None}
    for key in ("error", "data_source", "variant", "model", "sweep_variant", "max_grad_norm_layer"):
        if plain.get(key) is not None and not isinstance(plain[key], str):
            plain[key] = str(plain[key])
    return plain


def load_run(run_dir: Path) -> RunRecord:
    """The run in `run_dir`; raises SkippedRunDir when it cannot be placed in the study."""
    summary = read_summary(run_dir)
    if summary is None:
        raise SkippedRunDir("summary.json is not a readable JSON object (damaged, or cut short by a crash)")
    status = run_status(run_dir, summary)
    if status not in RUN_STATUSES or status == "missing":
        raise SkippedRunDir(f"summary.json status {summary.get('status')!r} is not one bnexp writes "
                            f"({', '.join(s for s in RUN_STATUSES if s != 'missing')})")
    summary = _plain_summary(summary)
    config = read_config(run_dir)
    job = read_json(run_dir / SWEEP_JOB_FILE) or {}  # the sweep's own record; helps when config is absent
    if not config and job.get("variant"):
        summary.setdefault("sweep_variant", str(job["variant"]))
    given_lr = summary.get("lr")
    if given_lr is None:
        given_lr = config_value(config, "optim.lr", job.get("lr"), null_is_missing=False)
    lr = as_float(given_lr)
    if lr is None or not math.isfinite(lr) or lr <= 0:
        raise SkippedRunDir(f"its lr ({given_lr!r}) is not a positive number, so it has no place on the lr axis "
                            f"(status {status})")
    seed = summary.get("seed", config_value(config, "seed", job.get("seed"), null_is_missing=False))
    if seed is not None and not (_is_finite_number(seed) and float(seed).is_integer()):
        raise SkippedRunDir(f"its seed ({seed!r}) is not an integer (status {status})")
    model = summary.get("model") or config_value(config, "model.name") or job.get("model") or UNKNOWN_MODEL
    return RunRecord(run_dir=run_dir, summary=summary, config=config, status=status,
                     variant=variant_label(config, summary), model=str(model), lr=lr,
                     seed=int(seed) if seed is not None else None)


def load_runs(paths: Iterable[Path]) -> tuple[list[RunRecord], list[Skipped]]:
    """Every run dir below `paths`: the runs the report can use, and the dirs it skipped with the reason."""
    runs, skipped = [], []
    for run_dir in find_run_dirs(paths):
        try:
            runs.append(load_run(run_dir))
        except SkippedRunDir as reason:
            skipped.append(Skipped(run_dir, str(reason)))
        except Exception as error:  # a damage not foreseen above must cost one run dir, not the report
            skipped.append(Skipped(run_dir, f"could not be read ({type(error).__name__}: {error})"))
    # A run that failed before its config was written does not know its model (the trainer's default); with
    # one model in the study it is that one, rather than a spurious second model in every table.
    known_models = {run.model for run in runs if run.model != UNKNOWN_MODEL}
    if len(known_models) == 1:
        for run in runs:
            if run.model == UNKNOWN_MODEL:
                run.model = next(iter(known_models))
    return runs, skipped


def discover_runs(paths: Iterable[Path]) -> list[RunRecord]:
    return load_runs(paths)[0]


def variant_sort_key(label: str) -> tuple:
    base = next((i for i, name in enumerate(VARIANT_ORDER) if label.startswith(name)), len(VARIANT_ORDER))
    # grouped BN from close to per-channel to close to shared: by group size (grouped_bn_2ch, _4ch, ...) first,
    # then by group count from many to few (grouped_bn_g8, _g4, _g1)
    size = re.fullmatch(r".*_(\d+)ch", label)
    if size:
        return (base, 0, int(size.group(1)), label)
    groups = label.rsplit("_g", 1)[-1] if "_g" in label else ""
    return (base, 1, -int(groups) if groups.isdigit() else 0, label)


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


def largest_stable_lrs(groups: list[GroupStats], min_acc: float = DEFAULT_MIN_ACC) -> list[StableLr]:
    results = []
    for (model, variant), members in group_by(groups, lambda g: (g.model, g.variant)).items():
        largest = max((g.lr for g in members if g.stable), default=None)
        results.append(StableLr(model, variant, largest,
                                min((g.lr for g in members if g.values["n_diverged"] > 0), default=None),
                                largest is not None and largest == max(g.lr for g in members),
                                max((g.lr for g in members if g.trains(min_acc)), default=None)))
    results.sort(key=lambda r: (r.model, variant_sort_key(r.variant)))
    return results


def varying_config_keys(runs: list[RunRecord]) -> dict[str, list[Any]]:
    """Config keys (other than the grid axes) whose values differ between runs: a warning sign when comparing."""
    seen: dict[str, set] = defaultdict(set)
    for run in runs:
        for key, value in flatten(run.config).items():
            if not key.startswith(AXIS_OR_MACHINE_KEYS):  # a key equal to one starts with it too
                seen[key].add(repr(value))
    return {key: sorted(values) for key, values in sorted(seen.items()) if len(values) > 1}


def choose_shared_lr(groups: list[GroupStats], requested: float | None) -> float | None:
    """The lr for per-variant curve plots: the largest lr tried by every variant at which the reference variant
    (correct_bn if present) is stable -- where the variants differ most while the reference still trains."""
    if requested is not None:
        return requested
    lrs_by_variant = {variant: {g.lr for g in members}
                      for variant, members in group_by(groups, lambda g: g.variant).items()}
    if not lrs_by_variant:
        return None
    common = sorted(set.intersection(*lrs_by_variant.values())) or sorted({g.lr for g in groups})
    reference = "correct_bn" if "correct_bn" in lrs_by_variant else sorted(lrs_by_variant, key=variant_sort_key)[0]
    return max((g.lr for g in groups if g.variant == reference and g.stable and g.lr in common), default=common[0])


def series_labeller(items: list) -> Callable[[Any], str]:
    """How the plots label the series of a run, group or edge among `items`: its variant, or model/variant when
    the items span several models."""
    if len({item.model for item in items}) > 1:
        return lambda item: f"{item.model}/{item.variant}"
    return lambda item: item.variant


def runs_by_series(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs grouped by their series label, in report order (by model, variant, then seed)."""
    ordered = sorted(runs, key=lambda r: (r.model, variant_sort_key(r.variant), r.seed is None, r.seed))
    return group_by(ordered, series_labeller(runs))


def runs_at_lr(runs: list[RunRecord], lr: float | None) -> dict[str, list[RunRecord]]:
    """The runs at `lr` (the shared lr of the per-variant curve plots) by series; none when there is no such lr."""
    if lr is None:
        return {}
    return runs_by_series([run for run in runs if math.isclose(run.lr, lr, rel_tol=1e-9)])


@dataclass
class ProvenanceCounts:
    """Per provenance field, how many runs recorded each value; and how many runs recorded no provenance."""
    values: dict[str, Counter]
    runs_without: int


def _provenance_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def provenance_counts(runs: list[RunRecord]) -> ProvenanceCounts:
    records = [run.summary.get("provenance") for run in runs]
    records = [record for record in records if isinstance(record, dict) and record]
    keys = {key for record in records for key in record}
    ordered = [key for key in PROVENANCE_KEYS if key in keys] + sorted(keys - set(PROVENANCE_KEYS))
    values = {key: Counter(_provenance_text(record[key]) if key in record else "not recorded"
                           for record in records) for key in ordered}
    return ProvenanceCounts(values, len(runs) - len(records))


# ----------------------------------------------------------------------------------------------------------------
# Differences between variants, worded by whether they hold beyond their interval
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Comparison:
    """A variant's final test accuracy against the reference's at one lr (finished seeds of each)."""
    model: str
    lr: float
    variant: str
    reference: str
    difference: intervals.Difference   # mean(variant) - mean(reference), Welch t-interval

    def verdict(self) -> str:
        """'correct_bn > shared_bn', or '... not resolved (...)', from the interval of the difference."""
        return self.difference.verdict(self.variant, self.reference)

    def format(self) -> str:
        """'shared_bn − correct_bn: -12.3 points [-20.1, -4.5] (n=3 vs 3) → holds: shared_bn < correct_bn'."""
        d = self.difference
        points = f"{100 * d.difference:+.1f} points"
        if d.low is not None:
            points += f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        verdict = f"holds: {self.verdict()}" if d.resolved else self.verdict()
        return f"{self.variant} − {self.reference}: {points} (n={d.n_a} vs {d.n_b}) → {verdict}"


def compare_to_reference(groups: list[GroupStats], reference: str = "correct_bn",
                         level: float = intervals.DEFAULT_LEVEL) -> list[Comparison]:
    """Per model and lr, each other variant's final accuracy against `reference`'s, as a Welch difference.

    Only lrs where both have a finished seed are compared; diverged seeds have no accuracy (the summary counts them).
    """
    by_key = {(g.model, g.variant, g.lr): g for g in groups}
    comparisons = []
    for group in groups:
        base = by_key.get((group.model, reference, group.lr))
        if group.variant == reference or base is None:
            continue
        values, base_values = final_accuracies(group.runs), final_accuracies(base.runs)
        if values and base_values:
            comparisons.append(Comparison(group.model, group.lr, group.variant, reference,
                                          intervals.difference_interval(values, base_values, level)))
    comparisons.sort(key=lambda c: (c.model, c.lr, variant_sort_key(c.variant)))
    return comparisons


# ----------------------------------------------------------------------------------------------------------------
# The edge of stability per variant, from whatever runs exist (a dense grid, an edge search, or both)
# ----------------------------------------------------------------------------------------------------------------

ALL_CHANNELS = "all"
NO_NORM = "no norm"


def run_outcome(run: RunRecord, min_acc: float = DEFAULT_MIN_ACC) -> edge_search.Outcome | None:
    """How the run ended for the edge of stability: trains, diverged, collapsed, failed; None while unknown.
    A finished run's last `grad_norm/global` of exactly 0 (the network died) makes it collapsed."""
    last_grad_norm = run.grad_norms.last if run.status == "finished" else None
    return edge_search.classify_run(run.status, as_float(run.summary.get("final_test_acc")), last_grad_norm, min_acc)


def channels_per_statistic(config: dict[str, Any]) -> int | str | None:
    """How many channels one statistic pools, from a run's config: 1 (per-channel), the group size
    (`variant.channels_per_group`), 'all' (one statistic per layer: shared_bn, or stat_groups=1), 'no norm';
    None for a fixed group count above 1, whose group size differs between layers of different widths."""
    norm = config_value(config, "variant.norm")
    group_size = config_value(config, "variant.channels_per_group")
    stat_groups = config_value(config, "variant.stat_groups")
    if norm == "none":
        return NO_NORM
    if norm == "per_channel":
        return 1
    if norm == "shared" or (norm == "grouped" and group_size is None and stat_groups == 1):
        return ALL_CHANNELS
    if norm == "grouped" and group_size is not None:
        return int(group_size)
    return None


@dataclass
class EdgeOfStability:
    """One variant's edge: the last lr where every seed trained and the first where one did not."""
    model: str
    variant: str
    bracket: edge_search.EdgeBracket
    channels_per_statistic: int | str | None
    lrs_tried: list[float]

    @property
    def max_stable_lr(self) -> float | None:
        return self.bracket.max_stable_lr

    @property
    def first_failing_lr(self) -> float | None:
        return self.bracket.first_fails.lr if self.bracket.first_fails else None


def edges_of_stability(runs: list[RunRecord], min_acc: float = DEFAULT_MIN_ACC) -> list[EdgeOfStability]:
    """Per model x variant, the edge bracket from its runs, however they were laid out.

    Each lr is decided on every seed the variant was run with: it trains when each of them trained, fails when
    one diverged, collapsed (below `min_acc`, or a last grad norm of exactly 0) or failed; otherwise it is open.
    The lrs tried bound the bracket: training at the largest says 'up to the cap', failing at the smallest
    'no stable lr down to' it. No bisection is asked for here (the ratio is unbounded): the bracket is what the
    runs show, as wide as their lr spacing.
    """
    edges = []
    seeded = [run for run in runs if run.seed is not None]
    for (model, variant), members in group_by(seeded, lambda run: (run.model, run.variant)).items():
        outcomes: dict[float, dict[int, edge_search.Outcome]] = defaultdict(dict)
        for run in members:
            if (outcome := run_outcome(run, min_acc)) is not None:
                outcomes[run.lr][run.seed] = outcome
        lrs = sorted({run.lr for run in members})
        settings = edge_search.EdgeSearchSettings(start_lr=lrs[0], seeds=sorted({run.seed for run in members}),
                                                  ratio=math.inf, min_lr=lrs[0], max_lr=lrs[-1])
        bracket = edge_search.find_bracket(settings, outcomes)
        config = next((run.config for run in members if run.config), {})
        edges.append(EdgeOfStability(model, variant, bracket, channels_per_statistic(config), lrs))
    edges.sort(key=lambda e: (e.model, variant_sort_key(e.variant)))
    return edges
