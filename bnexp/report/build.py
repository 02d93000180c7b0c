"""Results report: aggregate run dirs into tables, plots and a markdown report.

    python -m bnexp.report <sweep dirs | multirun dirs | run dirs ...> --out results/<name> [--lr 0.4]

Finds every run dir below the given paths (a dir holding summary.json plus config.yaml or .hydra/config.yaml, or
a sweep run dir with sweep_job.json), groups runs by model x variant x lr (bnexp/report/aggregation.py) and writes
to --out:
  runs.csv               one row per run (the per-run numbers everything else is computed from)
  summary.csv/.md        per variant x lr: final test acc mean with its 95% interval over seeds (t by default,
                         --interval bootstrap) and n, fraction diverged, steps to the accuracy targets, the global
                         grad norm at step 0, its peak after step 0 and its last value, ...
  stable_lr.csv          the largest lr per variant at which every seed finished without diverging
  largest_trainable_lr.csv  per variant: the largest lr that trains, with its bracket (last that trains, first
                         that does not), the channels each statistic pools and, where runs measured sharpness, the
                         lowest lr at which it reached the optimiser's threshold (the edge of stability)
  differences.csv        per lr, each variant's accuracy minus the reference's, with its Welch interval and verdict,
                         its p-value and its p-value after Holm's correction over all the comparisons
  trend.csv              per lr, Kendall's τ-b between group size and final accuracy over the runs, with its p-value
  best_vs_best.csv       runs of a sweep.mode=best_lr sweep: per variant its tuned lr (interior or at the bound),
                         the fresh seeds' accuracy there with its interval, and the difference to the reference's
  *.png                  plots (see bnexp/report/plots.py)
  report.md              all of the above with the config, the data source and the versions that made the runs
Optional fields (instrumentation) may be missing in older runs; the affected plot is skipped with a note.
A damaged or foreign run dir is skipped and listed with the reason; runs without a result yet (running, failed,
killed) are counted and listed, so the report is written for every state a sweep can be in.
"""
from __future__ import annotations

import argparse
import difflib
import math
import sys
from pathlib import Path

from bnexp.report import best_vs_best as report_best
from bnexp.report import csv_files
from bnexp.report import mechanism as report_mechanism
from bnexp.report import plots as report_plots
from bnexp.report import sharpness as report_sharpness
from bnexp.report.aggregation import (DEFAULT_INTERVAL_METHOD, INTERVAL_METHODS, accuracy_targets, aggregate,
                                      largest_stable_lrs)
from bnexp.report.comparisons import compare_to_reference
from bnexp.report.markdown_tables import summary_markdown
from bnexp.report.run_records import RunRecord, load_runs, variant_sort_key
from bnexp.report.selection import counted_runs
from bnexp.report.sections import ReportContent, report_markdown
from bnexp.report.series import choose_shared_lr
from bnexp.report.trainable_lr import largest_trainable_lrs
from bnexp.report.trend import group_size_trends
from bnexp.runs.files import first_line
from bnexp.runs.outcome import DEFAULT_MIN_ACC

DEFAULT_REFERENCE = "correct_bn"


class ReportError(Exception):
    """A report that cannot be made as asked; the message names the problem and what to give instead."""


def check_settings(min_acc: float, shared_lr: float | None) -> None:
    """Refuse settings no report can mean, before any run dir is read."""
    if not 0.0 <= min_acc <= 1.0:  # NaN fails too
        raise ReportError(f"--min-acc {min_acc:g} is not an accuracy: give a fraction between 0 and 1 "
                          f"(e.g. --min-acc {DEFAULT_MIN_ACC:g} for {100 * DEFAULT_MIN_ACC:g}%)")
    if shared_lr is not None and not (math.isfinite(shared_lr) and shared_lr > 0):
        raise ReportError(f"--lr {shared_lr:g} is not a learning rate: give a positive number (e.g. --lr 0.4)")


def check_reference(reference: str, runs: list[RunRecord]) -> None:
    """A reference the caller named must be a variant of the runs (there is nothing to check without runs)."""
    variants = sorted({run.variant for run in runs}, key=variant_sort_key)
    if variants and reference not in variants:
        close = difflib.get_close_matches(reference, variants, n=1)
        raise ReportError(f"--reference {reference} is not a variant of these runs ({', '.join(variants)})"
                          + (f"; did you mean --reference {close[0]}?" if close else ""))


def make_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"--out {out_dir} is a file: give a directory for the report (it is created if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file on the way, or a folder it may not write in
        raise ReportError(f"--out {out_dir} cannot be made: {error.strerror or error}"
                          + (f" ({error.filename})" if error.filename and Path(error.filename) != out_dir else ""))


def _section_or_note(heading: str, make_section) -> list[str]:
    """A section's lines, or its heading and a note when it could not be made: the report must be written whatever
    one run dir holds."""
    try:
        return make_section()
    except Exception as error:  # noqa: BLE001 - see the docstring
        return [heading, "", f"_Not shown: the section could not be made ({type(error).__name__}: "
                f"{first_line(str(error))})._", ""]


