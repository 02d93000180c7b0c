"""The best-lr tuning (bnexp/lr_search/best_lr.py) on fake trainers whose accuracy peaks at a known lr: the grid
is extended down and up until the best lr is interior, stops at a bound, treats diverged runs as the worst, breaks
ties toward the smaller lr, and resumes from any subset of its scores."""
from __future__ import annotations

import math

import pytest

from bnexp.lr_search.best_lr import (LOWER, NO_RESULT_SCORE, UPPER, TuningSettings, next_tuning_runs, run_score,
                                     run_tuning, tune)


def peaked(peak_lr: float, diverges_from: float = math.inf):
    """A trainer whose accuracy falls by 0.1 per doubling away from `peak_lr` (plus a little per seed), and that
    diverges (scores 0) from `diverges_from` on."""
    def train(lr: float, seed: int) -> float:
        if lr >= diverges_from:
            return NO_RESULT_SCORE
        return 0.8 - 0.1 * abs(math.log2(lr / peak_lr)) + 0.001 * seed
    return train


GRID = (0.1, 0.2, 0.4)


def test_a_best_lr_inside_the_grid_needs_only_the_grid():
    settings = TuningSettings(lrs=GRID, seeds=(100, 101))
    tuning, scores = run_tuning(settings, peaked(0.25))
    assert tuning.done and tuning.interior and tuning.bound is None
    assert tuning.best.lr == 0.2 and sorted(scores) == [0.1, 0.2, 0.4]
    assert tuning.best.mean == pytest.approx(0.8 - 0.1 * abs(math.log2(0.2 / 0.25)) + 0.001 * 100.5)
    assert tuning.describe().startswith("best lr 0.2, interior (0.1: ")


def test_the_grid_is_extended_down_while_the_best_is_its_lowest_lr():
    settings = TuningSettings(lrs=GRID, seeds=(100,))
    tuning, scores = run_tuning(settings, peaked(0.02))
    # 0.1 is best of the grid -> 0.05 -> 0.025 -> 0.0125, and 0.025 is then interior
    assert sorted(scores) == [0.0125, 0.025, 0.05, 0.1, 0.2, 0.4]
    assert tuning.best.lr == 0.025 and tuning.interior


def test_the_grid_is_extended_up_while_the_best_is_its_highest_lr():
    settings = TuningSettings(lrs=GRID, seeds=(100,))
    tuning, scores = run_tuning(settings, peaked(3.0))
    assert sorted(scores) == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4]
    assert tuning.best.lr == 3.2 and tuning.interior


def test_the_extension_stops_at_a_bound_and_says_so():
    up, up_scores = run_tuning(TuningSettings(lrs=GRID, seeds=(100,), max_lr=1.0), peaked(50.0))
    assert sorted(up_scores) == [0.1, 0.2, 0.4, 0.8, 1.0]  # 0.8 x 2 is clipped to the bound
    assert up.done and not up.interior and up.bound == UPPER and up.best.lr == 1.0
    assert up.describe().startswith("best lr 1, at the upper bound (")
    down, down_scores = run_tuning(TuningSettings(lrs=GRID, seeds=(100,), min_lr=0.02), peaked(0.001))
    assert sorted(down_scores) == [0.02, 0.025, 0.05, 0.1, 0.2, 0.4]
    assert down.bound == LOWER and down.best.lr == 0.02
    # a grid that starts at the bound goes no lower
    at_floor, floor_scores = run_tuning(TuningSettings(lrs=GRID, seeds=(100,), min_lr=0.1), peaked(0.001))
    assert sorted(floor_scores) == list(GRID) and at_floor.bound == LOWER


def test_a_diverged_run_scores_below_any_finished_one():
    assert run_score("diverged", None) == NO_RESULT_SCORE == run_score("failed", 0.9) == 0.0
    assert run_score("finished", 0.05) == 0.05 and run_score("finished", float("nan")) == 0.0
    assert run_score("running", None) is None and run_score("missing", None) is None
    # the accuracy would keep rising, but diverging from 0.5 on makes 0.4 the best: 0.8 is tried and loses
    tuning, scores = run_tuning(TuningSettings(lrs=GRID, seeds=(100,)), peaked(10.0, diverges_from=0.5))
    assert sorted(scores) == [0.1, 0.2, 0.4, 0.8] and scores[0.8] == {100: 0.0}
    assert tuning.best.lr == 0.4 and tuning.interior
    # one diverged seed of two halves an lr's score
    half = tune(TuningSettings(lrs=(0.1, 0.2, 0.4), seeds=(1, 2)),
                {0.1: {1: 0.5, 2: 0.5}, 0.2: {1: 0.9, 2: 0.0}, 0.4: {1: 0.3, 2: 0.3}})
    assert half.best.lr == 0.1 and [point.mean for point in half.curve] == [0.5, 0.45, 0.3]


