"""report.md's prose: each section's text around the tables, from what build_report computed (ReportContent).

`report_markdown` writes the sections in order: what was found and what is missing, the data source, the versions
that made the runs, the config, the largest stable lr, the largest trainable lr, the results per variant and lr, the
differences, the trend with group size, best against best (a best_lr sweep's), the plots, the mechanism, the runs
that did not complete, the seeds run more than once and the run dirs skipped.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bnexp.config.keys import config_value, flatten
from bnexp.report.aggregation import GroupStats, StableLr
from bnexp.report.comparisons import Comparison
from bnexp.report.markdown_tables import (INTERVAL_NAMES, differences_markdown, largest_trainable_lr_markdown,
                                          stable_markdown, trend_markdown)
from bnexp.report.plots import PlotResult
from bnexp.report.provenance import ProvenanceCounts, provenance_counts
from bnexp.report.run_records import RunRecord, Skipped
from bnexp.report.selection import RepeatedSeed
from bnexp.report.shown_paths import portable_config, shown_path
from bnexp.report.study_config import varying_config_keys
from bnexp.report.tables import markdown_table
from bnexp.report.trainable_lr import LargestTrainableLr
from bnexp.report.trend import GroupSizeTrend
from bnexp.runs.files import COMPLETED_STATUSES, first_line

HEADLINE_CONFIG_KEYS = ("model.name", "model.width", "data.name", "data.train_size", "data.test_size",
                        "optim.name", "optim.momentum", "optim.nesterov", "optim.weight_decay",
                        "optim.label_smoothing", "optim.schedule", "optim.warmup_steps", "optim.warmup_frac",
                        "train.epochs", "train.batch_size", "train.amp", "train.compile", "train.channels_last",
                        "divergence.loss_factor", "variant.backend")

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


@dataclass
class ReportContent:
    """Everything report.md states, as build_report computed it."""
    paths: list[Path]
    runs: list[RunRecord]               # the runs the tables count (bnexp/report/selection.py)
    unplaced: list[RunRecord]           # runs that failed on a bad lr: no place in a table, listed as failed
    repeats: list[RepeatedSeed]         # seeds run more than once: the run kept and the ones left out
    skipped: list[Skipped]
    groups: list[GroupStats]
    stable: list[StableLr]
    largest_trainable: list[LargestTrainableLr]
    comparisons: list[Comparison]
    trends: list[GroupSizeTrend]
    summary_table: str          # summary.md, the results table
    plots: list[PlotResult]
    mechanism: list[str]        # the mechanism section's lines (it draws its own plots)
    sharpness: list[str]        # the sharpness section's lines (it draws its own plot)
    best_vs_best: list[str]     # the best-against-best section's lines (it writes its own CSV and plot)
    min_acc: float
    interval_method: str
    reference: str
    # (model, variant) -> the lowest lr at which sharpness reached the threshold; only variants that measured it
    threshold_lrs: dict[tuple[str, str], float | None] = field(default_factory=dict)

    @property
    def show_model(self) -> bool:
        return len({run.model for run in self.runs}) > 1

    @property
    def listed_runs(self) -> list[RunRecord]:
        """Every run the report speaks of: the counted ones and those without an lr."""
        return self.runs + self.unplaced


def opening(content: ReportContent) -> list[str]:
    return ["# BatchNorm learning-rate stability report", "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} by `python -m bnexp.report` from "
            + ", ".join(f"`{p}`" for p in content.paths) + ".", "",
            *what_is_missing(content.listed_runs, content.skipped, content.paths),
            *repeats_note(content.repeats), ""]


def config_section(content: ReportContent) -> list[str]:
    """The shared settings (from the first run with a config), a warning for settings that differ, and the full
    config of that run."""
    config_run = next((run for run in content.runs if run.config), None)  # the run whose config the report shows
    reference_config = config_run.config if config_run else {}
    flat_reference = flatten(reference_config)
    headline = {key: flat_reference[key] for key in HEADLINE_CONFIG_KEYS if key in flat_reference}
    lines = [
        "## Config", "",
        "Grid axes: variant, lr, seed" + (", model" if content.show_model else "") + ". Shared settings (from "
        f"`{shown_path(config_run.run_dir) if config_run else '-'}`):", "",
        "```yaml", yaml.safe_dump(headline, sort_keys=False).strip() if headline else "# (no config found)", "```",
        "",
    ]
    if varying := varying_config_keys(content.runs):
        lines += ["**Warning:** these settings differ between runs but are not grid axes, so rows below may not be "
                  "comparable:", "",
                  *(f"- `{key}`: {', '.join(values[:6])}{' …' if len(values) > 6 else ''}"
                    for key, values in varying.items()), ""]
    return lines + [
        "<details><summary>Full config of that run</summary>", "", "```yaml",
        yaml.safe_dump(portable_config(reference_config), sort_keys=False).strip(), "```", "</details>", ""]


def stable_section(content: ReportContent) -> list[str]:
    min_acc = content.min_acc
    return [
        "## Largest stable learning rate", "",
        "Largest lr at which every seed finished without diverging (failed or unfinished runs do not count as "
        f"stable). Stable is not the same as training: the last column also asks every seed to reach "
        f"{100 * min_acc:g}% final test accuracy (`--min-acc`), which a net stuck at chance does not. Each lr is "
        "decided on all its seeds (seeds per lr: how many ran at each lr, a range when the lrs differ); these are "
        "lrs of the grid, not estimates, so they carry no interval: their uncertainty is the grid's spacing.", "",
        stable_markdown(content.stable, content.show_model, min_acc), ""]


def largest_trainable_lr_section(content: ReportContent) -> list[str]:
    min_acc = content.min_acc
    sharpness = (" The last column is the other notion, the *edge of stability* in the field's sense (Cohen et "
                 "al. 2021): the lowest lr at which some run's sharpness (the top Hessian eigenvalue) reached the "
                 "optimiser's stability threshold (2/η for gradient descent, 2(1+β)/η with momentum β), of the lrs "
                 "that measured it (see the sharpness section). Sharpness can reach the threshold well below the "
                 "largest lr that trains: the two answer different questions."
                 if content.threshold_lrs else
                 " This is not the *edge of stability* in the field's sense (Cohen et al. 2021: sharpness, the top "
                 "Hessian eigenvalue, reaching the optimiser's stability threshold 2/η): no run here measured "
                 "sharpness (`instrument.sharpness_every` > 0 does).")
    return [
        "## Largest trainable learning rate", "",
        "Per variant, the largest lr that trains, with its bracket: the last lr at which every seed trained and "
        "the first at which one did not. A run trains when it finished with a final test accuracy of at least "
        f"{100 * min_acc:g}% and a last `grad_norm/global` above 0; it *diverges* (non-finite or exploding loss), "
        f"*collapses* (finished, but below {100 * min_acc:g}% or with a gradient of exactly 0) or *fails* (crashed). "
        "It is decided by single seeds at an absolute bar, so it says where training stops working, not where it "
        "works best. The bracket is as narrow as the lrs tried around it (a `sweep.mode=largest_lr` sweep bisects "
        "it to √2, a dense grid leaves its own spacing). Channels per statistic: 1 is per-channel, `all` one "
        "statistic per layer. Seeds per lr: how many seeds each lr tried was run with (the search runs the next "
        "seed only while the earlier ones trained)." + sharpness, "",
        largest_trainable_lr_markdown(content.largest_trainable, content.show_model, content.threshold_lrs), ""]


def results_section(content: ReportContent) -> list[str]:
    interval_method = content.interval_method
    return [
        "## Results per variant and learning rate", "",
        f"Test accuracy is the mean final test accuracy over the n seeds that finished without diverging, with a "
        f"95% {INTERVAL_NAMES[interval_method]} interval over those seeds"
        + (" (mean ± t(0.975, n−1)·s/√n: wide for few seeds, e.g. ×4.3 the standard error at n = 3)"
           if interval_method == "t" else " (resampling the seeds; too narrow for a handful of seeds)")
        + "; one seed gives no interval. "
        "`diverged` counts diverged seeds among completed ones; steps to a target average over the seeds that "
        "reached it. Grad norms are `grad_norm/global` from metrics.jsonl: at step 0 (set by the initialisation, "
        "mean over seeds), its peak after step 0 (max over seeds; inf once a norm went non-finite) and its last "
        "logged value (mean over finished seeds; 0 means the network died)." + roles_note(content.runs), "",
        content.summary_table, ""]


def roles_note(runs: list[RunRecord]) -> str:
    """For a best_lr sweep's runs: the per-lr tables pool its tuning runs with its fresh seeds, and say how many."""
    roles = Counter(run.role for run in runs if run.role)
    if not roles:
        return ""
    return (f" These runs include {roles['tune']} tuning runs and {roles['final']} fresh seeds of a "
            "`sweep.mode=best_lr` sweep: the tables per lr (and the differences and trend below) pool them "
            "(column `tuning / fresh`), and a tuning run at its variant's chosen lr was picked for doing well; "
            "\"Best against best\" keeps the fresh seeds apart.")


