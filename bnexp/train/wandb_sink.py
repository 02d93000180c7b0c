"""Weights & Biases metrics sink (same interface as the local sink: log_step, log_epoch, finish).

This is the only module that imports `wandb`, and it is imported only when `logger=wandb`, so
`logger=none` runs work without wandb installed. The local sink always writes the run directory as
well; W&B is a second copy for dashboards, never the only one.

Mode (`logger.mode`):
- auto: WANDB_MODE if set, else online when credentials exist (WANDB_API_KEY or a netrc entry for the
  W&B host), else offline with a one-line hint that `wandb sync <dir>` uploads the run later.
- online / offline / disabled: as requested. If the W&B server cannot be reached (no network, a host name that
  does not resolve, nothing listening), or an online init fails or times out, the run falls back to offline
  instead of hanging or crashing.
WANDB_MODE, when set, must be one of wandb's modes whatever logger.mode says (wandb reads it anyway).

Keys keep the trainer's prefixes (train/, test/, grad_norm/, param_norm/, update_ratio/, act/, bn/).
Step-level keys use `step` as their x-axis, epoch-level keys use `epoch`. An epoch-level train/ key
that also exists per step (train/loss) is logged as train/epoch_<name> so each key has one x-axis.
"""
from __future__ import annotations

import netrc
import os
import secrets
import shutil
import socket
import string
import sys
import threading
import urllib.request
from contextlib import AbstractContextManager
from functools import partialmethod
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import wandb
from omegaconf import DictConfig, OmegaConf

from bnexp.runs.fileio import json_safe
from bnexp.config.keys import config_value
from bnexp.runs.files import first_line

# Prefixes that only ever appear in step records or only in epoch records: their x-axis, defined once with a glob.
PREFIX_AXES = {"grad_norm/": "step", "param_norm/": "step", "update_ratio/": "step", "act/": "step", "bn/": "step",
               "test/": "epoch"}
RESERVED_KEYS = ("kind", "step", "epoch")
# The values wandb accepts for WANDB_MODE (anything else fails inside wandb.init with a message that does not name
# the variable).
WANDB_ENV_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")


def has_wandb_credentials(base_url: str | None = None) -> bool:
    """True if an API key is available without prompting: WANDB_API_KEY, or a netrc entry for the W&B host
    (WANDB_BASE_URL's) or for `base_url` (the one wandb itself will use: newer versions default to a host other
    than api.wandb.ai)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    hosts = [urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"]
    if base_url:
        hosts.append(urlparse(base_url).hostname or "")
    # wandb reads $NETRC alone when it is set, else ~/.netrc (or ~/_netrc): a key elsewhere would still prompt
    netrc_paths = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    for path in map(os.path.expanduser, netrc_paths):
        try:
            entries = netrc.netrc(path)
        except (netrc.NetrcParseError, OSError):  # no such file, or not one netrc can read
            continue
        if any(entries.authenticators(host) for host in hosts):
            return True
    return False


def resolve_wandb_mode(requested: str | None) -> tuple[str, str | None]:
    """(mode, reason) for wandb.init; reason is set when auto mode picked offline."""
    if os.environ.get("WANDB_MODE") and os.environ["WANDB_MODE"] not in WANDB_ENV_MODES:
        raise ValueError(f"WANDB_MODE={os.environ['WANDB_MODE']!r} is not a W&B mode: set it to online, offline or "
                         "disabled, or unset it (logger.mode=online|offline|disabled chooses the mode too)")
    requested = str(requested or "auto").lower()
    if requested in ("online", "offline", "disabled"):
        return requested, None
    if requested != "auto":
        # The schema allows no other logger.mode, but a WandbSink is also built in Python from configs the schema
        # never saw (tests, notebooks): the one check of the name on that path.
        raise ValueError(f"logger.mode must be auto|online|offline|disabled, got {requested!r}")
    env_mode = os.environ.get("WANDB_MODE", "").lower()
    if env_mode:
        mode = {"dryrun": "offline", "run": "online"}.get(env_mode, env_mode)
        return mode, (f"WANDB_MODE={env_mode}" if mode == "offline" else None)
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled", None
    if has_wandb_credentials():
        return "online", None
    return "offline", "no W&B credentials found"


def unreachable_reason(base_url: str, timeout_s: float) -> str | None:
    """Why the W&B server at `base_url` cannot be reached (a host name that does not resolve, nothing listening,
    no answer within `timeout_s`), or None when a connection opens. None too when a proxy stands in between: wandb
    connects through it, a direct probe would not.

    Asked before an online start, which otherwise waits out its whole init_timeout on a network that is not there,
    inside W&B's service, where a kill cannot end it sooner."""
    parsed = urlparse(base_url)
    host = parsed.hostname
    if not host or (urllib.request.getproxies() and not urllib.request.proxy_bypass(host)):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    outcome: dict[str, str | None] = {}

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome["reason"] = None
        except socket.gaierror as error:
            outcome["reason"] = f"its host name does not resolve: {error.strerror or error}"
        except OSError as error:  # refused, unreachable, timed out
            outcome["reason"] = error.strerror or str(error) or type(error).__name__

    # In a thread: the host name lookup cannot be interrupted nor given a timeout, while this thread's wait can
    # (a SIGTERM or Ctrl-C in it raises at once).
    probe = threading.Thread(target=connect, name="wandb-reachability", daemon=True)
    probe.start()
    probe.join(timeout_s)
    return outcome.get("reason", f"no answer within {timeout_s:g} s")


