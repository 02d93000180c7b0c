"""The largest trainable lr per variant (the largest lr at which every seed trains, with its bracket), from
whatever runs exist: a dense grid, a largest_lr search, or both; the bracket is bnexp/lr_search/largest_trainable.py's,
as the sweep's largest_lr mode computes it. (Not the edge of stability, which is sharpness reaching the optimiser's
threshold: bnexp/report/sharpness.py.) Also the channels each statistic pools (`channels_per_statistic`), the axis
the brackets are plotted against."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from bnexp.lr_search import largest_trainable
from bnexp.config.keys import config_value
from bnexp.report.aggregation import count_range
from bnexp.report.run_records import RunRecord, group_by, variant_sort_key
from bnexp.runs.files import as_float
from bnexp.runs.outcome import DEFAULT_MIN_ACC

ALL_CHANNELS = "all"
NO_NORM = "no norm"


def run_outcome(run: RunRecord, min_acc: float = DEFAULT_MIN_ACC) -> largest_trainable.Outcome | None:
    """How the run ended for the largest trainable lr: trains, diverged, collapsed, failed; None while unknown.
    A finished run's last `grad_norm/global` of exactly 0 (the network died) makes it collapsed."""
    last_grad_norm = run.grad_norms.last if run.status == "finished" else None
    final_acc = as_float(run.summary.get("final_test_acc"))
    return largest_trainable.classify_run(run.status, final_acc, last_grad_norm, min_acc)


def channels_per_statistic(config: dict[str, Any]) -> int | str | None:
    """How many channels one statistic pools, from a run's config: 1 (per-channel), the group size
    (`variant.channels_per_group`), 'all' (one statistic per layer: shared_bn, or stat_groups=1), 'no norm';
    None for a fixed group count above 1, whose group size differs between layers of different widths."""
    norm = config_value(config, "variant.norm")
    group_size = config_value(config, "variant.channels_per_group")
    stat_groups = config_value(config, "variant.stat_groups")
    if norm == "none":
        return NO_NORM
    if norm == "per_channel":
        return 1
    if norm == "shared" or (norm == "grouped" and group_size is None and stat_groups == 1):
        return ALL_CHANNELS
    if norm == "grouped" and group_size is not None:
        return int(group_size)
    return None


@dataclass
class LargestTrainableLr:
    """One variant's largest trainable lr: the last lr where every seed trained and the first where one did
    not."""
    model: str
    variant: str
    bracket: largest_trainable.TrainableLrBracket
    channels_per_statistic: int | str | None
    lrs_tried: list[float]
    seeds_per_lr: str = ""   # how many seeds each lr tried was run with: "3", or "1-3" when they differ

    @property
    def largest_trainable_lr(self) -> float | None:
        return self.bracket.largest_trainable_lr

    @property
    def first_failing_lr(self) -> float | None:
        return self.bracket.first_fails.lr if self.bracket.first_fails else None


def largest_trainable_lrs(runs: list[RunRecord], min_acc: float = DEFAULT_MIN_ACC) -> list[LargestTrainableLr]:
    """Per model x variant, the bracket of its largest trainable lr from its runs, however they were laid out.

    Each lr is decided on every seed the variant was run with: it trains when each of them trained, fails when
    one diverged, collapsed (below `min_acc`, or a last grad norm of exactly 0) or failed; otherwise it is open.
    The lrs tried bound the bracket: training at the largest says 'up to the cap', failing at the smallest
    'no trainable lr down to' it. No bisection is asked for here (the ratio is unbounded): the bracket is what the
    runs show, as wide as their lr spacing.
    """
    found = []
    seeded = [run for run in runs if run.seed is not None]
    for (model, variant), members in group_by(seeded, lambda run: (run.model, run.variant)).items():
        outcomes: dict[float, dict[int, largest_trainable.Outcome]] = defaultdict(dict)
        for run in members:
            if (outcome := run_outcome(run, min_acc)) is not None:
                outcomes[run.lr][run.seed] = outcome
        lrs = sorted({run.lr for run in members})
        settings = largest_trainable.LrSearchSettings(start_lr=lrs[0], seeds=sorted({run.seed for run in members}),
                                                  ratio=math.inf, min_lr=lrs[0], max_lr=lrs[-1])
        bracket = largest_trainable.find_bracket(settings, outcomes)
        config = next((run.config for run in members if run.config), {})
        seeds = count_range([len(runs_at) for runs_at in group_by(members, lambda run: run.lr).values()])
        found.append(LargestTrainableLr(model, variant, bracket, channels_per_statistic(config), lrs, seeds))
    found.sort(key=lambda item: (item.model, variant_sort_key(item.variant)))
    return found
