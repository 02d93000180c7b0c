"""The trend of final accuracy with group size at each lr: Kendall's τ-b over all runs, with its p-value.

Pairwise comparisons on 3 seeds say little each; the ordering by group size is one question over every run at an
lr: does accuracy fall as each statistic pools more channels? The group size of a run is `channels_per_statistic`
(bnexp/report/trainable_lr.py), ordered per-channel (1) < 2 < 4 < ... < all (one statistic per layer). Left out:
no normalisation (not a group size), a fixed group count above 1 (its group size differs between layers), variants
that change something besides the group size (one gamma/beta per group, as shared_bn; a pooled mean or variance
alone; gamma frozen: the interventions), so that the order compares like with like, and diverged runs (they have no
final accuracy; their number is given). τ-b counts tied pairs correctly, which matter
here (every seed of a variant shares its group size). The p-value is scipy.stats.kendalltau's, two-sided: exact
without ties for small samples, otherwise the normal approximation with the tie correction. Holm's correction
runs over the lrs tested.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from bnexp.config.keys import config_value
from bnexp.report.intervals import holm_adjusted
from bnexp.report.run_records import RunRecord, group_by, variant_sort_key
from bnexp.report.trainable_lr import ALL_CHANNELS, channels_per_statistic
from bnexp.runs.files import as_float


def group_size_rank(size: int | str | None) -> float | None:
    """Where a group size sits in the trend's order: its channel count, `all` after every count; None for a size
    that has no place in it (no norm, or a fixed group count)."""
    if size == ALL_CHANNELS:
        return math.inf
    if isinstance(size, int) and not isinstance(size, bool):
        return float(size)
    return None


@dataclass
class GroupSizeTrend:
    """Kendall's τ-b between group size and final accuracy over the finished runs at one model x lr."""
    model: str
    lr: float
    group_sizes: list[int | str]       # the sizes present, in order
    variants: list[str]                # the variants that took part
    n_runs: int                        # finished runs in the test
    n_diverged: int                    # diverged runs of those variants at this lr, left out (no accuracy)
    left_out: list[str]                # variants without a place in the order (no norm, fixed group count)
    tau: float | None                  # None when the accuracies (or sizes) do not vary
    p_value: float | None
    p_holm: float | None = None


def only_the_group_size_differs(config: dict) -> bool:
    """Whether a run's norm layers differ from per-channel BatchNorm in their group size alone: gamma/beta per
    channel, mean and variance pooled together, gamma learned."""
    return (config_value(config, "variant.affine_per_channel", True) is not False
            and config_value(config, "variant.pooled", "both") == "both"
            and config_value(config, "variant.freeze_weight", False) is not True)


def kendall_tau_b(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    """Kendall's τ-b of the pairs (x, y) and its two-sided p-value; (None, None) when x or y does not vary."""
    result = stats.kendalltau(x, y, variant="b", alternative="two-sided")
    tau, p_value = float(result.statistic), float(result.pvalue)
    return (tau, p_value) if math.isfinite(tau) and math.isfinite(p_value) else (None, None)


def trend_at(model: str, lr: float, runs: list[RunRecord]) -> GroupSizeTrend | None:
    """The trend among `runs` (one model and lr); None when fewer than two group sizes have a finished run."""
    size_of = {run.variant: channels_per_statistic(run.config) if only_the_group_size_differs(run.config) else None
               for run in runs}
    placed = [run for run in runs if group_size_rank(size_of[run.variant]) is not None]
    points = [(size_of[run.variant], as_float(run.summary.get("final_test_acc")))
              for run in placed if run.status == "finished"]
    points = [(size, accuracy) for size, accuracy in points if accuracy is not None]
    present = sorted({size for size, _ in points}, key=group_size_rank)
    if len(present) < 2 or len(points) < 3:
        return None
    # τ needs only the order: each run's group size as its position among the sizes present
    tau, p_value = kendall_tau_b([present.index(size) for size, _ in points], [accuracy for _, accuracy in points])
    return GroupSizeTrend(
        model, lr, present, sorted({run.variant for run in placed}, key=variant_sort_key), len(points),
        sum(run.status == "diverged" for run in placed),
        sorted({run.variant for run in runs} - {run.variant for run in placed}, key=variant_sort_key),
        tau, p_value)


def group_size_trends(runs: list[RunRecord]) -> list[GroupSizeTrend]:
    """Per model and lr with at least two group sizes, the trend; p-values Holm-adjusted over all of them."""
    return with_holm([trend for (model, lr), members in sorted(group_by(runs, lambda run: (run.model, run.lr)).items())
                      if (trend := trend_at(model, lr, members)) is not None])


def with_holm(trends: list[GroupSizeTrend]) -> list[GroupSizeTrend]:
    """The trends, each tested one given its p-value Holm-adjusted over all that were tested."""
    tested = [trend for trend in trends if trend.p_value is not None]
    for trend, adjusted in zip(tested, holm_adjusted([trend.p_value for trend in tested])):
        trend.p_holm = adjusted
    return trends
