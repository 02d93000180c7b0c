"""The sweep's largest_lr mode: per variant, search the largest trainable lr instead of running a dense lr grid.

    python -m bnexp.sweep sweep=cpu_mechanism sweep.mode=largest_lr [sweep.lr_search_ratio=1.414] ...

Per variant (and model), the lr doubles from `sweep.lr_search_start` until a run diverges or collapses, then the
bracket is bisected in log space until the last lr that trains and the first that does not are within
`sweep.lr_search_ratio` (√2 by default) of each other (bnexp/lr_search.py). Each lr runs every seed of
`sweep.seeds` until one of them does not train; with one worker the seeds of an lr run one at a time, so a failing
lr usually costs one run. (The largest trainable lr is not the edge of stability, the sharpness reaching 2/η.)

The planner keeps no state of its own: every time a worker is free it rebuilds each search's outcomes from the
run dirs under `<out_dir>/runs` and asks for the next runs. So the mode resumes like every sweep (run the command
again; finished and diverged runs are kept), and runs of an earlier dense-grid sweep with the same recipe in the
same out_dir count as known outcomes. A run that failed (crashed, killed, timed out) in an earlier sweep is retried
before it counts; one that fails in this sweep counts as not training, and the sweep exits 1 naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf

from bnexp import lr_search
from bnexp.config.sweep_schema import lr_search_range
from bnexp.runs.fileio import read_json
from bnexp.runs.files import COMPLETED_STATUSES, SWEEP_JOB_FILE, run_status
from bnexp.runs.outcome import DEFAULT_MIN_ACC, run_dir_outcome
from bnexp.sweep.grid import SweepJob, build_jobs


def lr_search_settings(sweep_cfg: DictConfig) -> tuple[lr_search.LrSearchSettings, float]:
    """The search settings and the accuracy that counts as training, from a checked sweep config's `lr_search_*`
    and `trains_min_acc` keys (bnexp/config/sweep_schema.py: their rules, and the lr range a config without them
    asks for)."""
    defaults = lr_search.LrSearchSettings(start_lr=0.1)
    start_lr, min_lr, max_lr = lr_search_range(sweep_cfg)

    def given(value, default):
        return default if value is None else float(value)

    settings = lr_search.LrSearchSettings(
        start_lr=start_lr, seeds=tuple(int(seed) for seed in sweep_cfg.seeds), min_lr=min_lr, max_lr=max_lr,
        ratio=given(sweep_cfg.lr_search_ratio, defaults.ratio),
        growth=given(sweep_cfg.lr_search_growth, defaults.growth))
    return settings, given(sweep_cfg.trains_min_acc, DEFAULT_MIN_ACC)


@dataclass(frozen=True)
class Search:
    variant: str
    model: str | None

    def describe(self) -> str:
        return f"{self.model}/{self.variant}" if self.model else self.variant


class LargestLrPlanner:
    """Which runs each variant's search for its largest trainable lr needs next, from the run dirs as they are
    now."""

    def __init__(self, sweep_cfg: DictConfig, cli_train_overrides: list[str], one_at_a_time: bool):
        self.sweep_cfg = sweep_cfg
        self.cli_train_overrides = list(cli_train_overrides)
        self.settings, self.min_acc = lr_search_settings(sweep_cfg)
        self.one_at_a_time = one_at_a_time
        self.runs_dir = Path(sweep_cfg.out_dir).resolve() / "runs"
        # one search per variant x model cell of the grid (whose builder checks sweep.only_variants)
        self.searches = [Search(job.variant, job.model)
                         for job in self._grid_jobs(lrs=[self.settings.start_lr], seeds=[self.settings.seeds[0]])]
        self.failed_here: set[str] = set()      # run ids that failed in this sweep: they count as not training
        self._jobs: dict[tuple, SweepJob] = {}  # (search, lr, seed) -> SweepJob
        self._dir_jobs: dict[str, tuple | None] = {}  # run dir name -> (search, lr, seed) when it is this recipe's
        self._completed: dict[str, lr_search.Outcome] = {}  # run id -> outcome of a finished/diverged run
        self._announced: set[Search] = set()

    # --- jobs ----------------------------------------------------------------------------------------------------

    def _grid_jobs(self, **axes) -> list[SweepJob]:
        """The grid mode's jobs for the sweep config with the given keys (grid axes) replaced, so that a run of the
        search gets the run dir the grid would give it."""
        return build_jobs(OmegaConf.merge(OmegaConf.to_container(self.sweep_cfg), axes), self.cli_train_overrides)

    def job(self, search: Search, lr: float, seed: int) -> SweepJob:
        """The sweep job of one run, exactly as the grid mode would build it."""
        key = (search, lr_search.round_lr(lr), seed)
        if key not in self._jobs:
            models = [search.model] if search.model else None
            (self._jobs[key],) = self._grid_jobs(only_variants=[search.variant], models=models, lrs=[float(lr)],
                                                 seeds=[int(seed)])
        return self._jobs[key]

    def _run_of_dir(self, run_dir: Path) -> tuple | None:
        """(search, lr, seed) of a run dir made with this sweep's recipe, else None (another recipe's run)."""
        if run_dir.name not in self._dir_jobs:
            record = read_json(run_dir / SWEEP_JOB_FILE)
            if record is None:  # a run starting right now has not written it yet: decide at the next look
                return None
            try:
                search = Search(str(record["variant"]), record.get("model"))
                lr, seed = float(record["lr"]), int(record["seed"])
            except (KeyError, TypeError, ValueError):
                search = None
            ours = search in self.searches and self.job(search, lr, seed).run_id == run_dir.name
            self._dir_jobs[run_dir.name] = (search, lr, seed) if ours else None
        return self._dir_jobs[run_dir.name]

    # --- outcomes ------------------------------------------------------------------------------------------------

    def outcomes(self) -> dict[Search, dict[float, dict[int, lr_search.Outcome]]]:
        """Every known outcome per search, read from the run dirs (a dense grid's runs included)."""
        known: dict[Search, dict[float, dict[int, lr_search.Outcome]]] = {s: {} for s in self.searches}
        # glob: no runs dir (before the first run) lists nothing
        for run_dir in sorted(path for path in self.runs_dir.glob("*") if path.is_dir()):
            located = self._run_of_dir(run_dir)
            if located is None:
                continue
            search, lr, seed = located
            outcome = self._completed.get(run_dir.name)
            if outcome is None:
                if run_status(run_dir) in COMPLETED_STATUSES:
                    outcome = run_dir_outcome(run_dir, self.min_acc)
                    self._completed[run_dir.name] = outcome
                elif run_dir.name in self.failed_here:
                    outcome = lr_search.Outcome.FAILED
            if outcome is not None:
                known[search].setdefault(lr, {})[seed] = outcome
        return known

    def brackets(self) -> dict[Search, lr_search.TrainableLrBracket]:
        outcomes = self.outcomes()
        return {search: lr_search.find_bracket(self.settings, outcomes[search]) for search in self.searches}

    def known_jobs(self) -> list[SweepJob]:
        """The jobs of every run with a known outcome that the searches use (shown as done in the bookkeeping)."""
        jobs = [self.job(search, lr, seed) for search, by_lr in self.outcomes().items()
                for lr, by_seed in sorted(by_lr.items()) for seed in sorted(by_seed)]
        return [job for job in jobs if run_status(job.run_dir) in COMPLETED_STATUSES]

    def next_jobs(self, in_flight: Iterable[SweepJob] = ()) -> list[SweepJob]:
        """The runs to start now: for each search with no run in flight, the seeds of its next lr (the first one
        only with one worker). Empty for every search that is done."""
        busy = {Search(job.variant, job.model) for job in in_flight}
        outcomes = self.outcomes()
        return [self.job(search, lr, seed) for search in self.searches if search not in busy
                for lr, seed in lr_search.next_runs(self.settings, outcomes[search], self.one_at_a_time)]

    def newly_done(self) -> list[tuple[Search, lr_search.TrainableLrBracket]]:
        """Searches that finished since the last call, with their brackets (for the progress log)."""
        done = [(search, bracket) for search, bracket in self.brackets().items()
                if bracket.done and search not in self._announced]
        self._announced.update(search for search, _ in done)
        return done

    def status(self) -> dict:
        """Per search, its bracket so far, for sweep_status.json."""
        return {search.describe(): {"done": bracket.done, "largest_trainable_lr": bracket.largest_trainable_lr,
                                    "first_failing_lr": bracket.first_fails.lr if bracket.first_fails else None,
                                    "runs": bracket.runs, "bracket": bracket.describe()}
                for search, bracket in self.brackets().items()}

    def describe_settings(self) -> str:
        s = self.settings
        return (f"largest trainable lr search from lr {lr_search.format_lr(s.start_lr)} (x{s.growth:g} up, bisect "
                f"to ratio {s.ratio:.4g}, lr in [{lr_search.format_lr(s.min_lr)}, {lr_search.format_lr(s.max_lr)}]), "
                f"seeds {list(s.seeds)}, trains at test acc >= {self.min_acc:g}"
                + ("; one seed at a time" if self.one_at_a_time else ""))
