"""The life of one run, from config to run directory: it holds the run dir's lock, turns SIGTERM and Ctrl-C into
exceptions wherever they land, opens the sinks, runs the loop (bnexp/train/loop.py), and writes the summary of how
the run ended, however it ends.
"""
from __future__ import annotations

import contextlib
import signal
import time

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from bnexp.config.compose import validate_train_config
from bnexp.models import stat_groups_by_layer
from bnexp.runs.lock import RunDirLock, RunDirUnusable, unusable_run_dir_message
from bnexp.runs.provenance import provenance
from bnexp.train.loop import model_from_config, train_loop
from bnexp.train.sinks import LocalSink, SinkGroup, logger_sinks


class RunInterrupted(BaseException):
    """SIGTERM arrived: stop, but still close the logs and write the summary.

    A BaseException, like KeyboardInterrupt (Ctrl-C), so that no `except Exception` on its way out takes the kill
    for an error it can handle: W&B's start-up, for one, falls back to offline logging on any Exception."""


def run_summary_base(cfg: DictConfig, stat_groups: dict | None) -> dict:
    # the config is not validated yet here: a bad lr or seed is kept as given, and the run fails just after
    return {"status": "running", "variant": cfg.variant.name, "model": cfg.model.name,
            "lr": _number_or_as_given(cfg.optim.lr, float), "seed": _number_or_as_given(cfg.seed, int),
            "data_source": None,
            "final_test_acc": None, "best_test_acc": None, "epochs_done": 0, "steps_done": 0,
            "wall_time_s": 0.0, "images_per_s": None, "diverged_step": None, "error": None,
            "stat_groups_by_layer": stat_groups, "provenance": provenance(cfg.get("device"))}


def train(cfg: DictConfig, run_dir: str, extra_sinks: list | None = None,
          extra_files: dict[str, str] | None = None) -> dict:
    """Train one run; returns its summary (also written to run_dir/summary.json). `extra_files` (path in run_dir
    -> text) are written beside config.yaml once the lock is held: the CLI's Hydra copy in .hydra/.

    The run holds run_dir's lock (bnexp/runs/lock.py) from before its first write to after its last: a second run
    into the same dir raises RunDirLocked and touches nothing there. A diverged run is a result (status
    'diverged'); an exception or a kill is recorded as 'failed' with the error, then re-raised. A sink that fails
    to finish is noted in the summary (`sink_error`) and on stderr; it is raised only when the run itself raised
    nothing, so it never hides the run's own error.
    """
    started = time.perf_counter()
    summary = run_summary_base(cfg, record_stat_groups(cfg))
    with RunDirLock(run_dir), StopSignals() as stop:
        sinks = SinkGroup([])
        try:
            with stop.held():  # a kill during the first write lands after it, as a failed run
                try:
                    local = LocalSink(run_dir, OmegaConf.to_yaml(cfg, resolve=True), summary, extra_files)
                except OSError as error:  # a dir the lock file could go in, but the run's files cannot
                    raise RunDirUnusable(unusable_run_dir_message(run_dir, error)) from None
                sinks.sinks.append(local)
            if stop.pending is not None:
                raise stop.pending
            sinks.sinks.extend(extra_sinks or [])
            validate_train_config(cfg)
            # inside the try: a logger failure is a failed run
            sinks.sinks.extend(logger_sinks(cfg, run_dir, summary["provenance"]))
            train_loop(cfg, sinks, summary)
        except BaseException as error:
            summary["status"] = "failed"
            summary["error"] = _describe_failure(error)
            raise
        finally:
            summary["wall_time_s"] = round(time.perf_counter() - started, 3)
            with stop.held():  # nor may a kill cut the last write short: the summary must say how the run ended
                sink_errors = sinks.finish(summary)
            if stop.pending is not None and summary["status"] != "failed":
                # the kill landed while the end was being written: the run did not end on its own. (Not failed
                # means the try ran through, so the local sink exists.)
                summary.update(status="failed", error=_describe_failure(stop.pending))
                sinks.sinks[0].write_summary(summary)
                raise stop.pending
    if sink_errors:
        raise sink_errors[0]
    return summary


def _describe_failure(error: BaseException) -> str:
    killed = isinstance(error, (RunInterrupted, KeyboardInterrupt))
    return ("killed: " if killed else "") + f"{type(error).__name__}: {error}"


def record_stat_groups(cfg: DictConfig) -> dict | None:
    """Put the statistic groups each norm layer gets into the run's config as `variant.stat_groups_by_layer`, so
    config.yaml and the W&B config say what `stat_groups` / `channels_per_group` came to, and return them for the
    summary. The model is built on the meta device (no memory, no random numbers drawn); a config that cannot
    build a model is left as it is (None for the summary) and fails in the run, where the error is recorded."""
    try:
        with torch.device("meta"):
            groups = stat_groups_by_layer(model_from_config(cfg))
    except Exception:
        return None
    with open_dict(cfg):
        cfg.variant.stat_groups_by_layer = groups
    return groups


def _number_or_as_given(value, kind):
    try:
        return kind(value)
    except (TypeError, ValueError):
        return value


class StopSignals:
    """While the run lives, SIGTERM raises RunInterrupted and SIGINT KeyboardInterrupt, wherever they land
    (decode, a step, the evaluation). Inside `held()` (the summary writes) the first one's exception is kept as
    `pending` instead, so that no kill leaves a torn or stale summary behind; the caller raises it after the
    write."""

    def __init__(self):
        self.pending: BaseException | None = None
        self._holding = False

    def __enter__(self) -> "StopSignals":
        self._previous = {signum: signal.signal(signum, self._on_signal)
                          for signum in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextlib.contextmanager
    def held(self):
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def _on_signal(self, signum, frame):
        interruption = (KeyboardInterrupt() if signum == signal.SIGINT
                        else RunInterrupted(f"received signal {signum}"))
        if not self._holding:
            raise interruption
        self.pending = self.pending or interruption