def test_when_every_lr_diverges_the_tie_sends_the_tuning_down_until_one_trains():
    tuning, scores = run_tuning(TuningSettings(lrs=GRID, seeds=(100,)), peaked(0.03, diverges_from=0.04))
    # every grid lr scores 0: the tie goes to 0.1, the lowest; 0.05 diverges too; 0.025 trains, 0.0125 is lower
    assert sorted(scores) == [0.0125, 0.025, 0.05, 0.1, 0.2, 0.4]
    assert tuning.best.lr == 0.025 and tuning.interior


def test_a_tie_goes_to_the_smaller_lr():
    tuning = tune(TuningSettings(lrs=(0.1, 0.2, 0.4, 0.8), seeds=(0,)),
                  {0.1: {0: 0.5}, 0.2: {0: 0.6}, 0.4: {0: 0.6}, 0.8: {0: 0.4}})
    assert tuning.best.lr == 0.2 and tuning.done and tuning.interior


def test_a_single_lr_grid_is_extended_both_ways():
    tuning, scores = run_tuning(TuningSettings(lrs=(0.2,), seeds=(0,)), peaked(0.2))
    assert sorted(scores) == [0.1, 0.2, 0.4] and tuning.best.lr == 0.2 and tuning.interior


def test_runs_are_asked_for_per_missing_seed_and_the_grid_comes_first():
    settings = TuningSettings(lrs=GRID, seeds=(100, 101))
    assert next_tuning_runs(settings, {}) == [(lr, seed) for lr in GRID for seed in (100, 101)]
    # a partly scored grid: only its missing seeds, and no extension before the grid is complete
    partial = {0.1: {100: 0.9, 101: 0.9}, 0.2: {100: 0.5}}
    assert next_tuning_runs(settings, partial) == [(0.2, 101), (0.4, 100), (0.4, 101)]
    assert tune(settings, partial).best is None
    # scores of other seeds do not count
    assert next_tuning_runs(settings, {0.1: {7: 0.9}}) == next_tuning_runs(settings, {})


def test_known_lrs_outside_the_grid_count_and_an_extension_lr_keeps_its_known_value():
    settings = TuningSettings(lrs=GRID, seeds=(100, 101))
    grid_scores = {lr: {100: 0.5, 101: 0.5} for lr in GRID}
    grid_scores[0.1] = {100: 0.7, 101: 0.7}
    # an lr below the grid scored for both seeds already: it is on the curve, and beats 0.1
    with_lower = {**grid_scores, 0.05: {100: 0.6, 101: 0.6}}
    tuning = tune(settings, with_lower)
    assert [point.lr for point in tuning.curve] == [0.05, 0.1, 0.2, 0.4] and tuning.done and tuning.best.lr == 0.1
    # an extension lr known for one seed at a value within rounding: its other seed runs at that same value
    partly = {**grid_scores, 0.0500000001: {100: 0.6}}
    assert next_tuning_runs(settings, partly) == [(0.0500000001, 101)]


def test_resuming_from_any_subset_of_the_scores_gives_the_same_tuning():
    settings = TuningSettings(lrs=GRID, seeds=(100, 101))
    train = peaked(0.02)
    full, full_scores = run_tuning(settings, train)
    runs = [(lr, seed) for lr, by_seed in full_scores.items() for seed in by_seed]
    for keep in range(0, len(runs), 3):
        partial: dict[float, dict[int, float]] = {}
        for lr, seed in runs[:keep]:
            partial.setdefault(lr, {})[seed] = full_scores[lr][seed]
        tuning, scores = run_tuning(settings, train, scores=partial)
        assert tuning.best.lr == full.best.lr and scores == full_scores


@pytest.mark.parametrize("kwargs", [dict(lrs=(), seeds=(0,)), dict(lrs=(0.1,), seeds=()),
                                    dict(lrs=(0.1,), seeds=(0, 0)), dict(lrs=(0.1,), seeds=(0,), growth=1.0),
                                    dict(lrs=(0.1,), seeds=(0,), min_lr=0.2),
                                    dict(lrs=(0.1, 5.0), seeds=(0,), max_lr=1.0)])
def test_settings_a_tuning_cannot_use_are_refused(kwargs):
    with pytest.raises(ValueError, match="lr tuning"):
        TuningSettings(**kwargs)
