"""The sweep's largest_lr mode: per variant, search the largest trainable lr instead of running a dense lr grid.

    python -m bnexp.sweep sweep=cpu_mechanism sweep.mode=largest_lr [sweep.lr_search_ratio=1.414] ...

Per variant (and model), the lr doubles from `sweep.lr_search_start` until a run diverges or collapses, then the
bracket is bisected in log space until the last lr that trains and the first that does not are within
`sweep.lr_search_ratio` (√2 by default) of each other (bnexp/lr_search/largest_trainable.py). Each lr runs every
seed of `sweep.seeds` until one of them does not train; with one worker the seeds of an lr run one at a time, so a
failing lr usually costs one run. (The largest trainable lr is not the edge of stability, the sharpness reaching 2/η.)

The planner rebuilds each search's outcomes from the run dirs every time a worker is free (bnexp/sweep/planning.py),
so the mode resumes like every sweep, and runs of an earlier dense-grid sweep with the same recipe in the same
out_dir count as known outcomes. A run that fails in this sweep counts as not training.
"""
from __future__ import annotations

from typing import Iterable

from omegaconf import DictConfig

from bnexp.config.sweep_schema import lr_search_range
from bnexp.lr_search import largest_trainable
from bnexp.lr_search.lrs import format_lr
from bnexp.runs.outcome import DEFAULT_MIN_ACC, run_dir_outcome
from bnexp.sweep.grid import SweepJob
from bnexp.sweep.planning import RunDirPlanner, Search


def lr_search_settings(sweep_cfg: DictConfig) -> tuple[largest_trainable.LrSearchSettings, float]:
    """The search settings and the accuracy that counts as training, from a checked sweep config's `lr_search_*`
    and `trains_min_acc` keys (bnexp/config/sweep_schema.py: their rules, and the lr range a config without them
    asks for)."""
    defaults = largest_trainable.LrSearchSettings(start_lr=0.1)
    start_lr, min_lr, max_lr = lr_search_range(sweep_cfg)

    def given(value, default):
        return default if value is None else float(value)

    settings = largest_trainable.LrSearchSettings(
        start_lr=start_lr, seeds=tuple(int(seed) for seed in sweep_cfg.seeds), min_lr=min_lr, max_lr=max_lr,
        ratio=given(sweep_cfg.lr_search_ratio, defaults.ratio),
        growth=given(sweep_cfg.lr_search_growth, defaults.growth))
    return settings, given(sweep_cfg.trains_min_acc, DEFAULT_MIN_ACC)


class LargestLrPlanner(RunDirPlanner):
    """Which runs each variant's search for its largest trainable lr needs next, from the run dirs as they are
    now."""
    mode = "largest_lr"

    def __init__(self, sweep_cfg: DictConfig, cli_train_overrides: list[str], one_at_a_time: bool):
        self.settings, self.min_acc = lr_search_settings(sweep_cfg)
        super().__init__(sweep_cfg, cli_train_overrides, self.settings.start_lr, self.settings.seeds[0])
        self.one_at_a_time = one_at_a_time
        self._announced: set[Search] = set()

    def max_parallel_runs(self) -> int:
        """The most runs it asks for at once: every seed of one lr per search."""
        return len(self.searches) * len(self.settings.seeds)

    def outcomes(self) -> dict[Search, dict[float, dict[int, largest_trainable.Outcome]]]:
        """Every known outcome per search, read from the run dirs (a dense grid's runs included); a run that failed
        in this sweep does not train."""
        def outcome_of(run_dir, status):
            if status == "failed":
                return largest_trainable.Outcome.FAILED
            return run_dir_outcome(run_dir, self.min_acc)
        return self.known(outcome_of)

    def brackets(self) -> dict[Search, largest_trainable.TrainableLrBracket]:
        outcomes = self.outcomes()
        return {search: largest_trainable.find_bracket(self.settings, outcomes[search]) for search in self.searches}

    def known_jobs(self) -> list[SweepJob]:
        """The jobs of every run with a known outcome that the searches use (shown as done in the bookkeeping)."""
        return self.completed_jobs((search, lr, seed) for search, by_lr in self.outcomes().items()
                                   for lr, by_seed in sorted(by_lr.items()) for seed in sorted(by_seed))

    def next_jobs(self, in_flight: Iterable[SweepJob] = ()) -> list[SweepJob]:
        """The runs to start now: for each search with no run in flight, the seeds of its next lr (the first one
        only with one worker). Empty for every search that is done."""
        busy = self.busy(in_flight)
        outcomes = self.outcomes()
        return [self.job(search, lr, seed) for search in self.searches if search not in busy
                for lr, seed in largest_trainable.next_runs(self.settings, outcomes[search], self.one_at_a_time)]

    def progress_lines(self) -> list[str]:
        """The searches that finished since the last call, with their brackets (for the progress log)."""
        done = [(search, bracket) for search, bracket in self.brackets().items()
                if bracket.done and search not in self._announced]
        self._announced.update(search for search, _ in done)
        return [f"largest trainable lr: {search.describe()}: {bracket.describe()}" for search, bracket in done]

    def summary_lines(self) -> list[str]:
        """Each search's bracket so far, for the sweep's closing lines and its dry run."""
        return [f"{search.describe()}: {bracket.describe()}" for search, bracket in self.brackets().items()]

    def status(self) -> dict:
        """Per search, its bracket so far, for sweep_status.json."""
        return {search.describe(): {"done": bracket.done, "largest_trainable_lr": bracket.largest_trainable_lr,
                                    "first_failing_lr": bracket.first_fails.lr if bracket.first_fails else None,
                                    "runs": bracket.runs, "bracket": bracket.describe()}
                for search, bracket in self.brackets().items()}

    def describe_settings(self) -> str:
        s = self.settings
        return (f"largest trainable lr search from lr {format_lr(s.start_lr)} (x{s.growth:g} up, bisect "
                f"to ratio {s.ratio:.4g}, lr in [{format_lr(s.min_lr)}, {format_lr(s.max_lr)}]), "
                f"seeds {list(s.seeds)}, trains at test acc >= {self.min_acc:g}"
                + ("; one seed at a time" if self.one_at_a_time else ""))
