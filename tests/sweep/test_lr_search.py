"""The search for the largest trainable lr on fake trainers whose instability threshold is known."""
import math
import random

import pytest

from bnexp.lr_search.largest_trainable import (LrSearchSettings, Outcome, classify_run, find_bracket, next_runs,
                                               run_lr_search)

SQRT2 = math.sqrt(2.0)


class ThresholdTrainer:
    """Trains below a per-seed lr threshold; at or above it the run diverges (or collapses, above `collapse_from`)."""

    def __init__(self, threshold_by_seed, collapse_from=math.inf):
        self.threshold_by_seed = threshold_by_seed
        self.collapse_from = collapse_from
        self.calls = []

    def __call__(self, lr, seed):
        self.calls.append((lr, seed))
        if lr < self.threshold_by_seed(seed):
            return Outcome.TRAINS
        return Outcome.COLLAPSED if lr >= self.collapse_from else Outcome.DIVERGED


def dense_grid_runs(low, high, ratio, seeds):
    """Runs a grid with the search's resolution needs to bracket a largest trainable lr anywhere in [low, high]."""
    return (math.floor(math.log(high / low) / math.log(ratio)) + 1) * seeds


@pytest.mark.parametrize("threshold", [0.03, 0.5, 0.63, 0.8, 1.3, 5.0])
def test_search_brackets_a_known_threshold_within_the_ratio(threshold):
    settings = LrSearchSettings(start_lr=0.1, seeds=(0, 1, 2), min_lr=1e-3, max_lr=20)
    trainer = ThresholdTrainer(lambda seed: threshold)
    bracket, outcomes = run_lr_search(settings, trainer)
    assert bracket.done and not bracket.capped and not bracket.floored
    assert bracket.last_trains.lr < threshold <= bracket.first_fails.lr
    assert bracket.first_fails.lr / bracket.last_trains.lr <= SQRT2 * 1.001
    assert bracket.largest_trainable_lr == bracket.last_trains.lr
    assert bracket.runs == len(trainer.calls) == sum(len(by_seed) for by_seed in outcomes.values())
    # a failing lr stops at its first seed; each training lr needs every seed
    assert all(len(outcomes[lr]) == 1 for lr in outcomes if outcomes[lr][0] != Outcome.TRAINS)
    # far fewer runs than a grid of the same resolution over the lrs the search may explore
    assert bracket.runs < dense_grid_runs(1e-3, 20, SQRT2, 3) / 2


def test_search_path_doubles_then_bisects_in_log_space():
    trainer = ThresholdTrainer(lambda seed: 0.7, collapse_from=0.7)
    bracket, _ = run_lr_search(LrSearchSettings(start_lr=0.1, seeds=(0, 1)), trainer)
    lrs = list(dict.fromkeys(lr for lr, _ in trainer.calls))
    assert lrs == [0.1, 0.2, 0.4, 0.8, 0.5657]  # 0.5657 = sqrt(0.4 * 0.8), rounded to 4 digits
    assert len(trainer.calls) == 2 + 2 + 2 + 1 + 2
    assert bracket.describe() == "largest trainable lr 0.5657 (0.5657 trains, 0.8 collapses)"


def test_ratio_is_configurable():
    bracket, _ = run_lr_search(LrSearchSettings(start_lr=0.1, ratio=1.1), ThresholdTrainer(lambda seed: 0.7))
    assert bracket.last_trains.lr < 0.7 <= bracket.first_fails.lr
    assert bracket.first_fails.lr / bracket.last_trains.lr <= 1.1 * 1.001


def test_first_lr_failing_halves_downward():
    trainer = ThresholdTrainer(lambda seed: 0.03)
    bracket, _ = run_lr_search(LrSearchSettings(start_lr=0.1), trainer)
    assert [lr for lr, _ in trainer.calls][:3] == [0.1, 0.05, 0.025]
    assert bracket.last_trains.lr == 0.025 and bracket.first_fails.lr == pytest.approx(0.03536)
    assert bracket.describe() == "largest trainable lr 0.025 (0.025 trains, 0.03536 diverges)"