def _plain(value: Any) -> Any:
    """Python scalars for wandb (numpy/torch scalars have .item())."""
    try:
        return value.item()
    except (AttributeError, ValueError, RuntimeError):  # not a scalar array: passed on as it is
        return value


class WandbSink(AbstractContextManager):
    """Mirror of the local sink that streams records to one W&B run per training job."""

    def __init__(self, cfg: DictConfig, run_dir: str | os.PathLike, extra_config: Mapping[str, Any] | None = None):
        """`extra_config`: W&B config keys beside the resolved run config (the trainer's `bnexp_provenance`)."""
        logger_cfg = config_value(cfg, "logger")
        variant_name = config_value(cfg, "variant.name", "variant")
        model_name = config_value(cfg, "model.name", "model")
        data_name, lr, seed = config_value(cfg, "data.name"), config_value(cfg, "optim.lr"), config_value(cfg, "seed")

        tags = [str(t) for t in config_value(logger_cfg, "tags", [])]
        tags += [str(t) for t in (variant_name, model_name, data_name) if t and str(t) not in tags]

        mode, reason = resolve_wandb_mode(config_value(logger_cfg, "mode", "auto"))
        # Keep W&B's files inside the Hydra run dir (next to metrics.jsonl) unless WANDB_DIR says otherwise.
        wandb_dir = Path(os.environ.get("WANDB_DIR") or run_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)

        init_kwargs = dict(
            project=str(config_value(logger_cfg, "project", "bnexp")),
            entity=config_value(logger_cfg, "entity", None),
            group=str(variant_name),
            job_type=str(model_name),
            name=config_value(logger_cfg, "run_name", None) or f"{variant_name}-{model_name}-lr{lr}-seed{seed}",
            tags=tags,
            config={**OmegaConf.to_container(cfg, resolve=True), **(extra_config or {})},
            dir=str(wandb_dir),
            # One W&B run per Hydra multirun job, even though jobs share the process.
            reinit="finish_previous",
            # a dict: each wandb.init makes its own Settings of it (and sets the run's mode and id on that)
            settings=dict(
                init_timeout=float(config_value(logger_cfg, "init_timeout", 30)),
                console=str(config_value(logger_cfg, "console", "off")),
                # Otherwise wandb first looks up the account to print "logged in as": twice, 5 s each when the
                # host cannot be reached, before init_timeout starts counting. bnexp prints its own lines.
                quiet=True,
            ),
        )
        if mode == "online":
            self.run, mode, reason = self._init_online_or_offline(init_kwargs, wandb_dir)
        else:
            self.run = wandb.init(mode=mode, **init_kwargs)
        self.mode = mode
        if mode == "offline":
            offline_dir = Path(self.run.dir).parent  # run.dir is <offline-run-dir>/files
            print(f"[bnexp] wandb offline ({reason or 'requested'}); upload later with: wandb sync {offline_dir}")

        self.run.define_metric("step")
        self.run.define_metric("epoch")
        for prefix, axis in PREFIX_AXES.items():
            self.run.define_metric(prefix + "*", step_metric=axis)
        # Best and last test accuracy both land in the run summary (W&B tables/sorting use it).
        self.run.define_metric("test/acc", step_metric="epoch", summary="max,last")
        self._defined_keys: set[str] = set()
        # keys logged per step; train/loss and train/lr are, even when the epoch record comes first
        self._step_keys = {"train/loss", "train/lr"}
        self._finished = False

    @staticmethod
    def _init_online_or_offline(init_kwargs: dict, wandb_dir: Path) -> tuple[Any, str, str | None]:
        """An online run, or an offline one when the server cannot be reached, or the online start fails or passes
        init_timeout.

        The online attempt gets its run id from us (or the W&B agent's WANDB_RUN_ID), so that the run-<time>-<id>
        dir it leaves behind when it fails, which holds nothing but its logs, can be told apart and removed: the
        offline run's dir is then the only one. wandb.teardown() first closes the failed attempt, so that nothing
        writes into that dir any more and the offline run may take the same id (an agent's)."""
        base_url = str(wandb.setup().settings.base_url)
        unreachable = unreachable_reason(base_url, init_kwargs["settings"]["init_timeout"])
        if unreachable is not None:
            print(f"[bnexp] wandb online init failed (cannot reach {base_url}: {unreachable}); logging offline",
                  file=sys.stderr)
            return wandb.init(mode="offline", **init_kwargs), "offline", f"cannot reach {base_url}"
        run_id = os.environ.get("WANDB_RUN_ID") or "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        attempt_dirs = lambda: set((wandb_dir / "wandb").glob(f"run-*-{run_id}"))  # noqa: E731
        dirs_before = attempt_dirs()
        try:
            run = wandb.init(mode="online", id=run_id, **init_kwargs)
            return run, "online", None
        except Exception as error:  # noqa: BLE001 - any init failure must not cost the local run (a kill is no
            # Exception: it passes on, see bnexp/train/run.py's RunInterrupted)
            failure = f"{type(error).__name__}: {first_line(str(error).strip())}"
        wandb.teardown()
        for leftover in attempt_dirs() - dirs_before:
            shutil.rmtree(leftover, ignore_errors=True)
        print(f"[bnexp] wandb online init failed ({failure}); logging offline (the failed attempt's files are "
              "removed)", file=sys.stderr)
        run = wandb.init(mode="offline", **init_kwargs)
        return run, "offline", "online init failed"

    def _log(self, record: Mapping[str, Any], axis: str) -> None:
        """One W&B row: the record's numbers against its own axis ("step" or "epoch"), the other axis alongside."""
        payload = {"step": int(record["step"])} if "step" in record else {}
        if "epoch" in record:
            payload["epoch"] = _plain(record["epoch"])
        for key, value in record.items():
            value = _plain(value)
            if key in RESERVED_KEYS or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if axis == "step":
                self._step_keys.add(key)
            elif key in self._step_keys:
                # Same name already plotted per step: give the epoch value its own key (one x-axis per key).
                prefix, _, leaf = key.rpartition("/")
                key = f"{prefix}/epoch_{leaf}" if prefix else f"epoch_{leaf}"
            # keys outside the glob prefixes (e.g. train/*) get their x-axis on first appearance
            if key not in self._defined_keys and not key.startswith(tuple(PREFIX_AXES)):
                self.run.define_metric(key, step_metric=axis)
                self._defined_keys.add(key)
            payload[key] = value
        self.run.log(payload)

    log_step = partialmethod(_log, axis="step")
    log_epoch = partialmethod(_log, axis="epoch")

    def finish(self, summary: Mapping[str, Any] | None = None) -> None:
        """Write the final summary and close the run; safe to call twice (exception paths)."""
        if self._finished:
            return
        self._finished = True
        try:
            if summary:
                self.run.summary.update(json_safe(summary))
        finally:
            self.run.finish(exit_code=1 if summary and summary.get("status") == "failed" else 0)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish({"status": "failed"} if exc_type else None)
