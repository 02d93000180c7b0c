"""Which code and library versions made the runs: summary.json's `provenance` fields, counted per value."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from bnexp.report.run_records import RunRecord

# summary.json's `provenance` fields, in the order the report lists them (unknown fields follow, sorted).
PROVENANCE_KEYS = ("bnexp_version", "git_commit", "git_dirty", "python", "torch", "triton", "cuda", "device")


@dataclass
class ProvenanceCounts:
    """Per provenance field, how many runs recorded each value; and how many runs recorded no provenance."""
    values: dict[str, Counter]
    runs_without: int


def _provenance_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def provenance_counts(runs: list[RunRecord]) -> ProvenanceCounts:
    records = [run.summary.get("provenance") for run in runs]
    records = [record for record in records if isinstance(record, dict) and record]
    keys = {key for record in records for key in record}
    ordered = [key for key in PROVENANCE_KEYS if key in keys] + sorted(keys - set(PROVENANCE_KEYS))
    values = {key: Counter(_provenance_text(record[key]) if key in record else "not recorded"
                           for record in records) for key in ordered}
    return ProvenanceCounts(values, len(runs) - len(records))
