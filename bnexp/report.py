"""Results report: aggregate run dirs into tables, plots and a markdown report.

    python -m bnexp.report <sweep dirs | multirun dirs | run dirs ...> --out results/<name> [--lr 0.4]

Finds every run dir below the given paths (a dir holding summary.json plus config.yaml or .hydra/config.yaml, or
a sweep run dir with sweep_job.json), groups runs by model x variant x lr and writes to --out:
  runs.csv               one row per run (the per-run numbers everything else is computed from)
  summary.csv/.md        per variant x lr: final test acc mean ± std over seeds, fraction diverged, steps to the
                         accuracy targets, the global grad norm at step 0, its peak after step 0 and its last value, ...
  stable_lr.csv          the largest lr per variant at which every seed finished without diverging
  *.png                  plots (see bnexp/report_plots.py)
  report.md              all of the above with the config and data source
Optional fields (instrumentation) may be missing in older runs; the affected plot is skipped with a note.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from bnexp.rundirs import (
    SWEEP_JOB_FILE,
    as_float,
    find_run_dirs,
    first_line,
    flatten,
    get_path,
    read_config,
    read_json,
    read_metrics,
    read_summary,
)

# Settings that identify the grid axes or only the machine; everything else should agree across compared runs.
AXIS_OR_MACHINE_KEYS = ("seed", "optim.lr", "variant.", "model.name", "device", "logger.", "hydra.", "data.path",
                        "data.data_dir", "data.cache_dir", "instrument.")
HEADLINE_CONFIG_KEYS = ("model.name", "model.width", "data.name", "data.train_size", "data.test_size",
                        "optim.name", "optim.momentum", "optim.nesterov", "optim.weight_decay",
                        "optim.label_smoothing", "optim.schedule", "optim.warmup_steps", "optim.warmup_frac",
                        "train.epochs", "train.batch_size", "train.amp", "train.compile", "train.channels_last",
                        "divergence.loss_factor", "variant.backend")
UNKNOWN_MODEL = "default"
# "Stable" (no seed diverged) is not "trains": a net can sit at chance without its loss ever blowing up.
# A run counts as having learned when its final test accuracy reaches this (CIFAR-10 chance is 0.1).
DEFAULT_MIN_ACC = 0.2
VARIANT_ORDER = ("correct_bn", "torch_bn", "grouped_bn", "shared_bn", "no_bn")


# ----------------------------------------------------------------------------------------------------------------
# Loading runs
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    run_dir: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    status: str
    variant: str          # label, e.g. correct_bn or grouped_bn_g8
    model: str
    lr: float | None
    seed: int | None
    _step_records: list[dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def completed(self) -> bool:
        return self.status in ("finished", "diverged")

    def step_records(self) -> list[dict[str, Any]]:
        """The per-step records of metrics.jsonl (read once; the tables and several plots use them)."""
        if self._step_records is None:
            self._step_records = [r for r in read_metrics(self.run_dir)
                                  if r.get("kind", "step") == "step" and "step" in r]
        return self._step_records


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


def grad_norm_trajectory(run: RunRecord) -> GradNormTrajectory:
    values = []
    for record in sorted(run.step_records(), key=lambda r: r["step"]):
        if "grad_norm/global" in record:
            value = as_float(record["grad_norm/global"])  # None for NaN
            values.append(math.inf if value is None else value)
    if not values:
        return GradNormTrajectory(None, None, None)
    return GradNormTrajectory(values[0], max(values[1:]) if len(values) > 1 else None, values[-1])


def variant_label(config: dict[str, Any], summary: dict[str, Any]) -> str:
    """correct_bn, shared_bn, ... with the group count appended for grouped BN (grouped_bn_g8): runs that differ
    only in stat_groups are different variants for this study."""
    name = get_path(config, "variant.name") or summary.get("variant") or summary.get("sweep_variant") or "unknown"
    name = str(name)
    norm = get_path(config, "variant.norm")
    groups = get_path(config, "variant.stat_groups")
    if groups is not None and (norm == "grouped" or name.startswith("grouped")) and f"_g{groups}" not in name:
        return f"{name}_g{groups}"
    return name


def load_run(run_dir: Path) -> RunRecord:
    summary = read_summary(run_dir) or {}
    config = read_config(run_dir)
    job = read_json(run_dir / SWEEP_JOB_FILE) or {}  # the sweep's own record; helps when config is absent
    if not config and job.get("variant"):
        summary.setdefault("sweep_variant", job["variant"])
    lr = as_float(summary.get("lr"))
    if lr is None:
        lr = as_float(get_path(config, "optim.lr", job.get("lr")))
    seed = summary.get("seed", get_path(config, "seed", job.get("seed")))
    model = summary.get("model") or get_path(config, "model.name") or job.get("model") or UNKNOWN_MODEL
    return RunRecord(run_dir=run_dir, summary=summary, config=config,
                     status=str(summary.get("status") or "missing"),
                     variant=variant_label(config, summary), model=str(model), lr=lr,
                     seed=int(seed) if seed is not None else None)


def discover_runs(paths: Iterable[Path]) -> list[RunRecord]:
    runs = [load_run(run_dir) for run_dir in find_run_dirs(paths)]
    # A run that failed before its config was written does not know its model (the trainer's default); with
    # one model in the study it is that one, rather than a spurious second model in every table.
    known_models = {run.model for run in runs if run.model != UNKNOWN_MODEL}
    if len(known_models) == 1:
        for run in runs:
            if run.model == UNKNOWN_MODEL:
                run.model = next(iter(known_models))
    return runs


def variant_sort_key(label: str) -> tuple:
    base = next((i for i, name in enumerate(VARIANT_ORDER) if label.startswith(name)), len(VARIANT_ORDER))
    groups = label.rsplit("_g", 1)[-1] if "_g" in label else ""
    # grouped BN from many groups (close to per-channel) to few (close to shared)
    return (base, -int(groups) if groups.isdigit() else 0, label)


# ----------------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------------

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
    values: dict[str, Any] = field(default_factory=dict)

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


def aggregate(runs: list[RunRecord], min_acc: float = DEFAULT_MIN_ACC) -> list[GroupStats]:
    grouped: dict[tuple, list[RunRecord]] = defaultdict(list)
    for run in runs:
        if run.lr is not None:
            grouped[(run.model, run.variant, run.lr)].append(run)
    targets = accuracy_targets(runs)
    groups = []
    for (model, variant, lr), members in grouped.items():
        members.sort(key=lambda run: (run.seed is None, run.seed))
        finished = [run for run in members if run.status == "finished"]
        diverged = [run for run in members if run.status == "diverged"]
        # Accuracy over seeds that finished without diverging; divergence is reported in its own column.
        accuracies = [a for a in (as_float(run.summary.get("final_test_acc")) for run in finished) if a is not None]
        best = [a for a in (as_float(run.summary.get("best_test_acc")) for run in finished) if a is not None]
        grad_norms = [g for g in (as_float(run.summary.get("max_grad_norm")) for run in members) if g is not None]
        completed = len(finished) + len(diverged)
        values: dict[str, Any] = {
            "n_runs": len(members), "n_finished": len(finished), "n_diverged": len(diverged),
            "n_incomplete": len(members) - completed,
            "frac_diverged": len(diverged) / completed if completed else math.nan,
            "final_test_acc_mean": _mean(accuracies), "final_test_acc_std": _std(accuracies),
            "best_test_acc_mean": _mean(best),
            "n_below_min_acc": sum(a < min_acc for a in accuracies),
        }
        for target in targets:
            steps = [s for s in (as_float((run.summary.get("steps_to_acc") or {}).get(target)) for run in finished)
                     if s is not None]
            values[f"steps_to_acc_{target}_mean"] = _mean(steps)
            values[f"steps_to_acc_{target}_reached"] = len(steps)
        values["max_grad_norm"] = max(grad_norms) if grad_norms else math.nan
        trajectories = {id(run): grad_norm_trajectory(run) for run in members}
        at_init = [t.at_init for t in trajectories.values() if t.at_init is not None]
        peaks = [t.peak_after_init for t in trajectories.values() if t.peak_after_init is not None]
        # the last value of a diverged run is its blow-up, already in the peak: average the finished runs
        last = [trajectories[id(run)].last for run in finished if trajectories[id(run)].last is not None]
        values["grad_norm_at_init_mean"] = _mean(at_init)
        values["grad_norm_peak_after_init_max"] = max(peaks) if peaks else math.nan
        values["grad_norm_last_mean"] = _mean(last)
        for key in ("train_loss_auc", "wall_time_s", "images_per_s"):
            numbers = [v for v in (as_float(run.summary.get(key)) for run in finished) if v is not None]
            values[f"{key}_mean"] = _mean(numbers)
        groups.append(GroupStats(model, variant, lr, members, values))
    groups.sort(key=lambda g: (g.model, variant_sort_key(g.variant), g.lr))
    return groups


@dataclass
class StableLr:
    model: str
    variant: str
    largest_stable_lr: float | None
    smallest_unstable_lr: float | None
    top_of_grid: bool        # stable at the largest lr tried: the grid did not find the limit
    largest_training_lr: float | None  # stable and every seed reached min_acc


def largest_stable_lrs(groups: list[GroupStats], min_acc: float = DEFAULT_MIN_ACC) -> list[StableLr]:
    by_variant: dict[tuple[str, str], list[GroupStats]] = defaultdict(list)
    for group in groups:
        by_variant[(group.model, group.variant)].append(group)
    results = []
    for (model, variant), members in by_variant.items():
        stable = [g.lr for g in members if g.stable]
        unstable = [g.lr for g in members if g.values["n_diverged"] > 0]
        largest = max(stable) if stable else None
        training = [g.lr for g in members if g.trains(min_acc)]
        results.append(StableLr(model, variant, largest, min(unstable) if unstable else None,
                                largest is not None and largest == max(g.lr for g in members),
                                max(training) if training else None))
    results.sort(key=lambda r: (r.model, variant_sort_key(r.variant)))
    return results


def varying_config_keys(runs: list[RunRecord]) -> dict[str, list[Any]]:
    """Config keys (other than the grid axes) whose values differ between runs: a warning sign when comparing."""
    seen: dict[str, set] = defaultdict(set)
    for run in runs:
        if not run.config:
            continue
        for key, value in flatten(run.config).items():
            if key.startswith(AXIS_OR_MACHINE_KEYS) or key in AXIS_OR_MACHINE_KEYS:
                continue
            seen[key].add(repr(value))
    return {key: sorted(values) for key, values in sorted(seen.items()) if len(values) > 1}


# ----------------------------------------------------------------------------------------------------------------
# Writing tables
# ----------------------------------------------------------------------------------------------------------------

RUN_COLUMNS = ("model", "variant", "lr", "seed", "status", "final_test_acc", "best_test_acc", "diverged_step",
               "max_grad_norm", "max_grad_norm_layer", "train_loss_auc", "steps_done", "wall_time_s",
               "images_per_s", "data_source", "run_dir", "error")


def _csv_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def write_runs_csv(runs: list[RunRecord], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RUN_COLUMNS)
        for run in sorted(runs, key=lambda r: (r.model, variant_sort_key(r.variant), r.lr or 0, r.seed or 0)):
            error = run.summary.get("error")
            row = {"model": run.model, "variant": run.variant, "lr": run.lr, "seed": run.seed, "status": run.status,
                   "run_dir": str(run.run_dir), "error": first_line(error)}
            writer.writerow([_csv_value(row.get(c, run.summary.get(c))) for c in RUN_COLUMNS])


def write_summary_csv(groups: list[GroupStats], path: Path) -> None:
    value_columns = list(dict.fromkeys(key for group in groups for key in group.values))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "variant", "lr", *value_columns])
        for group in groups:
            writer.writerow([group.model, group.variant, group.lr,
                             *(_csv_value(group.values.get(c, math.nan)) for c in value_columns)])


def write_stable_csv(stable: list[StableLr], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "variant", "largest_stable_lr", "smallest_unstable_lr", "stable_at_top_of_grid",
                         "largest_training_lr"])
        for item in stable:
            writer.writerow([item.model, item.variant, _csv_value(item.largest_stable_lr),
                             _csv_value(item.smallest_unstable_lr), item.top_of_grid,
                             _csv_value(item.largest_training_lr)])


def _fmt(value: Any, digits: int = 4) -> str:
    number = as_float(value)
    if number is None:
        return "–"
    if math.isinf(number):
        return "inf"
    return f"{number:.{digits}g}"


def _fmt_acc(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.2f}" + ("" if math.isnan(std) else f" ± {100 * std:.2f}")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(groups: list[GroupStats], targets: list[str], show_model: bool) -> str:
    show_incomplete = any(group.values["n_incomplete"] for group in groups)  # a column of blanks says nothing
    header = (["model"] if show_model else []) + ["variant", "lr", "test acc % (mean ± std)", "diverged"]
    header += (["incomplete"] if show_incomplete else [])
    header += [f"steps to {float(t):.0%}" for t in targets]
    header += ["grad norm at step 0", "peak grad norm after step 0", "last grad norm"]
    rows = []
    for group in groups:
        v = group.values
        completed = v["n_finished"] + v["n_diverged"]
        row = ([group.model] if show_model else []) + [
            group.variant, f"{group.lr:g}", _fmt_acc(v["final_test_acc_mean"], v["final_test_acc_std"]),
            f"{v['n_diverged']}/{completed}" if completed else "–"]
        if show_incomplete:
            row.append(str(v["n_incomplete"]) if v["n_incomplete"] else "")
        for target in targets:
            mean, reached = v[f"steps_to_acc_{target}_mean"], v[f"steps_to_acc_{target}_reached"]
            row.append("–" if not reached else f"{mean:.0f} ({reached}/{v['n_finished']})")
        row += [_fmt(v["grad_norm_at_init_mean"], 3), _fmt(v["grad_norm_peak_after_init_max"], 3),
                _fmt(v["grad_norm_last_mean"], 3)]
        rows.append(row)
    return markdown_table(header, rows)


def stable_markdown(stable: list[StableLr], show_model: bool, min_acc: float = DEFAULT_MIN_ACC) -> str:
    header = (["model"] if show_model else []) + ["variant", "largest stable lr", "smallest lr with a divergence",
                                                  f"largest lr that trains (acc ≥ {100 * min_acc:g}%)"]
    rows = []
    for item in stable:
        largest = "none" if item.largest_stable_lr is None else f"{item.largest_stable_lr:g}"
        if item.top_of_grid:
            largest += " (top of grid)"
        smallest = "–" if item.smallest_unstable_lr is None else f"{item.smallest_unstable_lr:g}"
        training = "none" if item.largest_training_lr is None else f"{item.largest_training_lr:g}"
        rows.append(([item.model] if show_model else []) + [item.variant, largest, smallest, training])
    return markdown_table(header, rows)


def describe_data_sources(runs: list[RunRecord]) -> list[str]:
    counts = Counter(str(run.summary.get("data_source") or get_path(run.config, "data.name") or "")
                     for run in runs)
    unrecorded = counts.pop("", 0)
    lines = []
    for source, count in counts.most_common():
        lowered = source.lower()
        if "jpeg" in lowered or "jpg" in lowered:
            note = ("the CIFAR-10 JPEG re-encoding (quality 75): accuracies run a few points below the original "
                    "CIFAR-10 (the airbench94 recipe: 90.7% on this copy vs 94.0%)")
        elif "synthetic" in lowered:
            note = "synthetic data: a pipeline check, the accuracies are not CIFAR-10 results"
        elif "folder" in lowered:
            note = "an image folder: not the original CIFAR-10 batches; state which copy it holds"
        elif "cifar" in lowered:
            note = "the original CIFAR-10"
        else:
            note = "unrecognised source"
        lines.append(f"- `{source}` ({count} run{'s' if count != 1 else ''}): {note}")
    if unrecorded:
        lines.append(f"- {unrecorded} run(s) failed before recording a data source")
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------

def choose_shared_lr(groups: list[GroupStats], requested: float | None) -> float | None:
    """The lr for per-variant curve plots: the largest lr tried by every variant at which the reference variant
    (correct_bn if present) is stable -- where the variants differ most while the reference still trains."""
    if requested is not None:
        return requested
    lrs_by_variant: dict[str, set[float]] = defaultdict(set)
    for group in groups:
        lrs_by_variant[group.variant].add(group.lr)
    if not lrs_by_variant:
        return None
    common = sorted(set.intersection(*lrs_by_variant.values())) or sorted({g.lr for g in groups})
    reference = "correct_bn" if "correct_bn" in lrs_by_variant else sorted(lrs_by_variant, key=variant_sort_key)[0]
    stable = [g.lr for g in groups if g.variant == reference and g.stable and g.lr in common]
    return max(stable) if stable else common[0]


def build_report(paths: list[Path], out_dir: Path, shared_lr: float | None = None,
                 min_acc: float = DEFAULT_MIN_ACC) -> Path:
    from bnexp import report_plots  # matplotlib is only needed here

    runs = discover_runs(paths)
    if not runs:
        raise SystemExit(f"bnexp.report: no run dirs (summary.json + config.yaml) found under {paths}")
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = aggregate(runs, min_acc)
    stable = largest_stable_lrs(groups, min_acc)
    targets = accuracy_targets(runs)
    show_model = len({run.model for run in runs}) > 1
    chosen_lr = choose_shared_lr(groups, shared_lr)

    write_runs_csv(runs, out_dir / "runs.csv")
    write_summary_csv(groups, out_dir / "summary.csv")
    write_stable_csv(stable, out_dir / "stable_lr.csv")
    summary_md = summary_markdown(groups, targets, show_model)
    (out_dir / "summary.md").write_text(summary_md + "\n")

    plots = report_plots.make_all_plots(runs, groups, out_dir, chosen_lr, min_acc)

    status_counts = Counter(run.status for run in runs)
    varying = varying_config_keys(runs)
    reference_config = next((run.config for run in runs if run.config), {})
    flat_reference = flatten(reference_config)
    headline = {key: flat_reference[key] for key in HEADLINE_CONFIG_KEYS if key in flat_reference}

    lines = [
        "# BatchNorm learning-rate stability report", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} by `python -m bnexp.report` from "
        + ", ".join(f"`{p}`" for p in paths) + ".", "",
        f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in status_counts.most_common()) + ".", "",
        "## Data source", "", *describe_data_sources(runs), "",
        "## Config", "",
        "Grid axes: variant, lr, seed" + (", model" if show_model else "") + ". Shared settings (from "
        f"`{next((run.run_dir for run in runs if run.config), '-')}`):", "",
        "```yaml", yaml.safe_dump(headline, sort_keys=False).strip() if headline else "# (no config found)", "```",
        "",
    ]
    if varying:
        lines += ["**Warning:** these settings differ between runs but are not grid axes, so rows below may not be "
                  "comparable:", ""]
        lines += [f"- `{key}`: {', '.join(values[:6])}{' …' if len(values) > 6 else ''}"
                  for key, values in varying.items()]
        lines.append("")
    lines += [
        "<details><summary>Full config of that run</summary>", "", "```yaml",
        yaml.safe_dump(reference_config, sort_keys=False).strip(), "```", "</details>", "",
        "## Largest stable learning rate", "",
        "Largest lr at which every seed finished without diverging (failed or unfinished runs do not count as "
        f"stable). Stable is not the same as training: the last column also asks every seed to reach "
        f"{100 * min_acc:g}% final test accuracy (`--min-acc`), which a net stuck at chance does not.", "",
        stable_markdown(stable, show_model, min_acc), "",
        "## Results per variant and learning rate", "",
        "Test accuracy is the final test accuracy averaged over the seeds that finished without diverging; "
        "`diverged` counts diverged seeds among completed ones; steps to a target average over the seeds that "
        "reached it. Grad norms are `grad_norm/global` from metrics.jsonl: at step 0 (set by the initialisation, mean over seeds), its peak after step 0 (max over seeds; inf once a norm went non-finite) and its last logged value (mean over finished seeds; 0 means the network died).", "", summary_md, "",
        "## Plots", "",
    ]
    for plot in plots:
        lines += [f"### {plot.title}", ""]
        if plot.path is not None:
            lines += [plot.caption, "", f"![{plot.title}]({plot.path.name})", ""]
        else:
            lines += [f"_Skipped: {plot.note}_", ""]
    incomplete = [run for run in runs if not run.completed]
    if incomplete:
        lines += ["## Runs that did not complete", "",
                  "Failed, killed or still running; re-running the sweep redoes them.", ""]
        for run in incomplete:
            error = (run.summary.get("error") or "").strip().splitlines()
            lines.append(f"- {run.variant} lr={run.lr:g} seed={run.seed} ({run.status}): "
                         f"{error[0] if error else 'no error recorded'} — `{run.run_dir}`")
        lines.append("")
    report_path = out_dir / "report.md"
    report_path.write_text("\n".join(lines))
    return report_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnexp.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="sweep dirs, Hydra multirun dirs or run dirs")
    parser.add_argument("--out", type=Path, required=True, help="output dir, e.g. results/lr_stability")
    parser.add_argument("--lr", type=float, default=None,
                        help="lr for the per-variant curve plots (default: largest lr where correct_bn is stable)")
    parser.add_argument("--min-acc", type=float, default=DEFAULT_MIN_ACC,
                        help=f"final test accuracy a run must reach to count as training (default {DEFAULT_MIN_ACC})")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"bnexp.report: error: no such path(s): {missing}", file=sys.stderr)
        return 2
    report_path = build_report(args.paths, args.out, args.lr, args.min_acc)
    print(f"wrote {report_path} (+ summary.csv, summary.md, stable_lr.csv, runs.csv, plots) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
