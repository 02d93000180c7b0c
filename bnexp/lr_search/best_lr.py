"""Each variant's best lr, tuned on a few seeds: the lr with the highest mean final test accuracy over the tuning
seeds, on an lr grid that is extended until that lr is interior (a tried lr on each side of it) or a bound stops it.

The rules, shared by the sweep's best_lr mode (which runs the tuning) and the report (which reads it back):
- A run's *score* is its final test accuracy when it finished with one. A run that diverged or failed, or finished
  without a finite accuracy, scores 0: below every run that finished, even one at chance, so an lr at which a
  tuning seed diverged wins only where every lr did worse.
- An lr's score is the mean over the tuning seeds, known once every tuning seed has a score there.
- The best lr has the highest score; a tie goes to the smaller lr (further from divergence, and when every lr
  diverged it sends the tuning down).
- Every lr of the initial grid runs first. Then, while the best is the lowest lr tried, the lr `growth` times
  lower runs (not below `min_lr`); while it is the highest, the lr `growth` times higher (not above `max_lr`).
  Tuning is done when the best is *interior*, or *at the bound*: the lowest lr tried and equal to `min_lr`, or the
  highest and equal to `max_lr`.
- Scores known at other lrs (runs of a tuning seed from an earlier sweep or a grid, same recipe) count as tried
  lrs once every tuning seed has one there.

Everything here is a pure function of the scores known so far, so a sweep rebuilds the tuning from its run dirs and
a killed one resumes where it stopped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from bnexp.lr_search.lrs import SAME_LR_TOLERANCE, format_lr, round_lr, same_lr

# the score of a run that diverged or failed: below any accuracy a finished run can have
NO_RESULT_SCORE = 0.0
LOWER, UPPER = "lower", "upper"


def run_score(status: str | None, final_test_acc: float | None) -> float | None:
    """A run's score from how it ended: its final test accuracy when it finished with one, NO_RESULT_SCORE when it
    diverged, failed or finished without one; None while it is unknown (missing, running)."""
    if status == "finished":
        finite = final_test_acc is not None and math.isfinite(final_test_acc)
        return float(final_test_acc) if finite else NO_RESULT_SCORE
    return NO_RESULT_SCORE if status in ("diverged", "failed") else None


@dataclass(frozen=True)
class TuningSettings:
    lrs: tuple[float, ...]          # the initial grid
    seeds: tuple[int, ...]          # the tuning seeds
    growth: float = 2.0             # the factor of each step past the grid
    min_lr: float = 1e-4            # the lowest lr the tuning may try
    max_lr: float = 100.0           # the highest

    def __post_init__(self):
        # The guard for a Python caller: a sweep's keys meet these rules in its schema first
        # (bnexp/config/sweep_schema.py), where the messages name the sweep's keys.
        object.__setattr__(self, "lrs", tuple(float(lr) for lr in self.lrs))
        object.__setattr__(self, "seeds", tuple(int(seed) for seed in self.seeds))
        if not self.lrs or not self.seeds:
            raise ValueError(f"lr tuning needs at least one lr and one seed, got lrs={list(self.lrs)}, "
                             f"seeds={list(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"lr tuning seeds {list(self.seeds)} repeat a seed; list each once")
        if not self.growth > 1:
            raise ValueError(f"lr tuning growth={self.growth} must be above 1 (e.g. 2 to double)")
        if not 0 < self.min_lr <= min(self.lrs) <= max(self.lrs) <= self.max_lr:
            raise ValueError(f"lr tuning needs 0 < min_lr <= every lr <= max_lr, got min_lr={self.min_lr}, "
                             f"lrs={list(self.lrs)}, max_lr={self.max_lr}")


@dataclass(frozen=True)
class TunedLr:
    """One lr of the tuning curve: each tuning seed's score there."""
    lr: float
    scores: Mapping[int, float]

    @property
    def mean(self) -> float:
        return math.fsum(self.scores.values()) / len(self.scores)


