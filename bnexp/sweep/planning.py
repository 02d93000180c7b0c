"""What the sweep's planning modes (largest_lr, best_lr) share: one search per variant x model cell of the grid,
the sweep job of any (search, lr, seed) exactly as the grid mode would build it (so a run gets the run dir the grid
would give it), and what the run dirs under <out_dir>/runs say of this recipe's runs.

A planner keeps no state of its own: every time a worker is free the scheduler asks it for the next runs, and it
reads the run dirs afresh. So a planning mode resumes like every sweep (run the command again; finished and
diverged runs are kept), and runs of an earlier sweep with the same recipe in the same out_dir count. A run that
failed (crashed, killed, timed out) in an earlier sweep is retried before it counts; one that fails in this sweep
counts (each mode says how), and the sweep exits 1 naming it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from omegaconf import DictConfig, OmegaConf

from bnexp.lr_search.lrs import round_lr
from bnexp.runs.fileio import read_json
from bnexp.runs.files import COMPLETED_STATUSES, SWEEP_JOB_FILE, run_status
from bnexp.sweep.grid import SweepJob, build_jobs

Value = TypeVar("Value")


@dataclass(frozen=True)
class Search:
    """One variant x model cell of the grid, searched on its own."""
    variant: str
    model: str | None

    def describe(self) -> str:
        return f"{self.model}/{self.variant}" if self.model else self.variant


@dataclass(frozen=True)
class PlannedRun:
    """A run dir of this recipe: its search, lr, seed and the role its sweep_job.json records (best_lr mode)."""
    search: Search
    lr: float
    seed: int
    role: str | None


class RunDirPlanner:
    """The base of a planning mode. A subclass sets `mode` (also its key in sweep_status.json) and provides
    next_jobs, known_jobs, progress_lines, status, summary_lines, describe_settings and max_parallel_runs."""
    mode = ""

    def __init__(self, sweep_cfg: DictConfig, cli_train_overrides: list[str], first_lr: float, first_seed: int):
        self.sweep_cfg = sweep_cfg
        self.cli_train_overrides = list(cli_train_overrides)
        self.runs_dir = Path(sweep_cfg.out_dir).resolve() / "runs"
        # one search per variant x model cell of the grid (whose builder checks sweep.only_variants)
        self.searches = [Search(job.variant, job.model) for job in self._grid_jobs(lrs=[first_lr], seeds=[first_seed])]
        self.failed_here: set[str] = set()          # run ids that failed in this sweep
        self._jobs: dict[tuple, SweepJob] = {}       # (search, lr, seed) -> SweepJob
        self._planned: dict[str, PlannedRun | None] = {}  # run dir name -> its run, when it is this recipe's
        self._values: dict[str, object] = {}         # run dir name -> what a completed run told the planner

    # --- jobs ----------------------------------------------------------------------------------------------------

    def _grid_jobs(self, **axes) -> list[SweepJob]:
        """The grid mode's jobs for the sweep config with the given keys (grid axes) replaced, so that a run of the
        search gets the run dir the grid would give it."""
        return build_jobs(OmegaConf.merge(OmegaConf.to_container(self.sweep_cfg), axes), self.cli_train_overrides)

    def job(self, search: Search, lr: float, seed: int) -> SweepJob:
        """The sweep job of one run, exactly as the grid mode would build it, with the role of its seed."""
        key = (search, round_lr(lr), seed)
        if key not in self._jobs:
            models = [search.model] if search.model else None
            (grid_job,) = self._grid_jobs(only_variants=[search.variant], models=models, lrs=[float(lr)],
                                          seeds=[int(seed)])
            self._jobs[key] = replace(grid_job, role=self.role_of(seed))
        return self._jobs[key]

    def role_of(self, seed: int) -> str | None:
        """The role a run of `seed` has in this mode (none but in best_lr mode)."""
        return None

    def planned_run(self, run_dir: Path) -> PlannedRun | None:
        """The run in a run dir made with this sweep's recipe, else None (another recipe's run)."""
        if run_dir.name not in self._planned:
            record = read_json(run_dir / SWEEP_JOB_FILE)
            if record is None:  # a run starting right now has not written it yet: decide at the next look
                return None
            try:
                search = Search(str(record["variant"]), record.get("model"))
                lr, seed = float(record["lr"]), int(record["seed"])
            except (KeyError, TypeError, ValueError):
                search = None
            ours = search in self.searches and self.job(search, lr, seed).run_id == run_dir.name
            self._planned[run_dir.name] = PlannedRun(search, lr, seed, record.get("role")) if ours else None
        return self._planned[run_dir.name]

    # --- what the run dirs say -----------------------------------------------------------------------------------

    def known(self, value_of: Callable[[Path, str], Value | None]) -> dict[Search, dict[float, dict[int, Value]]]:
        """Per search, lr and seed, what `value_of(run dir, status)` makes of each run of this recipe that has ended:
        finished or diverged (read once: it does not change), or failed in this sweep (status 'failed', whatever
        its dir says). A failed run of an earlier sweep is not known yet: it is run again."""
        found: dict[Search, dict[float, dict[int, Value]]] = {search: {} for search in self.searches}
        # glob: no runs dir (before the first run) lists nothing
        for run_dir in sorted(path for path in self.runs_dir.glob("*") if path.is_dir()):
            run = self.planned_run(run_dir)
            if run is None:
                continue
            value = self._values.get(run_dir.name)
            if value is None:
                status = run_status(run_dir)
                if status in COMPLETED_STATUSES:
                    value = self._values[run_dir.name] = value_of(run_dir, status)
                elif run_dir.name in self.failed_here:
                    value = value_of(run_dir, "failed")
            if value is not None:
                found[run.search].setdefault(run.lr, {})[run.seed] = value
        return found

    def completed_jobs(self, runs: Iterable[tuple[Search, float, int]]) -> list[SweepJob]:
        """The jobs of the given runs whose dirs say finished or diverged (shown as done in the bookkeeping)."""
        jobs = [self.job(search, lr, seed) for search, lr, seed in runs]
        return [job for job in jobs if run_status(job.run_dir) in COMPLETED_STATUSES]

    @staticmethod
    def busy(in_flight: Iterable[SweepJob]) -> set[Search]:
        """The searches with a run under way: they wait for it before planning more."""
        return {Search(job.variant, job.model) for job in in_flight}
