"""How a run ended, as the search for the largest trainable lr counts it: trains, diverged, collapsed or failed.

The sweep's largest_lr mode asks this of each run dir it planned; the report asks the same of the runs it aggregates
(through its run records, which read the same files).
"""
from __future__ import annotations

import math
from pathlib import Path

from bnexp.lr_search.largest_trainable import Outcome, classify_run
from bnexp.runs.files import as_float, read_metrics, read_summary, run_status

# The final test accuracy a run must reach to count as trained: twice chance on CIFAR-10's 10 classes.
DEFAULT_MIN_ACC = 0.2


def last_global_grad_norm(metrics: list[dict]) -> float | None:
    """grad_norm/global at the last logged step that has it (a non-finite norm counts as inf); None without one."""
    steps = sorted((record for record in metrics if record.get("kind", "step") == "step"
                    and isinstance(record.get("step"), (int, float)) and "grad_norm/global" in record),
                   key=lambda record: record["step"])
    if not steps:
        return None
    value = as_float(steps[-1]["grad_norm/global"])
    return math.inf if value is None else value


def run_dir_outcome(run_dir: Path, min_acc: float = DEFAULT_MIN_ACC) -> Outcome | None:
    """The outcome of the run in `run_dir`, or None while it is unknown (missing, still running). A finished run
    whose last global gradient norm is exactly 0 (the network died) collapsed, whatever its accuracy."""
    summary = read_summary(run_dir)
    status = run_status(run_dir, summary)
    last_grad_norm = last_global_grad_norm(read_metrics(run_dir)) if status == "finished" else None
    final_acc = as_float((summary or {}).get("final_test_acc"))
    return classify_run(status, final_acc, last_grad_norm, min_acc)
