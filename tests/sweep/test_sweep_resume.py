"""A largest_lr sweep that picks its next runs from the runs already in its out dir: its dry run before and after
one run made as the sweep makes it."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from bnexp.sweep.executors import LocalExecutor
from bnexp.sweep.grid import compose_sweep_config
from bnexp.sweep.largest_lr import LargestLrPlanner
from bnexp.sweep.processes import plan_workers
from bnexp.sweep.run import run_sweep

LARGEST_LR = ["sweep=cpu_mechanism", "sweep.train_module=tests.support.fake_train", "sweep.mode=largest_lr",
              "sweep.gpus=[]", "sweep.workers=1", "sweep.only_variants=[correct_bn,no_bn]", "sweep.seeds=[0,1]"]


def dry_run(out_dir: Path) -> list[str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_sweep(compose_sweep_config([*LARGEST_LR, f"sweep.out_dir={out_dir}"]), [], True) == 0
    return printed.getvalue().splitlines()


def test_a_largest_lr_sweep_resumes_from_the_runs_in_its_out_dir(tmp_path):
    first = dry_run(tmp_path)
    commands = [line for line in first if line.startswith("[")]
    # one worker: each search's first lr, its first seed only
    assert len(commands) == 2 and all(line.startswith("[pending] ") for line in commands)
    assert all("optim.lr=0.05" in line and "seed=0" in line for line in commands)
    assert first[-1].startswith("largest_lr mode: 2 run(s) in the first round, 0 known")

    # run the first one as the sweep runs a job (its sweep_job.json names the search it belongs to), then ask again
    config = compose_sweep_config([*LARGEST_LR, f"sweep.out_dir={tmp_path}"])
    planner = LargestLrPlanner(config, [], one_at_a_time=True)
    (job,) = [job for job in planner.next_jobs() if job.variant == "correct_bn"]
    assert str(job.run_dir) in next(line for line in commands if "+variant=correct_bn" in line)
    executor = LocalExecutor(plan_workers(config, 1), config.train_module, 60)
    try:
        (launch,) = executor.submit([job])
        assert executor.wait(timeout=120) == [launch]
    finally:
        executor.close()
    assert launch.outcome.status == "finished", launch.outcome.error

    again = dry_run(tmp_path)
    done = [line for line in again if line.startswith("[done (skip)]")]
    pending = [line for line in again if line.startswith("[pending]")]
    assert len(done) == 1 and str(job.run_dir) in done[0]
    # correct_bn trained at 0.05 with seed 0: its next run is the same lr's other seed; no_bn still waits
    assert len(pending) == 2
    assert any("+variant=correct_bn" in line and "optim.lr=0.05" in line and re.search(r"\bseed=1\b", line)
               for line in pending)
    assert any("+variant=no_bn" in line and re.search(r"\bseed=0\b", line) for line in pending)
    assert again[-1].startswith("largest_lr mode: 2 run(s) in the first round, 1 known")
