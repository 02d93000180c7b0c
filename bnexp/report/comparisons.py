"""Differences between variants: each variant's final accuracy against the reference's at each lr, as a Welch
difference, worded by whether it holds beyond its interval; and whether it still holds after Holm's correction
over every comparison made (the family is all of them, every model and lr: the section makes them all at once)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from bnexp.report import intervals
from bnexp.report.aggregation import GroupStats, final_accuracies
from bnexp.report.run_records import variant_sort_key


@dataclass
class Comparison:
    """A variant's final test accuracy against the reference's at one lr (finished seeds of each)."""
    model: str
    lr: float
    variant: str
    reference: str
    difference: intervals.Difference   # mean(variant) - mean(reference), Welch t-interval
    p_holm: float | None = None        # Welch's p-value after Holm's correction over all comparisons made
    level: float = intervals.DEFAULT_LEVEL

    @property
    def holds_after_holm(self) -> bool:
        return self.p_holm is not None and self.p_holm <= 1 - self.level

    def verdict(self) -> str:
        """'correct_bn > shared_bn', or '... not resolved (...)', from the interval of the difference."""
        return self.difference.verdict(self.variant, self.reference)

    def format(self) -> str:
        """'shared_bn − correct_bn: -12.3 points [-20.1, -4.5] (n=3 vs 3) → holds: shared_bn < correct_bn;
        p = 0.0031, Holm p = 0.025 (holds after Holm)'."""
        d = self.difference
        points = f"{100 * d.difference:+.1f} points"
        if d.low is not None:
            points += f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        verdict = f"holds: {self.verdict()}" if d.resolved else self.verdict()
        text = f"{self.variant} − {self.reference}: {points} (n={d.n_a} vs {d.n_b}) → {verdict}"
        if d.p_value is not None and self.p_holm is not None:
            after = "holds" if self.holds_after_holm else "not resolved"
            text += f"; p = {d.p_value:.2g}, Holm p = {self.p_holm:.2g} ({after} after Holm)"
        return text


def compare_to_reference(groups: list[GroupStats], reference: str = "correct_bn",
                         level: float = intervals.DEFAULT_LEVEL) -> list[Comparison]:
    """Per model and lr, each other variant's final accuracy against `reference`'s, as a Welch difference.

    Only lrs where both have a finished seed are compared; diverged seeds have no accuracy (the summary counts them).
    """
    by_key = {(g.model, g.variant, g.lr): g for g in groups}
    comparisons = []
    for group in groups:
        base = by_key.get((group.model, reference, group.lr))
        if group.variant == reference or base is None:
            continue
        values, base_values = final_accuracies(group.runs), final_accuracies(base.runs)
        if values and base_values:
            comparisons.append(Comparison(group.model, group.lr, group.variant, reference,
                                          intervals.difference_interval(values, base_values, level), level=level))
    comparisons.sort(key=lambda c: (c.model, c.lr, variant_sort_key(c.variant)))
    return with_holm(comparisons)


def with_holm(comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons with their Holm-adjusted p-values, the family being every one that has a p-value (a group
    of one seed has none)."""
    tested = [index for index, c in enumerate(comparisons) if c.difference.p_value is not None]
    adjusted = intervals.holm_adjusted([comparisons[index].difference.p_value for index in tested])
    holm_of = dict(zip(tested, adjusted))
    return [replace(c, p_holm=holm_of.get(index)) for index, c in enumerate(comparisons)]
