"""Results report: aggregate run dirs into tables, plots and a markdown report.

    python -m bnexp.report <sweep dirs | multirun dirs | run dirs ...> --out results/<name> [--lr 0.4]

Finds every run dir below the given paths (a dir holding summary.json plus config.yaml or .hydra/config.yaml, or
a sweep run dir with sweep_job.json), groups runs by model x variant x lr (bnexp/report/records.py) and writes to --out:
  runs.csv               one row per run (the per-run numbers everything else is computed from)
  summary.csv/.md        per variant x lr: final test acc mean with its 95% interval over seeds (t by default,
                         --interval bootstrap) and n, fraction diverged, steps to the accuracy targets, the global
                         grad norm at step 0, its peak after step 0 and its last value, ...
  stable_lr.csv          the largest lr per variant at which every seed finished without diverging
  edge_of_stability.csv  per variant: the largest lr that trains, with its bracket (last that trains, first that
                         does not), and the channels each statistic pools
  differences.csv        per lr, each variant's accuracy minus the reference's, with its Welch interval and verdict
  *.png                  plots (see bnexp/report/plots.py)
  report.md              all of the above with the config, the data source and the versions that made the runs
Optional fields (instrumentation) may be missing in older runs; the affected plot is skipped with a note.
A damaged or foreign run dir is skipped and listed with the reason; runs without a result yet (running, failed,
killed) are counted and listed, so the report is written for every state a sweep can be in.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from bnexp.report import mechanism as report_mechanism
from bnexp.report import plots as report_plots
from bnexp.report.records import (
    DEFAULT_INTERVAL_METHOD,
    DEFAULT_MIN_ACC,
    INTERVAL_METHODS,
    Comparison,
    EdgeOfStability,
    GroupStats,
    ProvenanceCounts,
    RunRecord,
    Skipped,
    StableLr,
    accuracy_targets,
    aggregate,
    choose_shared_lr,
    compare_to_reference,
    edges_of_stability,
    largest_stable_lrs,
    load_runs,
    provenance_counts,
    variant_sort_key,
    varying_config_keys,
)
from bnexp.config.keys import config_value, flatten
from bnexp.runs.files import COMPLETED_STATUSES, as_float, first_line
from bnexp.report.tables import markdown_table, model_table, write_csv

HEADLINE_CONFIG_KEYS = ("model.name", "model.width", "data.name", "data.train_size", "data.test_size",
                        "optim.name", "optim.momentum", "optim.nesterov", "optim.weight_decay",
                        "optim.label_smoothing", "optim.schedule", "optim.warmup_steps", "optim.warmup_frac",
                        "train.epochs", "train.batch_size", "train.amp", "train.compile", "train.channels_last",
                        "divergence.loss_factor", "variant.backend")


# ----------------------------------------------------------------------------------------------------------------
# Writing tables
# ----------------------------------------------------------------------------------------------------------------

RUN_COLUMNS = ("model", "variant", "lr", "seed", "status", "final_test_acc", "best_test_acc", "diverged_step",
               "max_grad_norm", "max_grad_norm_layer", "train_loss_auc", "steps_done", "wall_time_s",
               "images_per_s", "data_source", "run_dir", "error")


def shown_path(path: Path) -> str:
    """A run dir as the report shows it: relative to the current dir when it lies below it (a report is read on
    other machines, where this one's absolute paths mean nothing), else as found."""
    try:
        return str(Path(path).relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def portable_config(config: Any) -> Any:
    """The run's config with every absolute path in it (data.path, data.data_dir, ...) written relative to the
    current dir (`../data/x.tar.xz`), so a committed report names where files lie beside the checkout, not
    folders of the machine it ran on."""
    if isinstance(config, dict):
        return {key: portable_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [portable_config(value) for value in config]
    return os.path.relpath(config) if isinstance(config, str) and os.path.isabs(config) else config


def write_runs_csv(runs: list[RunRecord], path: Path) -> None:
    rows = []
    for run in sorted(runs, key=lambda r: (r.model, variant_sort_key(r.variant), r.lr, r.seed or 0)):
        row = {"model": run.model, "variant": run.variant, "lr": run.lr, "seed": run.seed, "status": run.status,
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


def write_edge_csv(edges: list[EdgeOfStability], path: Path) -> None:
    write_csv(path, ["model", "variant", "channels_per_statistic", "max_stable_lr", "first_failing_lr", "capped",
                     "floored", "lrs_tried", "bracket"],
              [[edge.model, edge.variant, edge.channels_per_statistic, edge.max_stable_lr, edge.first_failing_lr,
                edge.bracket.capped, edge.bracket.floored, " ".join(f"{lr:g}" for lr in edge.lrs_tried),
                edge.bracket.describe()] for edge in edges])


def write_differences_csv(comparisons: list[Comparison], path: Path) -> None:
    write_csv(path, ["model", "lr", "variant", "reference", "difference", "ci_low", "ci_high", "n_variant",
                     "n_reference", "resolved", "verdict"],
              [[c.model, c.lr, c.variant, c.reference, c.difference.difference, c.difference.low,
                c.difference.high, c.difference.n_a, c.difference.n_b, c.difference.resolved, c.verdict()]
               for c in comparisons])


def _fmt(value: Any) -> str:
    number = as_float(value)
    if number is None:
        return "–"
    return "inf" if math.isinf(number) else f"{number:.3g}"


def _fmt_acc(mean: float, low: float, high: float) -> str:
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
    header = ["model", "variant", "lr", f"test acc % (mean [95% {INTERVAL_NAMES[interval_method]} interval])",
              "n", "diverged"]
    header += (["incomplete"] if show_incomplete else [])
    header += [f"steps to {float(t):.0%}" for t in targets]
    header += ["grad norm at step 0", "peak grad norm after step 0", "last grad norm"]
    rows = []
    for group in groups:
        v = group.values
        completed = v["n_finished"] + v["n_diverged"]
        row = [group.model, group.variant, f"{group.lr:g}",
               _fmt_acc(v["final_test_acc_mean"], v["final_test_acc_ci_low"], v["final_test_acc_ci_high"]),
               str(v["final_test_acc_n"]), f"{v['n_diverged']}/{completed}" if completed else "–"]
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
              f"largest lr that trains (acc ≥ {100 * min_acc:g}%)"]
    rows = [[item.model, item.variant,
             _lr_text(item.largest_stable_lr) + (" (top of grid)" if item.stable_at_top_of_grid else ""),
             _lr_text(item.smallest_unstable_lr, missing="–"), _lr_text(item.largest_training_lr)]
            for item in stable]
    return model_table(header, rows, show_model)


def edge_markdown(edges: list[EdgeOfStability], show_model: bool) -> str:
    header = ["model", "variant", "channels per statistic", "max stable lr", "bracket", "lrs tried"]
    rows = []
    for edge in edges:
        channels = "–" if edge.channels_per_statistic is None else str(edge.channels_per_statistic)
        rows.append([edge.model, edge.variant, channels, _lr_text(edge.max_stable_lr), edge.bracket.describe(),
                     ", ".join(f"{lr:g}" for lr in edge.lrs_tried)])
    return model_table(header, rows, show_model)


def differences_markdown(comparisons: list[Comparison], show_model: bool) -> list[str]:
    """Per lr, one line per variant: its difference from the reference with the interval, and the verdict."""
    lines: list[str] = []
    for (model, lr), same_lr in itertools.groupby(comparisons, key=lambda c: (c.model, c.lr)):
        prefix = f"{model}, " if show_model else ""
        lines += ["", f"**{prefix}lr {lr:g}**", ""]
        lines += [f"- {comparison.format()}" for comparison in same_lr]
    return lines


# What a data source's name says about its accuracies: the first entry whose words the name contains.
DATA_SOURCE_NOTES = (
    (("jpeg", "jpg"), "the CIFAR-10 JPEG re-encoding (quality 75): accuracies run a few points below the original "
                      "CIFAR-10 (the airbench94 recipe: 90.7% on this copy vs 94.0%)"),
    (("synthetic",), "synthetic data: a pipeline check, the accuracies are not CIFAR-10 results"),
    (("folder",), "an image folder: not the original CIFAR-10 batches; state which copy it holds"),
    (("cifar",), "the original CIFAR-10"),
)


def describe_data_sources(runs: list[RunRecord]) -> list[str]:
    counts = Counter(str(run.summary.get("data_source") or config_value(run.config, "data.name") or "")
                     for run in runs)
    unrecorded = counts.pop("", 0)
    lines = []
    for source, count in counts.most_common():
        note = next((note for words, note in DATA_SOURCE_NOTES if any(word in source.lower() for word in words)),
                    "unrecognised source")
        lines.append(f"- `{source}` ({count} run{'s' if count != 1 else ''}): {note}")
    if unrecorded:
        lines.append(f"- {unrecorded} run(s) failed before recording a data source")
    return lines


# What a run of each unfinished status is, for a run that recorded no error of its own.
STATUS_WITHOUT_ERROR = {
    "running": "still running (its process holds the run dir's lock)",
    "killed": "its process died without writing its end (SIGKILL, out of memory, a crash of the machine)",
    "incomplete": "summary.json says running, but there is no run.lock to tell whether its process lives "
                  "(from a bnexp before the lock, or another program)",
}


def what_is_missing(runs: list[RunRecord], skipped: list[Skipped], paths: list[Path]) -> list[str]:
    """The report's opening lines: how many runs it found, which have no result yet and what was left out."""
    if not runs:
        found = f"No usable run dirs under {', '.join(f'`{shown_path(p)}`' for p in paths)}"
        return [found + (f" ({len(skipped)} skipped, listed at the end)." if skipped else
                         ": no sweep has started a run there yet, or the path is not the sweep's dir.")
                + " The tables below are empty and the plots skipped."]
    counts = Counter(run.status for run in runs)
    lines = [f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.most_common()) + "."]
    unfinished = [(status, n) for status, n in counts.most_common() if status not in COMPLETED_STATUSES]
    if unfinished:
        words = {"running": "still running", "killed": "killed (no end written)",
                 "incomplete": "incomplete (no end written, no lock to ask)"}
        completed = counts["finished"] + counts["diverged"]
        lines += ["", "**Missing results:** " + ", ".join(f"{n} run{'s' if n != 1 else ''} {words.get(s, s)}"
                                                         for s, n in unfinished)
                  + (f"; the tables and plots use the {completed} that finished or diverged"
                     if completed else "; none has finished or diverged yet, so the tables have no results")
                  + ". They are listed under \"Runs that did not complete\"."]
    if skipped:
        lines += ["", f"**Skipped:** {len(skipped)} run dir{'s' if len(skipped) != 1 else ''} that could not be "
                      "read, listed under \"Run dirs skipped\" with the reason."]
    return lines


def provenance_markdown(counts: ProvenanceCounts, n_runs: int) -> list[str]:
    """The "Made from" section: every recorded value of each provenance field, with its number of runs."""
    not_recorded = ("from a bnexp that did not record it yet, or failed before training started")
    if not counts.values:
        return [f"No run records what made it (`provenance` in summary.json): all {n_runs} are {not_recorded}."]
    rows = [[f"`{key}`", ", ".join(f"`{value}` ({n})" for value, n in counter.most_common())]
            for key, counter in counts.values.items()]
    lines = ["The code and library versions recorded in the runs' summary.json (`provenance`), with the number of "
             "runs for each value:", "", markdown_table(["field", "value (runs)"], rows)]
    if counts.runs_without:
        lines += ["", f"{counts.runs_without} of the {n_runs} runs record no provenance: they are {not_recorded}."]
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------

def build_report(paths: list[Path], out_dir: Path, shared_lr: float | None = None,
                 min_acc: float = DEFAULT_MIN_ACC, interval_method: str = DEFAULT_INTERVAL_METHOD,
                 reference: str = "correct_bn") -> Path:
    runs, skipped = load_runs(paths)
    if not runs:
        print(f"bnexp.report: warning: no usable run dirs under {[str(p) for p in paths]}"
              + (f" ({len(skipped)} skipped)" if skipped else "") + "; report.md says so", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = aggregate(runs, min_acc, interval_method)
    stable = largest_stable_lrs(groups, min_acc)
    edges = edges_of_stability(runs, min_acc)
    comparisons = compare_to_reference(groups, reference)
    targets = accuracy_targets(runs)
    show_model = len({run.model for run in runs}) > 1
    chosen_lr = choose_shared_lr(groups, shared_lr)

    write_runs_csv(runs, out_dir / "runs.csv")
    write_summary_csv(groups, out_dir / "summary.csv")
    write_stable_csv(stable, out_dir / "stable_lr.csv")
    write_edge_csv(edges, out_dir / "edge_of_stability.csv")
    write_differences_csv(comparisons, out_dir / "differences.csv")
    summary_md = summary_markdown(groups, targets, show_model, interval_method)
    (out_dir / "summary.md").write_text(summary_md + "\n")

    plots = [report_plots.plot_accuracy_vs_lr(groups, out_dir, min_acc),
             report_plots.plot_loss_curves(runs, chosen_lr, out_dir),
             report_plots.plot_grad_norm_heatmaps(runs, chosen_lr, out_dir),
             report_plots.plot_init_grad_norms(runs, out_dir),
             report_plots.plot_edge_of_stability(edges, out_dir)]

    config_run = next((run for run in runs if run.config), None)  # the run whose config the report shows
    reference_config = config_run.config if config_run else {}
    flat_reference = flatten(reference_config)
    headline = {key: flat_reference[key] for key in HEADLINE_CONFIG_KEYS if key in flat_reference}

    lines = [
        "# BatchNorm learning-rate stability report", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} by `python -m bnexp.report` from "
        + ", ".join(f"`{p}`" for p in paths) + ".", "",
        *what_is_missing(runs, skipped, paths), "",
        "## Data source", "", *describe_data_sources(runs), "",
        "## Made from", "", *provenance_markdown(provenance_counts(runs), len(runs)), "",
        "## Config", "",
        "Grid axes: variant, lr, seed" + (", model" if show_model else "") + ". Shared settings (from "
        f"`{shown_path(config_run.run_dir) if config_run else '-'}`):", "",
        "```yaml", yaml.safe_dump(headline, sort_keys=False).strip() if headline else "# (no config found)", "```",
        "",
    ]
    if varying := varying_config_keys(runs):
        lines += ["**Warning:** these settings differ between runs but are not grid axes, so rows below may not be "
                  "comparable:", "",
                  *(f"- `{key}`: {', '.join(values[:6])}{' …' if len(values) > 6 else ''}"
                    for key, values in varying.items()), ""]
    lines += [
        "<details><summary>Full config of that run</summary>", "", "```yaml",
        yaml.safe_dump(portable_config(reference_config), sort_keys=False).strip(), "```", "</details>", "",
        "## Largest stable learning rate", "",
        "Largest lr at which every seed finished without diverging (failed or unfinished runs do not count as "
        f"stable). Stable is not the same as training: the last column also asks every seed to reach "
        f"{100 * min_acc:g}% final test accuracy (`--min-acc`), which a net stuck at chance does not.", "",
        stable_markdown(stable, show_model, min_acc), "",
        "## Edge of stability", "",
        "Per variant, the largest lr that trains, with its bracket: the last lr at which every seed trained and "
        "the first at which one did not. A run trains when it finished with a final test accuracy of at least "
        f"{100 * min_acc:g}% and a last `grad_norm/global` above 0; it *diverges* (non-finite or exploding loss), "
        f"*collapses* (finished, but below {100 * min_acc:g}% or with a gradient of exactly 0) or *fails* (crashed). "
        "The bracket is as narrow as the lrs tried around it (an edge-mode sweep bisects it to √2, a dense grid "
        "leaves its own spacing). Channels per statistic: 1 is per-channel, `all` one statistic per layer.", "",
        edge_markdown(edges, show_model), "",
        "## Results per variant and learning rate", "",
        f"Test accuracy is the mean final test accuracy over the n seeds that finished without diverging, with a "
        f"95% {INTERVAL_NAMES[interval_method]} interval over those seeds"
        + (" (mean ± t(0.975, n−1)·s/√n: wide for few seeds, e.g. ×4.3 the standard error at n = 3)"
           if interval_method == "t" else " (resampling the seeds; too narrow for a handful of seeds)")
        + "; one seed gives no interval. "
        "`diverged` counts diverged seeds among completed ones; steps to a target average over the seeds that "
        "reached it. Grad norms are `grad_norm/global` from metrics.jsonl: at step 0 (set by the initialisation, mean over seeds), its peak after step 0 (max over seeds; inf once a norm went non-finite) and its last logged value (mean over finished seeds; 0 means the network died).", "", summary_md, "",
        "## Differences", "",
        f"Each variant's final test accuracy minus `{reference}`'s at the same lr, in percentage points, with the "
        "95% Welch t-interval of the difference (unequal variances). A difference *holds* when its interval "
        "excludes 0; otherwise it is *not resolved* by these seeds. Diverged seeds have no accuracy and are "
        "left out here (see the table above).",
        *(differences_markdown(comparisons, show_model) or ["", f"_No lr has finished seeds of `{reference}` and "
                                                                "another variant._"]), "",
        "## Plots", "",
    ]
    for plot in plots:
        lines += plot.markdown()
    try:
        lines += report_mechanism.mechanism_section(runs, out_dir, chosen_lr)
    except Exception as error:  # noqa: BLE001 - the report must be written whatever one run dir holds
        lines += [report_mechanism.SECTION_HEADING, "",
                  f"_Not shown: the section could not be made ({type(error).__name__}: {first_line(str(error))})._", ""]
    if incomplete := [run for run in runs if not run.completed]:
        lines += ["## Runs that did not complete", "",
                  "Failed, killed, incomplete or still running (see README \"Outputs\" for each status); re-running "
                  "the sweep redoes all but the running ones.", ""]
        for run in incomplete:
            error = first_line((run.summary.get("error") or "").strip(),
                               STATUS_WITHOUT_ERROR.get(run.status, "no error recorded"))
            lines.append(f"- {run.variant} lr={run.lr:g} seed={run.seed} ({run.status}): {error} — "
                         f"`{shown_path(run.run_dir)}`")
        lines.append("")
    if skipped:
        lines += ["## Run dirs skipped", "",
                  "These dirs look like run dirs (a summary.json beside a config, a sweep job record or a run lock) "
                  "but could not be used; nothing above counts them.", "",
                  *(f"- `{shown_path(item.run_dir)}`: {item.reason}" for item in skipped), ""]
    report_path = out_dir / "report.md"
    report_path.write_text("\n".join(lines))
    return report_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnexp.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="sweep dirs, Hydra multirun dirs or run dirs")
    parser.add_argument("--out", type=Path, required=True, help="output dir, e.g. results/lr_stability")
    parser.add_argument("--lr", type=float, default=None,
                        help="lr for the per-variant curve plots (default: largest lr where correct_bn is stable)")
    parser.add_argument("--interval", choices=INTERVAL_METHODS, default=DEFAULT_INTERVAL_METHOD,
                        help="the 95%% interval over seeds: t (Student-t, the default) or bootstrap (percentile)")
    parser.add_argument("--reference", default="correct_bn",
                        help="the variant every other one is compared with in the Differences section")
    parser.add_argument("--min-acc", type=float, default=DEFAULT_MIN_ACC,
                        help=f"final test accuracy a run must reach to count as training (default {DEFAULT_MIN_ACC})")
    args = parser.parse_args(argv)
    if missing := [str(p) for p in args.paths if not p.exists()]:
        print(f"bnexp.report: error: no such path(s): {missing}", file=sys.stderr)
        return 2
    report_path = build_report(args.paths, args.out, args.lr, args.min_acc, args.interval, args.reference)
    print(f"wrote {report_path} (+ summary.csv, summary.md, stable_lr.csv, edge_of_stability.csv, "
          f"differences.csv, runs.csv, plots) in {args.out}")
    return 0

