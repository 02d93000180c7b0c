"""The sweep's grid: the sweep config composed and checked, the command line split into sweep and train overrides,
and every run of the grid as a SweepJob with its deterministic run id, run dir and training command.

The run id is derived from the run's overrides (readable part + hash of all overrides), which is what makes a sweep
resumable: the same recipe always names the same run dir.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bnexp.config.compose import CONF_DIR
from bnexp.config.sweep_schema import validate_sweep_config

# The grid's axes: a train override of one of these keys on the command line would silently replace the grid's value.
GRID_KEYS = ("variant", "model", "optim.lr", "seed")


def override_keys(overrides: list[str]) -> list[str]:
    """The config key each override sets, as Hydra parses it: '+variant=x' -> 'variant', '~a.b' -> 'a.b',
    'optim.lr=0.1' -> 'optim.lr', 'group@pkg=x' -> 'group@pkg'. A malformed override raises Hydra's own error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.key_or_group + (f"@{o.package}" if o.package is not None else "") for o in parsed]


def split_cli_overrides(arguments: list[str]) -> tuple[list[str], list[str]]:
    """Separate sweep-config overrides (key `sweep` or `sweep.*`) from train overrides (everything else)."""
    sweep_overrides, train_overrides = [], []
    for argument, key in zip(arguments, override_keys(arguments)):
        (sweep_overrides if key == "sweep" or key.startswith("sweep.") else train_overrides).append(argument)
    return sweep_overrides, train_overrides


def compose_sweep_config(sweep_overrides: list[str], config_dir: Path = CONF_DIR) -> DictConfig:
    """Compose conf/sweep/<name>.yaml (+ overrides) with Hydra; returns the `sweep` node, resolved and checked
    against the sweep schema (bnexp/config/sweep_schema.py), with the schema's defaults for keys it leaves out."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    # A tiny primary config: `sweep=<name>` is a mandatory group choice, and every sweep config gets the keys of
    # its executor (conf/sweep/slurm/default.yaml as `slurm`, and `executor`), so that `sweep.executor=slurm` and
    # `sweep.slurm.partition=gpu` need no `+`; a sweep config can set them too.
    ConfigStore.instance().store(name="_bnexp_sweep_main", node={
        "defaults": ["_self_", {"sweep/slurm@sweep.slurm": "default"}, {"sweep": "???"}],
        "sweep": {"executor": "local"}})
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        composed = compose(config_name="_bnexp_sweep_main", overrides=sweep_overrides)
    sweep_cfg = composed.sweep
    OmegaConf.resolve(sweep_cfg)
    return validate_sweep_config(sweep_cfg)


@dataclass(frozen=True)
class SweepJob:
    """One training run of the grid."""
    run_id: str
    variant: str            # label from the sweep config (e.g. grouped_bn_g8)
    model: str | None       # conf/model choice, None = trainer default
    lr: float
    seed: int
    overrides: tuple[str, ...]
    run_dir: Path
    # best_lr mode: "tune" (a run that helps choose the lr) or "final" (a fresh seed at the chosen lr); recorded in
    # the run dir's sweep_job.json. Not part of the run id: the recipe alone names the run dir.
    role: str | None = None
    # a final run's record of the tuning that chose its lr (chosen lr, whether interior, the lrs tuned)
    tuning: dict | None = field(default=None, compare=False)

    def describe(self) -> str:
        model = f"{self.model} " if self.model else ""
        return f"{model}{self.variant} lr={self.lr:g} seed={self.seed}"


def merge_overrides(*override_lists: list[str]) -> list[str]:
    """Concatenate override lists; a later override of the same key replaces an earlier one (Hydra rejects
    duplicates, and 'the preset says X, my command line says Y' should mean Y)."""
    merged: dict[str, str] = {}
    for overrides in override_lists:
        for override, key in zip(overrides, override_keys(overrides)):
            merged.pop(key, None)  # re-insert so the order reflects the last writer
            merged[key] = override
    return list(merged.values())


def make_run_id(variant: str, model: str | None, lr: float, seed: int, overrides: list[str]) -> str:
    """Readable grid coordinates + a hash of every override, so any change to the recipe gets a new dir."""
    digest = hashlib.sha1(json.dumps(sorted(overrides)).encode()).hexdigest()[:8]
    readable = "_".join(part for part in (model, variant, f"lr{lr:g}", f"seed{seed}") if part)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", readable).strip("-") + f"_{digest}"


def build_jobs(sweep_cfg: DictConfig, cli_train_overrides: list[str]) -> list[SweepJob]:
    """Expand the grid variants x models x lrs x seeds of a checked sweep config into jobs (deduplicated,
    deterministic order)."""
    variants: dict[str, list[str]] = {
        str(label): [str(o) for o in (overrides or [])]
        for label, overrides in OmegaConf.to_container(sweep_cfg.variants).items()
    }
    if sweep_cfg.only_variants:  # the schema checked that it names known labels
        variants = {label: variants[label] for label in sweep_cfg.only_variants}
    models = list(sweep_cfg.models or []) or [None]
    lrs = [float(lr) for lr in sweep_cfg.lrs]
    seeds = [int(seed) for seed in sweep_cfg.seeds]
    common = [str(o) for o in sweep_cfg.train_overrides]

    clashing = [o for o, key in zip(cli_train_overrides, override_keys(cli_train_overrides)) if key in GRID_KEYS]
    if clashing:
        raise ValueError(f"{clashing} would override grid axes; change the grid instead "
                         "(sweep.lrs=[...], sweep.seeds=[...], sweep.only_variants=[...], sweep.models=[...])")

    runs_dir = Path(sweep_cfg.out_dir).resolve() / "runs"
    jobs: dict[str, SweepJob] = {}
    for label, model, lr, seed in itertools.product(variants, models, lrs, seeds):
        grid = [*variants[label], *([f"model={model}"] if model else []), f"optim.lr={lr!r}", f"seed={seed}"]
        overrides = merge_overrides(common, cli_train_overrides, grid)
        run_id = make_run_id(label, model, lr, seed, overrides)
        jobs.setdefault(run_id, SweepJob(run_id, label, model, lr, seed, tuple(overrides), runs_dir / run_id))
    return list(jobs.values())


def quote_for_hydra(value: str) -> str:
    """`value` as a Hydra override value: plain when it can be, else single-quoted. Inside quotes Hydra reads a
    backslash literally except in a run right before a quote, which it halves, so only those runs are doubled."""
    if re.fullmatch(r"[A-Za-z0-9_./\-]+", value):
        return value
    escaped = re.sub(r"(\\*)'", lambda match: match.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda match: match.group(1) * 2, escaped)
    return f"'{escaped}'"


def train_command(job: SweepJob, train_module: str) -> list[str]:
    """The command line of one run: `python -m <train module> <overrides> hydra.run.dir=<run dir>`."""
    return [sys.executable, "-m", train_module, *job.overrides,
            f"hydra.run.dir={quote_for_hydra(str(job.run_dir))}"]