def differences_section(content: ReportContent) -> list[str]:
    reference = content.reference
    tested = [c for c in content.comparisons if c.p_holm is not None]
    holm = ("" if not tested else
            f" p is Welch's two-sided p-value (the interval excludes 0 exactly when p < 0.05). With many comparisons "
            "some hold by chance: Holm's step-down correction over all "
            f"{len(tested)} comparison{'s' if len(tested) != 1 else ''} below with a p-value (every lr"
            + (" and model" if content.show_model else "") + "; one seed gives none) keeps the chance of any false "
            "*holds* at 5%; "
            f"{sum(c.holds_after_holm for c in tested)} of {len(tested)} hold after it.")
    return [
        "## Differences", "",
        f"Each variant's final test accuracy minus `{reference}`'s at the same lr, in percentage points, with the "
        "95% Welch t-interval of the difference (unequal variances). A difference *holds* when its interval "
        "excludes 0; otherwise it is *not resolved* by these seeds. Diverged seeds have no accuracy and are "
        "left out here (see the table above)." + holm,
        *(differences_markdown(content.comparisons, content.show_model)
          or ["", f"_No lr has finished seeds of `{reference}` and another variant._"]), ""]


def trend_section(content: ReportContent) -> list[str]:
    lines = [
        "## Trend with group size", "",
        "At each lr, one test over every run instead of pairs of variants: Kendall's τ-b between the number of "
        "channels each statistic pools and the final test accuracy of each run that finished (`trend.csv`). "
        "Group sizes are ordered per-channel (1) < 2 < 4 < … < all (one statistic per layer); τ near −1 means "
        "accuracy falls as the groups grow, near +1 that it rises. Left out: no normalisation (it has no group "
        "size), a fixed group count above 1 (its group size differs between layers) and diverged runs (no final "
        "accuracy; counted in the table). p is two-sided (scipy.stats.kendalltau: exact without ties for small "
        "samples, else the normal approximation with the tie correction); Holm p corrects over the lrs tested.", ""]
    if not content.trends:
        return lines + ["_No lr has finished runs of two or more group sizes._", ""]
    return lines + [trend_markdown(content.trends, content.show_model), ""]


