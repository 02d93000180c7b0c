"""The report's tables as files and as text: CSV and markdown, for bnexp.report and its mechanism section."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """A header and rows, a NaN written as an empty cell (as csv writes None)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([["" if isinstance(value, float) and math.isnan(value) else value for value in row]
                          for row in rows])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def model_table(header: list[str], rows: list[list[str]], show_model: bool) -> str:
    """A markdown table whose first column, the model, is left out when the study has a single model."""
    first = 0 if show_model else 1
    return markdown_table(header[first:], [row[first:] for row in rows])
