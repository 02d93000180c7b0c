"""The sweep's best_lr mode, best against best: per variant (and model), tune the lr on a few tuning seeds, then run
fresh seeds at each variant's own best lr.

    python -m bnexp.sweep sweep=best_lr_smoke
    python -m bnexp.sweep sweep=cpu_mechanism sweep.mode=best_lr +sweep.tune_seeds=[100] sweep.seeds=[0,1,2,3,4]

Tuning (bnexp/lr_search/best_lr.py): every lr of `sweep.lrs` runs with every seed of `sweep.tune_seeds`; the best lr
has the highest mean final test accuracy over them (a run that diverged or failed scores 0; a tie goes to the
smaller lr). While the best is the lowest lr tried, the lr `sweep.tune_growth` (2) times lower runs; while it is the
highest, the lr that many times higher; until the best is interior, or is the lowest (highest) lr tried and equals
`sweep.lr_search_min` (`lr_search_max`): "at the bound". Then every seed of `sweep.seeds`, none of them a tuning
seed, runs at that variant's best lr. A variant's searches go on independently of the others'.

Each run dir's sweep_job.json records its role, "tune" or "final", and a final run's the tuning that chose its lr;
sweep_status.json (`best_lr`) holds per variant the tuning curve, the chosen lr, whether it is interior, and the
fresh seeds' runs. The planner reads the run dirs afresh each time a worker is free (bnexp/sweep/planning.py), so
the mode resumes like every sweep; a run that fails in this sweep scores 0.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig

from bnexp.config.sweep_schema import best_lr_range
from bnexp.lr_search.best_lr import Tuning, TuningSettings, next_tuning_runs, run_score, tune
from bnexp.lr_search.lrs import format_lr, round_lr, same_lr
from bnexp.runs.fileio import read_json, write_json_atomic
from bnexp.runs.files import SWEEP_JOB_FILE, as_float, read_summary
from bnexp.sweep.grid import SweepJob
from bnexp.sweep.planning import RunDirPlanner, Search

TUNE, FINAL = "tune", "final"


def tuning_settings(sweep_cfg: DictConfig) -> TuningSettings:
    """The tuning's settings from a checked sweep config (bnexp/config/sweep_schema.py: the rules of its keys)."""
    floor, cap = best_lr_range(sweep_cfg)
    defaults = TuningSettings(lrs=(0.1,), seeds=(0,))
    growth = defaults.growth if sweep_cfg.tune_growth is None else float(sweep_cfg.tune_growth)
    return TuningSettings(lrs=tuple(float(lr) for lr in sweep_cfg.lrs),
                          seeds=tuple(int(seed) for seed in sweep_cfg.tune_seeds), growth=growth, min_lr=floor,
                          max_lr=cap)


@dataclass(frozen=True)
class SearchState:
    """One variant's tuning and the scores of its fresh seeds at the chosen lr (known so far)."""
    tuning: Tuning
    finals: dict[int, float]
    final_seeds: tuple[int, ...]

    @property
    def chosen_lr(self) -> float | None:
        return self.tuning.best.lr if self.tuning.done else None

    @property
    def done(self) -> bool:
        return self.tuning.done and all(seed in self.finals for seed in self.final_seeds)

    @property
    def phase(self) -> str:
        return "done" if self.done else "final" if self.tuning.done else "tuning"

    def describe(self) -> str:
        text = self.tuning.describe()
        if self.tuning.done:
            text += (f"; fresh seeds at lr {format_lr(self.chosen_lr)}: {len(self.finals)} of "
                     f"{len(self.final_seeds)} done")
            if self.finals:
                text += " (" + ", ".join(f"{100 * self.finals[seed]:.1f}%" for seed in sorted(self.finals)) + ")"
        return text