def plots_section(content: ReportContent) -> list[str]:
    lines = ["## Plots", ""]
    for plot in content.plots:
        lines += plot.markdown()
    return lines


def incomplete_section(content: ReportContent) -> list[str]:
    incomplete = [run for run in content.listed_runs if not run.completed]
    if not incomplete:
        return []
    lines = ["## Runs that did not complete", "",
             "Failed, killed, incomplete or still running (see README \"Outputs\" for each status); re-running "
             "the sweep redoes all but the running ones.", ""]
    for run in incomplete:
        error = first_line((run.summary.get("error") or "").strip(),
                           STATUS_WITHOUT_ERROR.get(run.status, "no error recorded"))
        lines.append(f"- {run.variant} lr={run.lr:g} seed={run.seed} ({run.status}): {error} — "
                     f"`{shown_path(run.run_dir)}`")
    return lines + [""]


def repeats_note(repeats: list[RepeatedSeed]) -> list[str]:
    """The opening's line on seeds run more than once (none when every seed ran once)."""
    left_out = sum(len(repeat.left_out) for repeat in repeats)
    if not left_out:
        return []
    return ["", f"**Repeated seeds:** {left_out} run{'s' if left_out != 1 else ''} repeat a seed already run at the "
                "same variant and lr (a sweep run again after its settings changed); each seed counts once, and "
                "the runs left out are listed under \"Repeated seeds\"."]


def _written(run: RunRecord) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.summary_written_at))


def repeats_section(content: ReportContent) -> list[str]:
    if not content.repeats:
        return []
    lines = ["## Repeated seeds", "",
             "A seed counts once per variant and lr. Where one ran more than once, the tables and plots use the "
             "newest run that finished or diverged (by when its summary.json was written); the others are left "
             "out of every table and plot.", ""]
    for repeat in content.repeats:
        kept = repeat.kept
        prefix = f"{kept.model}, " if content.show_model else ""
        lines.append(f"- {prefix}{kept.variant} lr={kept.lr:g} seed={kept.seed}: kept `{shown_path(kept.run_dir)}` "
                     f"({kept.status}, {_written(kept)}), {repeat.why}; left out "
                     + ", ".join(f"`{shown_path(run.run_dir)}` ({run.status}, {_written(run)})"
                                 for run in repeat.left_out))
    return lines + [""]


def skipped_section(content: ReportContent) -> list[str]:
    if not content.skipped:
        return []
    return ["## Run dirs skipped", "",
            "These dirs look like run dirs (a summary.json beside a config, a sweep job record or a run lock) "
            "but could not be used; nothing above counts them.", "",
            *(f"- `{shown_path(item.run_dir)}`: {item.reason}" for item in content.skipped), ""]


def report_markdown(content: ReportContent) -> str:
    lines = [*opening(content),
             "## Data source", "", *describe_data_sources(content.listed_runs), "",
             "## Made from", "",
             *provenance_markdown(provenance_counts(content.listed_runs), len(content.listed_runs)), "",
             *config_section(content), *stable_section(content), *largest_trainable_lr_section(content),
             *results_section(content), *differences_section(content), *trend_section(content),
             *content.best_vs_best, *plots_section(content),
             *content.mechanism, *content.sharpness, *incomplete_section(content), *repeats_section(content),
             *skipped_section(content)]
    return "\n".join(lines)