def build_report(paths: list[Path], out_dir: Path, shared_lr: float | None = None,
                 min_acc: float = DEFAULT_MIN_ACC, interval_method: str = DEFAULT_INTERVAL_METHOD,
                 reference: str | None = None) -> Path:
    """Read the runs below `paths`; write the CSVs, summary.md, the plots and report.md to `out_dir`.

    `reference`: the variant the Differences section compares with; when given it must be one of the runs',
    by default correct_bn wherever there is one. Raises ReportError for settings it cannot use.
    """
    check_settings(min_acc, shared_lr)
    loaded, skipped = load_runs(paths)
    runs, repeats = counted_runs(loaded)
    unplaced = [run for run in loaded if not run.on_lr_axis]  # failed on a bad lr: listed, not tabled
    if reference is not None:
        check_reference(reference, runs)
    reference = reference or DEFAULT_REFERENCE
    if not runs:
        print(f"bnexp.report: warning: no usable run dirs under {[str(p) for p in paths]}"
              + (f" ({len(skipped)} skipped)" if skipped else "") + "; report.md says so", file=sys.stderr)
    make_out_dir(out_dir)
    groups = aggregate(runs, min_acc, interval_method)
    stable = largest_stable_lrs(groups, min_acc)
    largest_trainable = largest_trainable_lrs(runs, min_acc)
    sharpness_measured = report_sharpness.measured_sharpness(runs)
    threshold_lrs = report_sharpness.lowest_lr_at_threshold(sharpness_measured.rows)
    comparisons = compare_to_reference(groups, reference)
    trends = group_size_trends(runs)
    show_model = len({run.model for run in runs}) > 1
    chosen_lr = choose_shared_lr(groups, shared_lr)

    csv_files.write_runs_csv(runs + unplaced, out_dir / "runs.csv")
    csv_files.write_summary_csv(groups, out_dir / "summary.csv")
    csv_files.write_stable_csv(stable, out_dir / "stable_lr.csv")
    csv_files.write_largest_trainable_lr_csv(largest_trainable, out_dir / "largest_trainable_lr.csv", threshold_lrs)
    csv_files.write_differences_csv(comparisons, out_dir / "differences.csv")
    csv_files.write_trend_csv(trends, out_dir / "trend.csv")
    summary_table = summary_markdown(groups, accuracy_targets(runs), show_model, interval_method)
    (out_dir / "summary.md").write_text(summary_table + "\n")

    plots = [report_plots.plot_accuracy_vs_lr(groups, out_dir, min_acc),
             report_plots.plot_loss_curves(runs, chosen_lr, out_dir),
             report_plots.plot_grad_norm_heatmaps(runs, chosen_lr, out_dir),
             report_plots.plot_init_grad_norms(runs, out_dir),
             report_plots.plot_largest_trainable_lr(largest_trainable, out_dir)]
    mechanism = _section_or_note(report_mechanism.SECTION_HEADING,
                                 lambda: report_mechanism.mechanism_section(runs, out_dir, chosen_lr, interval_method))
    sharpness = _section_or_note(report_sharpness.SECTION_HEADING,
                                 lambda: report_sharpness.sharpness_section(runs, out_dir, interval_method,
                                                                           sharpness_measured))
    best_vs_best = _section_or_note(report_best.SECTION_HEADING, lambda: report_best.best_vs_best_section(
        runs, out_dir, reference, interval_method))
    content = ReportContent(paths=paths, runs=runs, unplaced=unplaced, repeats=repeats, skipped=skipped,
                            groups=groups, stable=stable, largest_trainable=largest_trainable,
                            comparisons=comparisons, trends=trends, summary_table=summary_table, plots=plots,
                            mechanism=mechanism, sharpness=sharpness, best_vs_best=best_vs_best, min_acc=min_acc,
                            interval_method=interval_method, reference=reference, threshold_lrs=threshold_lrs)
    report_path = out_dir / "report.md"
    report_path.write_text(report_markdown(content))
    return report_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnexp.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="sweep dirs, Hydra multirun dirs or run dirs")
    parser.add_argument("--out", type=Path, required=True, help="output dir, e.g. results/lr_stability")
    parser.add_argument("--lr", type=float, default=None,
                        help="lr for the per-variant curve plots (default: largest lr where correct_bn is stable)")
    parser.add_argument("--interval", choices=INTERVAL_METHODS, default=DEFAULT_INTERVAL_METHOD,
                        help="the 95%% interval over seeds: t (Student-t, the default) or bootstrap (percentile)")
    parser.add_argument("--reference", default=None,
                        help="the variant every other one is compared with in the Differences section "
                             f"(default {DEFAULT_REFERENCE}); it must be one of the runs' variants")
    parser.add_argument("--min-acc", type=float, default=DEFAULT_MIN_ACC,
                        help=f"final test accuracy a run must reach to count as training (default {DEFAULT_MIN_ACC})")
    args = parser.parse_args(argv)
    if missing := [str(p) for p in args.paths if not p.exists()]:
        print(f"bnexp.report: error: no such path(s): {missing}", file=sys.stderr)
        return 2
    try:
        report_path = build_report(args.paths, args.out, args.lr, args.min_acc, args.interval, args.reference)
    except ReportError as error:
        print(f"bnexp.report: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the out dir became unwritable, or the disk filled, while the report was written
        print(f"bnexp.report: error: could not write the report in {args.out}: {error}", file=sys.stderr)
        return 2
    print(f"wrote {report_path} (+ summary.csv, summary.md, stable_lr.csv, largest_trainable_lr.csv, "
          f"differences.csv, trend.csv, runs.csv, best_vs_best.csv for a best_lr sweep, plots) in {args.out}")
    return 0

