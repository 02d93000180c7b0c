"""Which of the loaded runs the tables count: those with a place on the lr axis, and one run per seed.

A seed counts once per model x variant x lr. Two run dirs of one seed appear when a sweep's settings were edited
and it ran again (the dir name carries a hash of the settings): the newest run that finished or diverged is kept
(the newest of all when none did), and the report lists the others with the run that replaced them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from bnexp.report.run_records import RunRecord, group_by, load_runs


@dataclass
class RepeatedSeed:
    """The runs of one seed at one model x variant x lr: the one the tables count and the ones they leave out."""
    kept: RunRecord
    left_out: list[RunRecord]
    why: str


def one_run_per_seed(runs: list[RunRecord]) -> tuple[list[RunRecord], list[RepeatedSeed]]:
    """The runs with each seed once per model x variant x lr (in their given order), and the repeats set aside.
    Runs without a seed cannot be told apart and all count."""
    repeats = []
    for (_, _, _, seed), members in group_by(runs, lambda r: (r.model, r.variant, r.lr, r.seed)).items():
        if seed is None or len(members) == 1:
            continue
        completed = [run for run in members if run.completed]
        newest = max(completed or members, key=lambda run: (run.summary_written_at, str(run.run_dir)))
        why = ("the newest that finished or diverged" if completed
               else "the newest; none of them finished or diverged")
        repeats.append(RepeatedSeed(newest, [run for run in members if run is not newest], why))
    left_out = {id(run) for repeat in repeats for run in repeat.left_out}
    return [run for run in runs if id(run) not in left_out], repeats


def counted_runs(runs: list[RunRecord]) -> tuple[list[RunRecord], list[RepeatedSeed]]:
    """The runs every table and plot is computed from: on the lr axis, one per seed; and the repeats left out."""
    return one_run_per_seed([run for run in runs if run.on_lr_axis])


def discover_runs(paths: Iterable[Path]) -> list[RunRecord]:
    """The runs below `paths` that the report's tables count."""
    return counted_runs(load_runs(paths)[0])[0]