class BestLrPlanner(RunDirPlanner):
    """Which runs each variant's tuning, then its fresh seeds, need next, from the run dirs as they are now."""
    mode = "best_lr"

    def __init__(self, sweep_cfg: DictConfig, cli_train_overrides: list[str]):
        self.settings = tuning_settings(sweep_cfg)
        self.final_seeds = tuple(int(seed) for seed in sweep_cfg.seeds)
        super().__init__(sweep_cfg, cli_train_overrides, self.settings.lrs[0], self.settings.seeds[0])
        self._announced: dict[Search, tuple] = {}

    def role_of(self, seed: int) -> str | None:
        return TUNE if seed in self.settings.seeds else FINAL if seed in self.final_seeds else None

    def max_parallel_runs(self) -> int:
        """The most runs it asks for at once: the initial grid's tuning runs, or the fresh seeds, per search."""
        grid = len({round_lr(lr) for lr in self.settings.lrs}) * len(self.settings.seeds)
        return len(self.searches) * max(grid, len(self.final_seeds))

    # --- what the run dirs say -----------------------------------------------------------------------------------

    def scores(self) -> dict[Search, dict[float, dict[int, float]]]:
        """Every known score per search, lr and seed (bnexp/lr_search/best_lr.py's run_score; a run that failed in
        this sweep scores 0)."""
        def score_of(run_dir: Path, status: str) -> float:
            if status != "failed":
                self._record_role(run_dir)
            summary = read_summary(run_dir) or {}
            return run_score(status, as_float(summary.get("final_test_acc")))
        return self.known(score_of)

    def _record_role(self, run_dir: Path) -> None:
        """A finished run of this recipe made by another sweep (a grid's, or with other tuning seeds) gets the role
        its seed has here, so that the report does not pool tuning runs with fresh ones."""
        run = self.planned_run(run_dir)
        role = self.role_of(run.seed)
        if run.role != role:
            record = read_json(run_dir / SWEEP_JOB_FILE) or {}
            write_json_atomic(run_dir / SWEEP_JOB_FILE, {**record, "role": role})

    def states(self, scores: dict | None = None) -> dict[Search, SearchState]:
        """Each search's tuning and fresh seeds, from `scores` (self.scores() when not given: the run dirs read)."""
        states = {}
        for search, by_lr in (self.scores() if scores is None else scores).items():
            tuning = tune(self.settings, by_lr)
            finals: dict[int, float] = {}
            if tuning.done:
                for lr, by_seed in by_lr.items():
                    if same_lr(lr, tuning.best.lr):
                        finals.update({seed: score for seed, score in by_seed.items() if seed in self.final_seeds})
            states[search] = SearchState(tuning, finals, self.final_seeds)
        return states

    # --- jobs ----------------------------------------------------------------------------------------------------

    def final_job(self, search: Search, tuning: Tuning, seed: int) -> SweepJob:
        """A fresh seed at the chosen lr, carrying the record of the tuning that chose it."""
        record = {"chosen_lr": tuning.best.lr, "interior": tuning.interior, "bound": tuning.bound,
                  "lrs_tuned": [point.lr for point in tuning.curve], "tune_seeds": list(self.settings.seeds),
                  "min_lr": self.settings.min_lr, "max_lr": self.settings.max_lr}
        return replace(self.job(search, tuning.best.lr, seed), tuning=record)

    def next_jobs(self, in_flight: Iterable[SweepJob] = ()) -> list[SweepJob]:
        """The runs to start now, for each search with no run in flight: the tuning runs of its next lrs, or, once
        its tuning is done, the fresh seeds at its chosen lr that have not run. Empty for every search that is
        done."""
        busy = self.busy(in_flight)
        scores = self.scores()  # the run dirs, read once for both
        states = self.states(scores)
        jobs = []
        for search in self.searches:
            if search in busy:
                continue
            tuning = states[search].tuning
            if not tuning.done:
                jobs += [self.job(search, lr, seed) for lr, seed in next_tuning_runs(self.settings, scores[search])]
            else:
                jobs += [self.final_job(search, tuning, seed) for seed in self.final_seeds
                         if seed not in states[search].finals]
        return jobs

    def known_jobs(self) -> list[SweepJob]:
        """The finished or diverged runs the searches use: the tuning seeds' at every lr, the fresh seeds' at the
        chosen lr."""
        runs = []
        scores = self.scores()
        for search, by_lr in scores.items():
            for lr, by_seed in sorted(by_lr.items()):
                runs += [(search, lr, seed) for seed in sorted(by_seed) if seed in self.settings.seeds]
        for search, state in self.states(scores).items():
            runs += [(search, state.chosen_lr, seed) for seed in sorted(state.finals)]
        return self.completed_jobs(runs)

    # --- what it says --------------------------------------------------------------------------------------------

    def progress_lines(self) -> list[str]:
        """A line per search whose tuning moved on since the last call: past the grid, its lr chosen, its fresh
        seeds done."""
        lines = []
        for search, state in self.states().items():
            tuning = state.tuning
            step = (state.phase, tuning.best.lr if tuning.best else None, tuning.next_lrs)
            if tuning.best is None or self._announced.get(search) == step:
                continue
            self._announced[search] = step
            lines.append(f"best lr: {search.describe()}: {state.describe()}")
        return lines

    def summary_lines(self) -> list[str]:
        return [f"{search.describe()}: {state.describe()}" for search, state in self.states().items()]

    def status(self) -> dict:
        """Per search, for sweep_status.json: its tuning curve, the chosen lr (once tuning is done), whether it is
        interior or at which bound, and the fresh seeds' scores at it."""
        return {search.describe(): {
            "phase": state.phase, "done": state.done,
            "tuning_curve": [{"lr": point.lr, "mean_acc": point.mean, "acc_by_seed": dict(point.scores)}
                             for point in state.tuning.curve],
            "best_lr_so_far": state.tuning.best.lr if state.tuning.best else None,
            "chosen_lr": state.chosen_lr, "interior": state.tuning.interior if state.tuning.done else None,
            "bound": state.tuning.bound, "next_tuning_lrs": list(state.tuning.next_lrs),
            "final_seeds": list(self.final_seeds), "final_acc_by_seed": state.finals,
            "describe": state.describe()} for search, state in self.states().items()}

    def describe_settings(self) -> str:
        s = self.settings
        return (f"best lr tuning over lrs {[float(format_lr(lr)) for lr in s.lrs]} on tuning seeds {list(s.seeds)} "
                f"(x{s.growth:g} past an end while the best is there, lr in [{format_lr(s.min_lr)}, "
                f"{format_lr(s.max_lr)}]; a diverged or failed run scores 0, a tie goes to the smaller lr), then "
                f"fresh seeds {list(self.final_seeds)} at each variant's best lr")