def test_floor_and_cap_end_the_search_and_say_so():
    trainer = ThresholdTrainer(lambda seed: 1e-5)
    floored, _ = run_lr_search(LrSearchSettings(start_lr=0.1, min_lr=0.01), trainer)
    assert [lr for lr, _ in trainer.calls] == [0.1, 0.05, 0.025, 0.0125, 0.01]  # the floor itself is tried
    assert floored.done and floored.floored and floored.largest_trainable_lr is None
    assert floored.describe() == "no trainable lr down to 0.01 (0.01 diverges)"

    trainer = ThresholdTrainer(lambda seed: math.inf)
    capped, _ = run_lr_search(LrSearchSettings(start_lr=0.1, max_lr=1.0), trainer)
    assert [lr for lr, _ in trainer.calls] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert capped.done and capped.capped and capped.largest_trainable_lr == 1.0
    assert capped.describe() == "largest trainable lr >= 1 (trains at every lr tried, up to the cap 1)"


def test_seed_dependent_threshold_brackets_the_least_stable_seed():
    thresholds = {0: 0.9, 1: 0.45, 2: 0.7}
    trainer = ThresholdTrainer(thresholds.__getitem__)
    bracket, outcomes = run_lr_search(LrSearchSettings(start_lr=0.1, seeds=(0, 1, 2)), trainer)
    assert bracket.last_trains.lr < 0.45 <= bracket.first_fails.lr
    # the failing lr was decided by the first seed that failed there, not by running all three
    assert Outcome.DIVERGED in outcomes[bracket.first_fails.lr].values()


@pytest.mark.parametrize("noise_seed", range(8))
def test_noisy_outcomes_give_a_bracket_the_runs_support(noise_seed):
    """Near the threshold each run's fate is random; the bracket still agrees with what the runs showed."""
    noise = random.Random(noise_seed)

    def noisy(lr, seed):
        threshold = 0.5 * math.exp(noise.gauss(0, 0.3))  # each run draws its own threshold
        return Outcome.TRAINS if lr < threshold else Outcome.COLLAPSED

    bracket, outcomes = run_lr_search(LrSearchSettings(start_lr=0.05, seeds=(0, 1, 2), min_lr=1e-3), noisy)
    assert bracket.done
    assert all(outcome == Outcome.TRAINS for outcome in outcomes[bracket.last_trains.lr].values())
    assert len(outcomes[bracket.last_trains.lr]) == 3
    assert Outcome.COLLAPSED in outcomes[bracket.first_fails.lr].values()
    assert bracket.last_trains.lr < bracket.first_fails.lr <= bracket.last_trains.lr * SQRT2 * 1.001
    assert 0.05 < bracket.first_fails.lr < 5  # within ±4 sigma of the median threshold 0.5 (with margin)


def test_search_resumes_from_outcomes_read_back_from_run_dirs():
    settings = LrSearchSettings(start_lr=0.1, seeds=(0, 1, 2))
    full_trainer = ThresholdTrainer(lambda seed: 0.63)
    full_bracket, full_outcomes = run_lr_search(settings, full_trainer)

    for stop_after in range(1, len(full_trainer.calls)):
        # a killed sweep: the first runs finished, and their configs hold the lr as text (6 significant digits)
        partial = {}
        for lr, seed in full_trainer.calls[:stop_after]:
            partial.setdefault(float(f"{lr:.6g}"), {})[str(seed) if seed % 2 else seed] = full_outcomes[lr][seed].value
        resumed_trainer = ThresholdTrainer(lambda seed: 0.63)
        bracket, _ = run_lr_search(settings, resumed_trainer, outcomes=partial)
        assert resumed_trainer.calls == full_trainer.calls[stop_after:]
        assert bracket.describe() == full_bracket.describe() and bracket.runs == full_bracket.runs