@dataclass(frozen=True)
class Tuning:
    """Where an lr tuning stands: its curve so far, the best lr on it, and the lrs it needs next."""
    curve: tuple[TunedLr, ...]       # every lr with a score for each tuning seed, by lr
    best: TunedLr | None             # None until every lr of the initial grid has its score
    next_lrs: tuple[float, ...]      # the lrs to run next (the grid's unscored ones, or one past the curve's end)

    @property
    def done(self) -> bool:
        return not self.next_lrs

    @property
    def interior(self) -> bool:
        """The best lr has a tried lr on each side."""
        return self.best is not None and self.curve[0].lr < self.best.lr < self.curve[-1].lr

    @property
    def bound(self) -> str | None:
        """LOWER or UPPER where tuning ended with its best at that end of the curve (the bound stopped it)."""
        if not self.done or self.best is None or self.interior:
            return None
        return LOWER if self.best is self.curve[0] else UPPER

    def describe(self) -> str:
        """'best lr 0.2, interior (0.1: 51.0%, 0.2: 55.2%, 0.4: 53.0%)', or where the tuning stands."""
        curve = ", ".join(f"{format_lr(point.lr)}: {100 * point.mean:.1f}%" for point in self.curve)
        if self.best is None:
            return f"tuning the initial lrs ({curve or 'none scored yet'})"
        if not self.done:
            end = "lowest" if self.best is self.curve[0] else "highest"
            return (f"best so far {format_lr(self.best.lr)}, the {end} lr tried ({curve}); next lr "
                    f"{format_lr(self.next_lrs[0])}")
        if self.interior:
            return f"best lr {format_lr(self.best.lr)}, interior ({curve})"
        return f"best lr {format_lr(self.best.lr)}, at the {self.bound} bound ({curve})"


def tuning_curve(settings: TuningSettings,
                 scores: Mapping[float, Mapping[int, float | None]]) -> list[TunedLr]:
    """Every known lr (lrs within SAME_LR_TOLERANCE merged) with the scores of its tuning seeds, by lr; partly
    scored lrs included. Scores of other seeds are left out: the tuning decides on its own seeds only."""
    merged: list[tuple[float, dict[int, float]]] = []
    for lr in sorted(scores):
        by_seed = {int(seed): float(score) for seed, score in scores[lr].items()
                   if score is not None and int(seed) in settings.seeds}
        if merged and same_lr(merged[-1][0], lr):
            merged[-1][1].update(by_seed)
        else:
            merged.append((float(lr), by_seed))
    return [TunedLr(lr, by_seed) for lr, by_seed in merged]


def best_of(curve: Iterable[TunedLr]) -> TunedLr | None:
    """The best lr of a curve: the highest mean score, a tie going to the smaller lr; None for an empty curve."""
    return max(curve, key=lambda point: (point.mean, -point.lr), default=None)


def tune(settings: TuningSettings, scores: Mapping[float, Mapping[int, float | None]]) -> Tuning:
    """The tuning from the scores known so far (lr -> tuning seed -> score; None or absent: unknown)."""
    known = tuning_curve(settings, scores)
    complete = tuple(point for point in known if len(point.scores) == len(settings.seeds))
    grid = sorted({round_lr(lr) for lr in settings.lrs})
    unscored = tuple(lr for lr in grid if not any(same_lr(lr, point.lr) for point in complete))
    if unscored:
        return Tuning(complete, None, unscored)
    best = best_of(complete)
    lowest, highest = complete[0], complete[-1]
    if best is lowest and lowest.lr > settings.min_lr * (1 + SAME_LR_TOLERANCE):
        below = round_lr(max(lowest.lr / settings.growth, settings.min_lr))
        if not same_lr(below, lowest.lr):  # a growth too close to 1 for the rounding can go no further
            return Tuning(complete, best, (below,))
    if best is highest and highest.lr < settings.max_lr * (1 - SAME_LR_TOLERANCE):
        above = round_lr(min(highest.lr * settings.growth, settings.max_lr))
        if not same_lr(above, highest.lr):
            return Tuning(complete, best, (above,))
    return Tuning(complete, best, ())


def next_tuning_runs(settings: TuningSettings,
                     scores: Mapping[float, Mapping[int, float | None]]) -> list[tuple[float, int]]:
    """The (lr, tuning seed) runs to do next; empty once the tuning is done. An lr already partly scored keeps the
    value it was run at (so its remaining seeds land beside the others)."""
    tuning = tune(settings, scores)
    known = tuning_curve(settings, scores)
    runs = []
    for lr in tuning.next_lrs:
        point = next((point for point in known if same_lr(point.lr, lr)), TunedLr(lr, {}))
        runs += [(point.lr, seed) for seed in settings.seeds if seed not in point.scores]
    return runs


def run_tuning(settings: TuningSettings, train: Callable[[float, int], float],
               scores: Mapping[float, Mapping[int, float]] | None = None,
               max_runs: int = 1000) -> tuple[Tuning, dict[float, dict[int, float]]]:
    """Run the tuning sequentially with `train(lr, seed) -> score`, from the known `scores` on. Returns the final
    tuning and every score (the known ones and the new ones)."""
    known = {float(lr): {int(seed): float(score) for seed, score in by_seed.items()}
             for lr, by_seed in (scores or {}).items()}
    for _ in range(max_runs):
        pending = next_tuning_runs(settings, known)
        if not pending:
            return tune(settings, known), known
        for lr, seed in pending:
            known.setdefault(lr, {})[seed] = float(train(lr, seed))
    raise RuntimeError(f"lr tuning did not finish within {max_runs} runs: {tune(settings, known).describe()}")
