"""`python -m bnexp.train +variant=<name> [overrides]`: one run, written to the Hydra output dir."""
from __future__ import annotations

import os
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import bnexp.config.schema  # noqa: F401  (registers the schemas conf/train.yaml extends)
from bnexp.config.compose import CONF_DIR, describe_composition_error


# A multirun's jobs as Hydra's basic launcher runs them, one after another in this process: (run dir, whether it
# stopped on a user error), one entry per job, since jobs may share a dir. A failed job lets the others run;
# run_cli exits 2 after the last one.
_multirun_jobs: list[tuple[str, bool]] = []


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # imported here, not at the top: a command line Hydra refuses is answered without loading torch
    from bnexp.data.sources import DatasetError
    from bnexp.runs.lock import RunDirLocked
    from bnexp.train.run import RunInterrupted, train

    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    in_multirun = hydra_cfg.mode == RunMode.MULTIRUN
    # Hydra's own record of the run (its output_subdir is off in conf/train.yaml), written once the run holds the
    # dir: the config as composed, Hydra's settings, and the command line's overrides
    hydra_files = {".hydra/config.yaml": OmegaConf.to_yaml(cfg),
                   ".hydra/hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
                   ".hydra/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task)}
    try:
        summary = train(cfg, run_dir, extra_files=hydra_files)
    except (DatasetError, ValueError, RunDirLocked) as error:
        # A user error: say what and how to fix, not a traceback. The run dir keeps a 'failed' summary, except
        # when it is locked: then it belongs to a live run, and nothing in it was touched.
        print(f"bnexp.train: error: {error}\n(run dir: {run_dir})", file=sys.stderr)
        if in_multirun:
            _multirun_jobs.append((run_dir, True))
            return  # one bad job must not abort the rest of a multirun
        sys.exit(2)
    except (RunInterrupted, KeyboardInterrupt) as error:
        # Killed: the summary already says 'failed' with the reason, and the metrics so far are kept.
        print(f"bnexp.train: stopped ({type(error).__name__}: {error}); the run dir keeps the metrics logged "
              f"so far and a 'failed' summary.\n(run dir: {run_dir})", file=sys.stderr)
        sys.exit(143 if isinstance(error, RunInterrupted) else 130)
    if in_multirun:
        _multirun_jobs.append((run_dir, False))
    print(f"bnexp.train: {summary['status']} | best test acc {summary['best_test_acc']} | run dir {run_dir}")


def _raised_by_the_run(error: BaseException) -> bool:
    """Whether an exception came out of the task function (a run's own crash), not out of Hydra composing the
    config or setting up the run dir."""
    return any(frame.f_code is main.__wrapped__.__code__ for frame, _ in traceback.walk_tb(error.__traceback__))


def run_cli() -> None:
    """main() with every config error of the command line, Hydra's own included, as one line and exit code 2."""
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Without it Hydra prints a composition error itself and exits 1; with it the error reaches us, and a bad
    # command line exits 2 with one line, like every other config error.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    _multirun_jobs.clear()
    try:
        main()
    except Exception as error:  # noqa: BLE001 - sorted below: config errors get one line, crashes a traceback
        message = None if _raised_by_the_run(error) else describe_composition_error(error)
        # Hydra makes the run dir and opens its log there before the run starts (logging wraps that error)
        os_error = error if isinstance(error, OSError) else error.__cause__
        if message is None and isinstance(os_error, OSError) and not _raised_by_the_run(error):
            from bnexp.runs.lock import unusable_run_dir_message
            message = unusable_run_dir_message(None, os_error)
        if message is None:
            raise
        if wants_traceback:
            traceback.print_exc()
        print(f"bnexp.train: error: {message}", file=sys.stderr)
        sys.exit(2)
    failed_dirs = [run_dir for run_dir, failed in _multirun_jobs if failed]
    if failed_dirs:
        print(f"bnexp.train: error: {len(failed_dirs)} of {len(_multirun_jobs)} multirun jobs failed (each "
              f"one's error is above); their run dirs: {', '.join(failed_dirs)}", file=sys.stderr)
        sys.exit(2)