def test_next_runs_lists_all_missing_seeds_for_parallel_workers():
    settings = LrSearchSettings(start_lr=0.1, seeds=(0, 1, 2))
    assert next_runs(settings, {}) == [(0.1, 0), (0.1, 1), (0.1, 2)]
    assert next_runs(settings, {}, one_at_a_time=True) == [(0.1, 0)]
    assert next_runs(settings, {0.1: {1: "trains"}}) == [(0.1, 0), (0.1, 2)]
    assert next_runs(settings, {0.1: {0: "trains", 1: "trains", 2: "trains"}}) == [(0.2, 0), (0.2, 1), (0.2, 2)]
    # an lr with one failing seed is decided; its other seeds are not needed
    assert next_runs(settings, {0.1: {0: "trains", 1: "trains", 2: "trains"}, 0.2: {1: "diverged"}}) == \
        [(0.1414, 0), (0.1414, 1), (0.1414, 2)]
    done = {0.1: {s: "trains" for s in range(3)}, 0.1414: {s: "trains" for s in range(3)}, 0.2: {0: "collapsed"}}
    assert next_runs(settings, done) == [] and find_bracket(settings, done).done


def test_known_grid_runs_shorten_the_search_and_non_monotone_lrs_are_reported():
    settings = LrSearchSettings(start_lr=0.1)
    grid = {0.1: {0: "trains"}, 0.4: {0: "trains"}, 1.6: {0: "diverged"}, 0.8: {0: "failed"}, 3.2: {0: "trains"},
            0.2: {5: "diverged"}}  # seed 5 is not one of the search's seeds: ignored
    bracket = find_bracket(settings, grid)
    assert (bracket.last_trains.lr, bracket.first_fails.lr, bracket.next_lr) == (0.4, 0.8, 0.5657)
    assert bracket.non_monotone == (3.2,)
    assert bracket.describe() == ("largest trainable lr 0.4 (0.4 trains, 0.8 fails); search not finished, next lr "
                                  "0.5657; "
                                  "not monotone: 3.2 trained above the first lr that failed")
    mixed = find_bracket(LrSearchSettings(start_lr=0.1, seeds=(0, 1)),
                         {0.1: {0: "trains", 1: "trains"}, 0.2: {0: "collapsed", 1: "diverged"}})
    assert mixed.first_fails.describe() == "0.2 diverges/collapses"
    assert find_bracket(settings, {}).describe() == "no lr decided yet; search not finished, next lr 0.1"


@pytest.mark.parametrize("summary, outcome", [
    (dict(status="finished", final_test_acc=0.55, last_grad_norm=1.2), Outcome.TRAINS),
    (dict(status="finished", final_test_acc=0.55), Outcome.TRAINS),
    (dict(status="finished", final_test_acc=0.101, last_grad_norm=0.3), Outcome.COLLAPSED),  # at chance
    (dict(status="finished", final_test_acc=0.35, last_grad_norm=0.0), Outcome.COLLAPSED),   # gradient died
    (dict(status="finished", final_test_acc=None), Outcome.COLLAPSED),
    (dict(status="diverged", final_test_acc=None), Outcome.DIVERGED),
    (dict(status="failed", final_test_acc=None), Outcome.FAILED),
    (dict(status="running", final_test_acc=None), None),
    (dict(status=None, final_test_acc=None), None),
])
def test_classify_run(summary, outcome):
    assert classify_run(**summary) == outcome


def test_classify_run_min_acc_is_the_training_bar():
    assert classify_run("finished", 0.25, min_acc=0.3) == Outcome.COLLAPSED
    assert classify_run("finished", 0.25, min_acc=0.2) == Outcome.TRAINS


@pytest.mark.parametrize("kwargs, message", [
    (dict(start_lr=0.1, seeds=()), "at least one seed"),
    (dict(start_lr=0.1, seeds=(0, 0)), "repeat a seed"),
    (dict(start_lr=0.0), "0 < min_lr <= start_lr <= max_lr"),
    (dict(start_lr=10.0, max_lr=1.0), "0 < min_lr <= start_lr <= max_lr"),
    (dict(start_lr=0.1, ratio=1.0), "ratio=1.0 must be above 1"),
    (dict(start_lr=0.1, growth=0.5), "growth=0.5 must be above 1"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LrSearchSettings(**kwargs)
