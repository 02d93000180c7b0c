"""The largest trainable lr: the largest lr at which every seed trains, found with few runs and given with its
bracket. (Not the *edge of stability* of Cohen et al. 2021, the sharpness reaching the optimiser's threshold 2/η:
bnexp measures that in bnexp/instrument/sharpness.py.)

The search doubles the lr from a start until an lr does not train, then bisects in log space until the last lr
that trains and the first that does not are within `ratio` (√2 by default) of each other. When the start lr
already fails it halves downward instead, down to a floor; doubling stops at a cap.

An lr *trains* when every seed's run trained: finished, with test accuracy at least `min_acc` and a gradient that
did not die. A run that diverged, collapsed (accuracy at chance, or a last gradient norm of exactly 0) or failed
decides that the lr does not train, so the remaining seeds of that lr need not run.

Everything here is a pure function of the outcomes known so far: a sweep rebuilds the search from its finished run
dirs and asks for the next runs, so a killed search resumes where it stopped. Candidate lrs are rounded as
bnexp/lr_search/lrs.py says, so they survive being written into a config and read back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable, Mapping

from bnexp.lr_search.lrs import SAME_LR_TOLERANCE, format_lr, round_lr, same_lr

# the stopping ratio is met up to this fraction, so that rounded candidate lrs cannot force one more bisection
RATIO_SLACK = 1e-3


class Outcome(str, Enum):
    """How one run ended, as far as the largest trainable lr is concerned."""
    TRAINS = "trains"
    DIVERGED = "diverged"
    COLLAPSED = "collapsed"
    FAILED = "failed"


# how a bracket names an lr that did not train: "0.8 collapses"
_OUTCOME_VERBS = {Outcome.DIVERGED: "diverges", Outcome.COLLAPSED: "collapses", Outcome.FAILED: "fails"}


def classify_run(status: str | None, final_test_acc: float | None, last_grad_norm: float | None = None,
                 min_acc: float = 0.2) -> Outcome | None:
    """The outcome of one run from its summary, or None while it is unknown (missing, still running).

    `min_acc` is the accuracy that counts as trained (0.2 is twice chance on CIFAR-10's 10 classes);
    `last_grad_norm`, when given, marks a run whose gradient died (exactly 0) as collapsed whatever its accuracy.
    """
    if status != "finished":  # a diverged or failed run's status is its outcome
        return Outcome(status) if status in (Outcome.DIVERGED, Outcome.FAILED) else None
    trained = final_test_acc is not None and math.isfinite(final_test_acc) and final_test_acc >= min_acc
    return Outcome.TRAINS if trained and last_grad_norm != 0.0 else Outcome.COLLAPSED


@dataclass(frozen=True)
class LrSearchSettings:
    start_lr: float
    seeds: tuple[int, ...] = (0,)
    ratio: float = math.sqrt(2.0)   # stop when first-fails / last-trains is at most this
    growth: float = 2.0             # the factor of each step up (or down, when the start lr fails)
    min_lr: float = 1e-4            # the floor when searching downward
    max_lr: float = 100.0           # the cap when searching upward

    def __post_init__(self):
        # The guard for a Python caller: a sweep's lr_search_* keys meet these rules in its schema first
        # (bnexp/config/sweep_schema.py), where the messages name the sweep's keys.
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds:
            raise ValueError("lr search needs at least one seed, e.g. seeds=[0, 1, 2]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"lr search seeds {list(self.seeds)} repeat a seed; list each once")
        if not 0 < self.min_lr <= self.start_lr <= self.max_lr:
            raise ValueError(f"lr search needs 0 < min_lr <= start_lr <= max_lr, got min_lr={self.min_lr}, "
                             f"start_lr={self.start_lr}, max_lr={self.max_lr}")
        if not self.ratio > 1:
            raise ValueError(f"lr search ratio={self.ratio} must be above 1 (e.g. 1.414 for √2)")
        if not self.growth > 1:
            raise ValueError(f"lr search growth={self.growth} must be above 1 (e.g. 2 to double)")


@dataclass(frozen=True)
class LrVerdict:
    """What the known runs say about one lr: trains (every seed trained), fails (some seed did not) or open."""
    lr: float
    outcomes: Mapping[int, Outcome]
    seeds: tuple[int, ...]

    @property
    def failing(self) -> set[Outcome]:
        return set(self.outcomes.values()) - {Outcome.TRAINS}

    @property
    def fails(self) -> bool:
        return bool(self.failing)

    @property
    def trains(self) -> bool:
        return not self.fails and not self.missing_seeds

    @property
    def missing_seeds(self) -> list[int]:
        return [seed for seed in self.seeds if seed not in self.outcomes]

    def describe(self) -> str:
        """'0.8 collapses', '0.8 diverges/collapses' (seeds disagree on how), '0.4 trains'."""
        if self.trains:
            return f"{format_lr(self.lr)} trains"
        verbs = [_OUTCOME_VERBS[outcome] for outcome in Outcome if outcome in self.failing]
        return f"{format_lr(self.lr)} {'/'.join(verbs) if verbs else 'is open'}"


def lr_verdicts(outcomes: Mapping[float, Mapping[int, Outcome | str]], seeds: Iterable[int]) -> list[LrVerdict]:
    """One verdict per distinct lr (lrs within SAME_LR_TOLERANCE merged), sorted by lr.

    Outcomes of seeds outside `seeds` are ignored: the search decides on its own seeds only.
    """
    seeds = tuple(seeds)
    merged: list[tuple[float, dict[int, Outcome]]] = []
    for lr in sorted(outcomes):
        by_seed = {int(seed): Outcome(outcome) for seed, outcome in outcomes[lr].items()
                   if outcome is not None and int(seed) in seeds}
        if merged and same_lr(merged[-1][0], lr):
            merged[-1][1].update(by_seed)
        else:
            merged.append((float(lr), by_seed))
    return [LrVerdict(lr, by_seed, seeds) for lr, by_seed in merged]


@dataclass(frozen=True)
class TrainableLrBracket:
    """Where the search stands: the last lr that trains and the first that does not, and whether it is done."""
    last_trains: LrVerdict | None
    first_fails: LrVerdict | None
    next_lr: float | None              # None when the search is done
    capped: bool = False               # every lr up to max_lr trains
    floored: bool = False              # no lr down to min_lr trains
    non_monotone: tuple[float, ...] = field(default=())  # lrs above first_fails that trained anyway
    runs: int = 0                      # runs with a known outcome

    @property
    def done(self) -> bool:
        return self.next_lr is None

    @property
    def largest_trainable_lr(self) -> float | None:
        return self.last_trains.lr if self.last_trains else None

    def describe(self) -> str:
        """'largest trainable lr 0.4 (0.4 trains, 0.8 collapses)', or what is known so far."""
        if self.capped:
            text = (f"largest trainable lr >= {format_lr(self.last_trains.lr)} (trains at every lr tried, up to "
                    f"the cap {format_lr(self.last_trains.lr)})")
        elif self.floored:
            text = f"no trainable lr down to {format_lr(self.first_fails.lr)} ({self.first_fails.describe()})"
        elif self.last_trains and self.first_fails:
            text = (f"largest trainable lr {format_lr(self.last_trains.lr)} "
                    f"({self.last_trains.describe()}, {self.first_fails.describe()})")
        elif self.last_trains:
            text = f"largest trainable lr >= {format_lr(self.last_trains.lr)} ({self.last_trains.describe()})"
        elif self.first_fails:
            text = f"largest trainable lr < {format_lr(self.first_fails.lr)} ({self.first_fails.describe()})"
        else:
            text = "no lr decided yet"
        if not self.done:
            text += f"; search not finished, next lr {format_lr(self.next_lr)}"
        if self.non_monotone:
            above = ", ".join(format_lr(lr) for lr in self.non_monotone)
            text += f"; not monotone: {above} trained above the first lr that failed"
        return text


def find_bracket(settings: LrSearchSettings,
                 outcomes: Mapping[float, Mapping[int, Outcome | str]]) -> TrainableLrBracket:
    """The bracket and the next lr to try, from the outcomes known so far (lr -> seed -> outcome).

    Every known lr is used, also ones the search did not ask for (a dense grid's runs shorten the search).
    """
    verdicts = lr_verdicts(outcomes, settings.seeds)
    runs = sum(len(verdict.outcomes) for verdict in verdicts)
    first_fails = next((verdict for verdict in verdicts if verdict.fails), None)
    lowest_failing_lr = first_fails.lr if first_fails else math.inf
    last_trains = next((verdict for verdict in reversed(verdicts)
                        if verdict.trains and verdict.lr < lowest_failing_lr), None)
    non_monotone = tuple(verdict.lr for verdict in verdicts if verdict.trains and verdict.lr > lowest_failing_lr)

    def bracket(next_lr: float | None, **flags) -> TrainableLrBracket:
        return TrainableLrBracket(last_trains, first_fails, next_lr, non_monotone=non_monotone, runs=runs, **flags)

    if last_trains is None and first_fails is None:
        return bracket(round_lr(settings.start_lr))
    if first_fails is None:  # going up
        if last_trains.lr >= settings.max_lr * (1 - SAME_LR_TOLERANCE):
            return bracket(None, capped=True)
        return bracket(round_lr(min(last_trains.lr * settings.growth, settings.max_lr)))
    if last_trains is None:  # the lowest lr tried fails: going down
        if first_fails.lr <= settings.min_lr * (1 + SAME_LR_TOLERANCE):
            return bracket(None, floored=True)
        return bracket(round_lr(max(first_fails.lr / settings.growth, settings.min_lr)))
    if first_fails.lr / last_trains.lr <= settings.ratio * (1 + RATIO_SLACK):
        return bracket(None)
    return bracket(round_lr(math.sqrt(first_fails.lr * last_trains.lr)))


def next_runs(settings: LrSearchSettings, outcomes: Mapping[float, Mapping[int, Outcome | str]],
              one_at_a_time: bool = False) -> list[tuple[float, int]]:
    """The (lr, seed) runs to do next; empty when the search is done.

    They are the seeds of the next lr with no known outcome. With `one_at_a_time`, only the first of them: a
    sequential sweep then stops at an lr's first failing seed instead of running every seed.
    """
    bracket = find_bracket(settings, outcomes)
    if bracket.done:
        return []
    # the bracket only asks for an lr no verdict has decided, so this lr has seeds left to run
    known = next((verdict for verdict in lr_verdicts(outcomes, settings.seeds)
                  if same_lr(verdict.lr, bracket.next_lr)), LrVerdict(bracket.next_lr, {}, settings.seeds))
    runs = [(known.lr, seed) for seed in known.missing_seeds]
    return runs[:1] if one_at_a_time else runs


def run_lr_search(settings: LrSearchSettings, train: Callable[[float, int], Outcome | str],
                    outcomes: Mapping[float, Mapping[int, Outcome | str]] | None = None,
                    max_runs: int = 1000) -> tuple[TrainableLrBracket, dict[float, dict[int, Outcome]]]:
    """Run the search sequentially with `train(lr, seed) -> outcome`, from the known `outcomes` on.

    Returns the final bracket and every outcome (the known ones and the new ones).
    """
    known: dict[float, dict[int, Outcome]] = {float(lr): {int(s): Outcome(o) for s, o in by_seed.items()}
                                              for lr, by_seed in (outcomes or {}).items()}
    for _ in range(max_runs):
        pending = next_runs(settings, known, one_at_a_time=True)
        if not pending:
            return find_bracket(settings, known), known
        lr, seed = pending[0]
        known.setdefault(lr, {})[seed] = Outcome(train(lr, seed))
    raise RuntimeError(f"lr search did not finish within {max_runs} runs: {find_bracket(settings, known).describe()}")
