"""How the plots group runs into series: by variant (or model/variant), and at which shared lr the per-variant
curve plots are drawn."""
from __future__ import annotations

import math
from typing import Any, Callable

from bnexp.report.aggregation import GroupStats
from bnexp.report.run_records import RunRecord, group_by, variant_sort_key


def choose_shared_lr(groups: list[GroupStats], requested: float | None) -> float | None:
    """The lr for per-variant curve plots: the largest lr tried by every variant at which the reference variant
    (correct_bn if present) is stable -- where the variants differ most while the reference still trains."""
    if requested is not None:
        return requested
    lrs_by_variant = {variant: {g.lr for g in members}
                      for variant, members in group_by(groups, lambda g: g.variant).items()}
    if not lrs_by_variant:
        return None
    common = sorted(set.intersection(*lrs_by_variant.values())) or sorted({g.lr for g in groups})
    reference = "correct_bn" if "correct_bn" in lrs_by_variant else sorted(lrs_by_variant, key=variant_sort_key)[0]
    return max((g.lr for g in groups if g.variant == reference and g.stable and g.lr in common), default=common[0])


def series_labeller(items: list) -> Callable[[Any], str]:
    """How the plots label the series of a run, group or bracket among `items`: its variant, or model/variant when
    the items span several models."""
    if len({item.model for item in items}) > 1:
        return lambda item: f"{item.model}/{item.variant}"
    return lambda item: item.variant


def runs_by_series(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs grouped by their series label, in report order (by model, variant, then seed)."""
    ordered = sorted(runs, key=lambda r: (r.model, variant_sort_key(r.variant), r.seed is None, r.seed))
    return group_by(ordered, series_labeller(runs))


def runs_at_lr(runs: list[RunRecord], lr: float | None) -> dict[str, list[RunRecord]]:
    """The runs at `lr` (the shared lr of the per-variant curve plots) by series; none when there is no such lr."""
    if lr is None:
        return {}
    return runs_by_series([run for run in runs if math.isclose(run.lr, lr, rel_tol=1e-9)])
