"""`python -m bnexp.train +variant=<name> [overrides]`: one run, written to the Hydra output dir.

Three parts around Hydra's main: its --help text (conf/hydra/help/bnexp.yaml, with the variant and group lists read
from conf/), the early check of the config (a Hydra callback, before the run dir exists and before torch is
imported), and the run itself, whose user errors are one line and exit code 2.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import bnexp.config.schema  # noqa: F401  (registers the schemas conf/train.yaml extends)
from bnexp.config.compose import CONF_DIR, ConfigError, describe_composition_error, train_default_choices
from bnexp.config.compose import validate_train_config


# ---------------------------------------------------------------- --help

# conf/'s folders that are not groups of a run: Hydra's own (its launchers are listed apart), bnexp.sweep's sweep
# files, and the W&B sweep file
_NOT_RUN_GROUPS = {"hydra", "sweep", "wandb"}


def _first_comment_line(path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def help_section(section: str) -> str:
    """The parts of `--help` that conf/ says (the `bnexp_help` resolver of conf/hydra/help/bnexp.yaml):
    `variants`, a line each from the first comment of conf/variant/<name>.yaml, and `groups`, each group a run is
    composed from with its options, the default marked."""
    if section == "variants":
        variants = sorted((CONF_DIR / "variant").glob("*.yaml"))
        width = max(len(path.stem) for path in variants) + 2
        return "\n".join(f"  {path.stem:<{width}}{_first_comment_line(path)}" for path in variants)
    if section == "groups":
        defaults = train_default_choices()
        lines = []
        for folder in sorted(CONF_DIR.iterdir()):
            if folder.is_dir() and folder.name not in _NOT_RUN_GROUPS:
                choice = f"{folder.name}=" if folder.name in defaults else f"+{folder.name}="
                options = [path.stem + (" (default)" if defaults.get(folder.name) == path.stem else "")
                           for path in sorted(folder.glob("*.yaml"))]
                lines.append(f"  {choice:<17}{', '.join(options)}")
        launchers = ", ".join(path.stem for path in sorted((CONF_DIR / "hydra" / "launcher").glob("*.yaml")))
        lines.append(f"  {'hydra/launcher=':<17}{launchers} (with --multirun)")
        return "\n".join(lines)
    raise ValueError(f"no help section {section!r}; use variants or groups")


OmegaConf.register_new_resolver("bnexp_help", help_section, replace=True)


# ---------------------------------------------------------------- the early check

class ConfigRefused(BaseException):
    """A config refused by the early check, raised through Hydra to run_cli. A BaseException: Hydra turns an
    Exception out of a callback into a warning and goes on with the run."""


class CheckBeforeTheRunDir(Callback):
    """Hydra calls on_run_start after composing the config and before it makes the run dir: a value out of range,
    an unknown key or a name that would place the run outside runs/ stops the command here, within a second, with
    no run dir left behind. The rules that need torch (layer widths, a CUDA device, the model and norm names)
    follow in train(). A multirun's jobs are checked by train() alone, each recorded in its own dir."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate_train_config(config, with_torch=False)
        except ConfigError as error:
            raise ConfigRefused(str(error)) from None


# ---------------------------------------------------------------- the run

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
    except ConfigRefused as refused:
        for problem in str(refused).splitlines():
            print(f"bnexp.train: error: {problem}", file=sys.stderr)
        sys.exit(2)
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

