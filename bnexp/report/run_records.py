"""Run dirs read into RunRecords: what the report knows of each run (summary, config, grid coordinates).

`load_runs` finds every run dir below the given paths (bnexp.runs.files) and reads each with `load_run`; a dir it
cannot place in the study (damaged summary, no lr, a seed that is not an integer) is returned as Skipped with the
reason. `variant_label` and `variant_sort_key` name the variants and order them the same way in every table.
"""
from __future__ import annotations

import functools
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from bnexp.config.keys import config_value
from bnexp.runs.fileio import read_json
from bnexp.runs.lock import LOCK_FILE
from bnexp.runs.files import (
    COMPLETED_STATUSES,
    CONFIG_FILES,
    RUN_STATUSES,
    SUMMARY_FILE,
    SWEEP_JOB_FILE,
    as_float,
    find_run_dirs,
    read_config,
    read_metrics,
    read_summary,
    run_status,
)

UNKNOWN_MODEL = "default"
RUN_ROLES = ("tune", "final")  # a best_lr sweep's runs: tuning the lr, or fresh seeds at the chosen one
VARIANT_ORDER = ("correct_bn", "torch_bn", "grouped_bn", "shared_bn", "no_bn")


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
    lr: float             # positive, but for a run that did not complete (nan when it had none): on_lr_axis
    seed: int | None
    # a best_lr sweep's run: "tune" (it helped choose its variant's lr) or "final" (a fresh seed at the chosen lr),
    # from its sweep_job.json; a final run's record of the tuning that chose its lr. None for any other run.
    role: str | None = None
    tuning: dict[str, Any] | None = None

    @property
    def completed(self) -> bool:
        return self.status in COMPLETED_STATUSES

    @property
    def on_lr_axis(self) -> bool:
        """Whether the run has a place in the tables: a positive lr. A run that failed on a bad lr (nan, 0, -1)
        has none, and is only listed among the runs that did not complete."""
        return math.isfinite(self.lr) and self.lr > 0

    @functools.cached_property
    def summary_written_at(self) -> float:
        """When summary.json was last written (its modification time; the trainer rewrites it at the run's end)."""
        try:
            return (self.run_dir / SUMMARY_FILE).stat().st_mtime
        except OSError:
            return 0.0

    @functools.cached_property
    def step_records(self) -> list[dict[str, Any]]:
        """The per-step records of metrics.jsonl (read once; the tables and several plots use them)."""
        # a record whose step is not a number (another program's line) has no place on a step axis
        return [r for r in read_metrics(self.run_dir)
                if r.get("kind", "step") == "step" and _is_finite_number(r.get("step"))]

    @functools.cached_property
    def grad_norms(self) -> GradNormTrajectory:
        """grad_norm/global's trajectory (worked out once: the summary table and the largest trainable lr use it)."""
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
    """correct_bn, shared_bn, ... with the group count appended for grouped BN (grouped_bn_g8), and an intervention
    set on the command line (variant.pooled, variant.freeze_weight) that the name does not already say: runs that
    differ only in these are different variants for this study."""
    name = str(config_value(config, "variant.name") or summary.get("variant") or summary.get("sweep_variant")
               or "unknown")
    norm = config_value(config, "variant.norm")
    groups = config_value(config, "variant.stat_groups")
    pooled = config_value(config, "variant.pooled", "both")
    if pooled != "both" and f"pooled_{pooled}" not in name:
        name = f"{name}_pooled_{pooled}"
    if config_value(config, "variant.freeze_weight") is True and "frozen_gamma" not in name:
        name = f"{name}_frozen_gamma"
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
    if (lr is None or not math.isfinite(lr) or lr <= 0) and status in COMPLETED_STATUSES:
        raise SkippedRunDir(f"its lr ({given_lr!r}) is not a positive number, so it has no place on the lr axis "
                            f"(status {status})")
    seed = summary.get("seed", config_value(config, "seed", job.get("seed"), null_is_missing=False))
    if seed is not None and not (_is_finite_number(seed) and float(seed).is_integer()):
        raise SkippedRunDir(f"its seed ({seed!r}) is not an integer (status {status})")
    model = summary.get("model") or config_value(config, "model.name") or job.get("model") or UNKNOWN_MODEL
    role = job.get("role") if job.get("role") in RUN_ROLES else None
    tuning = job.get("tuning") if role == "final" and isinstance(job.get("tuning"), dict) else None
    return RunRecord(run_dir=run_dir, summary=summary, config=config, status=status,
                     variant=variant_label(config, summary), model=str(model), lr=math.nan if lr is None else lr,
                     seed=int(seed) if seed is not None else None, role=role, tuning=tuning)


def summaries_that_are_not_files(paths: Iterable[Path]) -> list[Skipped]:
    """Dirs marked as run dirs (a config, a sweep job record or a run lock) whose summary.json is there but is not
    a file: bnexp.runs' finder passes them over, and the report must say why they are missing."""
    found = {}
    for root in paths:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != ".hydra" and not d.startswith(".tmp"))
            summary = Path(dirpath) / SUMMARY_FILE
            if not (os.path.lexists(summary) and not summary.is_file()):
                continue
            dirnames[:] = [d for d in dirnames if d != SUMMARY_FILE]
            if any((Path(dirpath) / name).is_file() for name in (*CONFIG_FILES, SWEEP_JOB_FILE, LOCK_FILE)):
                what = ("a directory" if summary.is_dir() else "a link to nothing" if summary.is_symlink()
                        else "not a regular file")
                found[Path(dirpath).resolve()] = (f"summary.json is {what}, so the run's result cannot be read "
                                                  "(move it aside; running the run again writes the file)")
    return [Skipped(run_dir, reason) for run_dir, reason in sorted(found.items())]


def load_runs(paths: Iterable[Path]) -> tuple[list[RunRecord], list[Skipped]]:
    """Every run dir below `paths`: the runs the report can use, and the dirs it skipped with the reason."""
    paths = list(paths)
    runs, skipped = [], []
    for run_dir in find_run_dirs(paths):
        try:
            runs.append(load_run(run_dir))
        except SkippedRunDir as reason:
            skipped.append(Skipped(run_dir, str(reason)))
        except Exception as error:  # a damage not foreseen above must cost one run dir, not the report
            skipped.append(Skipped(run_dir, f"could not be read ({type(error).__name__}: {error})"))
    skipped += summaries_that_are_not_files(paths)
    # A run that failed before its config was written does not know its model (the trainer's default); with
    # one model in the study it is that one, rather than a spurious second model in every table.
    known_models = {run.model for run in runs if run.model != UNKNOWN_MODEL}
    if len(known_models) == 1:
        for run in runs:
            if run.model == UNKNOWN_MODEL:
                run.model = next(iter(known_models))
    return runs, skipped


def variant_sort_key(label: str) -> tuple:
    base = next((i for i, name in enumerate(VARIANT_ORDER) if label.startswith(name)), len(VARIANT_ORDER))
    # grouped BN from close to per-channel to close to shared: by group size (grouped_bn_2ch, _4ch, ...) first,
    # then by group count from many to few (grouped_bn_g8, _g4, _g1)
    size = re.fullmatch(r".*_(\d+)ch", label)
    if size:
        return (base, 0, int(size.group(1)), label)
    groups = label.rsplit("_g", 1)[-1] if "_g" in label else ""
    return (base, 1, -int(groups) if groups.isdigit() else 0, label)
