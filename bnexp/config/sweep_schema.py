"""The sweep config's schema: every key of conf/sweep/<name>.yaml with its type, its bounds, a valid example and, for
a key a sweep config may leave out, its default; and the check a composed sweep config passes before the sweep writes
anything or starts any run.

`python -m bnexp.sweep` composes the config (bnexp/sweep/grid.py) and hands it to `validate_sweep_config`, which
either returns it with the defaults filled in or raises one ConfigError with a line per problem, each naming the key,
the value and a valid example (`sweep.workers=0 must be a whole number of at least 1, or auto; e.g.
sweep.workers=2`). The sweep's builders then trust the config. The check is not part of Hydra's composition (as the
train schema is) so that `+sweep.mode=largest_lr` keeps adding a key that a sweep config does not have.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from bnexp.lr_search import best_lr, largest_trainable
from bnexp.config.checks import bound_problem, type_hints
from bnexp.config.checks import show_value as _show
from bnexp.config.compose import CONF_DIR, ConfigError
from bnexp.config.sweep_renames import (RENAMED_KEYS, RENAMED_MODES, renamed_key_line, renamed_mode_line,
                                        renamed_problems)
from bnexp.config.schema import MAX_SEED, non_empty

REQUIRED = object()  # a key every sweep config must set
SWEEP_MODES = ("grid", "largest_lr", "best_lr")
# local: runs are processes of the sweep; slurm: SLURM jobs through submitit; submitit_local: the same jobs through
# submitit's local executor, on the machine the sweep runs on (to try the SLURM path without a cluster)
EXECUTORS = ("local", "slurm", "submitit_local")
# a SLURM job's time limit leaves a run this long beyond sweep.timeout_s to start and to stop after SIGTERM
SLURM_START_MARGIN_S = 120
SLURM_DEFAULTS_FILE = CONF_DIR / "sweep" / "slurm" / "default.yaml"


def setting(example: str, default: Any = REQUIRED, **rules: Any) -> Any:
    """A schema field: a valid example for messages, the default for a config that leaves the key out (REQUIRED:
    none), and rules: at_least / above / at_most (bounds), choices (a tuple, or a function returning one),
    check (value -> problem or None), each (a mapping's (key, item) -> problem or None)."""
    return field(default=None, metadata={"example": example, "default": default, **rules})


# ---------------------------------------------------------------- rules of single values

def count_problem(value: Any) -> str | None:
    """A worker or thread count: a whole number of at least 1, or auto. 2.0 is 2; 2.5, 0, -3 and true are not."""
    if value in (None, "auto"):
        return None
    # a bool is an int to Python, and int() would cut 2.5 to 2: neither is what was asked for
    whole = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and float(value).is_integer()
    return None if whole and value >= 1 else "must be a whole number of at least 1, or auto"


def count_setting(sweep_cfg: Mapping, key: str) -> int | None:
    """sweep.<key> (workers, threads_per_worker) as a count; None for auto. Raises ConfigError for a bad value:
    the guard for a config built in Python, which has not been through validate_sweep_config."""
    value = sweep_cfg.get(key, "auto")
    problem = count_problem(value)
    if problem:
        raise ConfigError(f"sweep.{key}={_show(value)} {problem}; e.g. sweep.{key}=2")
    return None if value in (None, "auto") else int(value)


def _module_problem(value: str) -> str | None:
    dotted_name = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*"
    return None if re.fullmatch(dotted_name, value) else "is not a Python module name (python -m <module>)"


def _gpus_problem(value: Any) -> str | None:
    if value in (None, "auto"):
        return None
    ids_ok = isinstance(value, list) and all(
        (isinstance(gpu, int) and not isinstance(gpu, bool) and gpu >= 0) or (isinstance(gpu, str) and gpu.strip())
        for gpu in value)
    return None if ids_ok else "must be auto or a list of GPU ids ([] runs on CPU)"


def _overrides_problem(overrides: list[str]) -> str | None:
    """Train overrides that Hydra cannot read would fail every run; say so before the first one starts."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        OverridesParser.create().parse_overrides([str(override) for override in overrides])
    except OverrideParseException as error:
        return f"holds an override Hydra cannot read ({str(error).splitlines()[0]})"
    return None


def _variants_problem(variants: Mapping) -> str | None:
    return None if variants else "is empty: a sweep needs at least one variant"


def _variant_problem(label: str, overrides: Any) -> str | None:
    """One variant: a label and the list of train overrides that select it."""
    if not str(label).strip():
        return "has an empty label"
    if overrides is not None and not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        return "is not a list of train overrides"
    return _overrides_problem(overrides or [])


def _mode_problem(mode: str) -> str | None:
    return None if mode in SWEEP_MODES else (
        f"is not one of {', '.join(SWEEP_MODES)} (grid: every variant x lr x seed; largest_lr: search each "
        "variant's largest trainable lr; best_lr: tune each variant's lr, then run fresh seeds at it)")


def _model_choices() -> tuple[str, ...]:
    """The models a sweep can cross with: the options of conf/model/ (the sweep passes model=<name>)."""
    return tuple(sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml")))


def _repeats_problem(values: list) -> str | None:
    return "repeats a value; list each once" if len(set(values)) != len(values) else None


def _seeds_problem(seeds: list[int]) -> str | None:
    return "is empty: a sweep needs at least one seed" if not seeds else _repeats_problem(seeds)


# ---------------------------------------------------------------- the schema

@dataclass
class SlurmConfig:
    """One run's SLURM resources (conf/sweep/slurm/default.yaml holds the defaults; the same keys as the Hydra
    launcher conf/hydra/launcher/bnexp_slurm.yaml, plus job_arrays)."""
    partition: Optional[str] = setting("gpu", check=non_empty)
    account: Optional[str] = setting("my-lab", check=non_empty)
    qos: Optional[str] = setting("normal", check=non_empty)
    timeout_min: Optional[int] = setting("60", at_least=1)   # null: sweep.timeout_s + SLURM_START_MARGIN_S
    gpus_per_node: int = setting("1", at_least=0)
    cpus_per_task: int = setting("8", at_least=1)
    mem_gb: Optional[float] = setting("32", above=0.0)
    array_parallelism: int = setting("64", at_least=1)
    job_arrays: bool = setting("true")
    setup: Optional[List[str]] = setting("['source ~/venvs/bnexp/bin/activate']")
    additional_parameters: Optional[Dict[str, Any]] = setting("{constraint:a100}")


def _slurm_defaults() -> dict:
    return OmegaConf.to_container(OmegaConf.load(SLURM_DEFAULTS_FILE))


@dataclass
class SweepConfig:
    """The composed `sweep` node of `python -m bnexp.sweep sweep=<name>` (conf/sweep/<name>.yaml)."""
    name: str = setting("my_sweep", check=non_empty)
    out_dir: str = setting("outputs/sweeps/my_sweep", check=non_empty)   # run dirs go to <out_dir>/runs/<run id>
    # one run per visible GPU, else 1 (a CPU run already uses every core)
    workers: Any = setting("2", "auto", check=count_problem)
    threads_per_worker: Any = setting("2", "auto", check=count_problem)     # auto: the cores split between workers
    gpus: Any = setting("[0,1]", "auto", check=_gpus_problem)              # auto: every visible CUDA device
    timeout_s: Optional[float] = setting("1800", None, above=0.0)          # per run; past it the run is failed
    train_module: str = setting("bnexp.train", "bnexp.train", check=_module_problem)
    executor: str = setting("slurm", "local", choices=EXECUTORS)
    slurm: SlurmConfig = setting("{partition:gpu}", _slurm_defaults)  # a config composed by the sweep has them

    variants: Dict[str, Any] = setting("{correct_bn:[+variant=correct_bn]}", check=_variants_problem,
                                       each=_variant_problem, each_example="correct_bn=[+variant=correct_bn]")
    only_variants: Optional[List[str]] = setting("[correct_bn,no_bn]", None)
    models: Optional[List[str]] = setting("[airbench,vgg]", None, choices=_model_choices)
    # largest_lr mode: the smallest is the default start; best_lr mode: the initial grid of the tuning
    lrs: List[float] = setting("[0.05,0.2,0.8]", above=0.0)
    seeds: List[int] = setting("[0,1,2]", at_least=0, at_most=MAX_SEED, check=_seeds_problem)
    train_overrides: Optional[List[str]] = setting("[data=synthetic]", None, check=_overrides_problem)
    # a recipe's train.epochs, for sweep configs that pass it on with an interpolation (conf/sweep/recipe/)
    epochs: Optional[int] = setting("4", None, at_least=1)

    mode: str = setting("largest_lr", "grid", check=_mode_problem)
    # largest_lr mode (bnexp/sweep/largest_lr.py); null: see lr_search_range and largest_trainable's defaults
    lr_search_start: Optional[float] = setting("0.05", None, above=0.0)
    lr_search_ratio: Optional[float] = setting("1.414", None, above=1.0)
    lr_search_growth: Optional[float] = setting("2", None, above=1.0)
    lr_search_min: Optional[float] = setting("0.001", None, above=0.0)
    lr_search_max: Optional[float] = setting("12.8", None, above=0.0)
    trains_min_acc: Optional[float] = setting("0.2", None, at_least=0.0, at_most=1.0)
    # best_lr mode (bnexp/sweep/best_lr.py): each variant's lr tuned on tune_seeds over lrs, the grid extended
    # x tune_growth (null: 2) past its end while the best lr is there, within [lr_search_min, lr_search_max] (see
    # best_lr_range); then the seeds of `seeds` run at each variant's best lr
    tune_seeds: Optional[List[int]] = setting("[100]", None, at_least=0, at_most=MAX_SEED, check=_repeats_problem)
    tune_growth: Optional[float] = setting("2", None, above=1.0)


def lr_search_range(sweep_cfg: Mapping) -> tuple[float, float, float]:
    """(start, floor, cap) of the lr search a sweep config asks for: lr_search_start, else the grid's smallest lr
    (else 0.1); lr_search_min / lr_search_max, else bnexp/lr_search/largest_trainable.py's floor and cap, widened to
    take in the start."""
    defaults = largest_trainable.LrSearchSettings(start_lr=0.1)
    start = sweep_cfg.get("lr_search_start")
    start = float(start) if start is not None else min((float(lr) for lr in sweep_cfg.get("lrs") or []),
                                                       default=defaults.start_lr)
    floor, cap = sweep_cfg.get("lr_search_min"), sweep_cfg.get("lr_search_max")
    floor = float(floor) if floor is not None else min(defaults.min_lr, start)
    cap = float(cap) if cap is not None else max(defaults.max_lr, start)
    return start, floor, cap


def best_lr_range(sweep_cfg: Mapping) -> tuple[float, float]:
    """(floor, cap) of the best_lr tuning: lr_search_min / lr_search_max, else bnexp/lr_search/best_lr.py's
    defaults widened to take in the grid's lrs."""
    defaults = best_lr.TuningSettings(lrs=(0.1,), seeds=(0,))
    lrs = [float(lr) for lr in sweep_cfg.get("lrs") or []]
    floor, cap = sweep_cfg.get("lr_search_min"), sweep_cfg.get("lr_search_max")
    floor = float(floor) if floor is not None else min([defaults.min_lr, *lrs])
    cap = float(cap) if cap is not None else max([defaults.max_lr, *lrs])
    return floor, cap


def _best_lr_problems(values: Mapping) -> list[str]:
    """The best_lr mode's rules: tuning seeds apart from the fresh ones, and an initial grid within the bounds."""
    tune_seeds, seeds = values["tune_seeds"], values["seeds"]
    if not tune_seeds:
        given = "sweep.tune_seeds=[] is empty" if tune_seeds == [] else "sweep.tune_seeds is not set"
        return [f"{given}: sweep.mode=best_lr tunes each variant's lr on these seeds; e.g. sweep.tune_seeds=[100] "
                "(+sweep.tune_seeds=[100] where the sweep config leaves the key out)"]
    problems = []
    if shared := sorted(set(tune_seeds) & set(seeds)):
        problems.append(f"sweep.tune_seeds and sweep.seeds share {_show(shared)}: the fresh seeds at the best lr "
                        "must not be the seeds that chose it (selection bias); e.g. sweep.tune_seeds=[100] "
                        "sweep.seeds=[0,1,2]")
    floor, cap = best_lr_range(values)
    outside = [lr for lr in values["lrs"] if not floor <= lr <= cap]
    if outside:
        problems.append(f"sweep.lrs holds {_show(outside)}, outside the tuning's bounds sweep.lr_search_min="
                        f"{floor:g} and sweep.lr_search_max={cap:g}; widen the bounds or move the lrs")
    return problems


def _cross_key_problems(values: Mapping) -> list[str]:
    """Rules between keys, checked once every key is valid on its own."""
    problems = []
    if values["mode"] in ("grid", "best_lr") and not values["lrs"]:
        needs = "the grid needs" if values["mode"] == "grid" else "sweep.mode=best_lr tunes over"
        problems.append(f"sweep.lrs=[] is empty: {needs} at least one lr; e.g. sweep.lrs=[0.05,0.2,0.8]")
    unknown = [label for label in values["only_variants"] or [] if label not in values["variants"]]
    if unknown:
        problems.append(f"sweep.only_variants names unknown variants {unknown}; known: {list(values['variants'])}")
    slurm_limit, timeout_s = values["slurm"]["timeout_min"], values["timeout_s"]
    if values["executor"] != "local" and slurm_limit is not None and timeout_s is not None \
            and slurm_limit * 60 < timeout_s + SLURM_START_MARGIN_S:
        problems.append(f"sweep.slurm.timeout_min={slurm_limit} would end a job before sweep.timeout_s={timeout_s:g} "
                        "ends its run; e.g. sweep.slurm.timeout_min="
                        f"{math.ceil((timeout_s + SLURM_START_MARGIN_S) / 60)} (or null, which derives it)")
    if values["mode"] == "best_lr":
        return problems + _best_lr_problems(values)
    start, floor, cap = lr_search_range(values)
    if not floor <= start <= cap:
        problems.append(f"sweep.lr_search_min, lr_search_start and lr_search_max come to {floor:g}, {start:g} and "
                        f"{cap:g}; the search needs lr_search_min <= lr_search_start <= lr_search_max, "
                        "e.g. sweep.lr_search_min=0.001 sweep.lr_search_start=0.05 sweep.lr_search_max=12.8")
    return problems


# ---------------------------------------------------------------- the check

def check_sweep_config(sweep_cfg: Any) -> tuple[dict, list[str]]:
    """(the config as a plain dict with the defaults filled in, every problem as one line). Works on a composed
    DictConfig and on a plain dict."""
    values = OmegaConf.to_container(sweep_cfg, resolve=True) if isinstance(sweep_cfg, DictConfig) else sweep_cfg
    if not isinstance(values, Mapping):
        return {}, [f"the sweep config is {_show(values)}, not a mapping of keys (see conf/sweep/smoke.yaml)"]
    problems, values = renamed_problems(values)
    filled = _check_node(values, SweepConfig, "sweep.", problems)
    if not problems:
        problems.extend(_cross_key_problems(filled))
    return filled, problems


def validate_sweep_config(sweep_cfg: Any) -> DictConfig:
    """The checked config with the defaults filled in; raises ConfigError listing every problem, one a line."""
    filled, problems = check_sweep_config(sweep_cfg)
    if problems:
        raise ConfigError("\n".join(problems))
    return OmegaConf.create(filled)




def _check_node(values: Mapping, schema: type, prefix: str, problems: list[str]) -> dict:
    known = {schema_field.name: schema_field for schema_field in dataclasses.fields(schema)}
    for key in values:
        if key not in known:
            problems.append(_describe_unknown_key(prefix, str(key), list(known)))
    hints = type_hints(schema)
    filled: dict[str, Any] = {}
    for name, schema_field in known.items():
        key, rules = prefix + name, schema_field.metadata
        example = f"; e.g. {key}={rules['example']}"
        annotation = hints[name]
        nested = dataclasses.is_dataclass(annotation)
        if name not in values:
            default = rules["default"]() if callable(rules["default"]) else rules["default"]
            if default is REQUIRED:
                problems.append(f"{key} is not set{example}")
            elif nested:
                filled[name] = _check_node(default, annotation, key + ".", problems)
            else:
                filled[name] = default
            continue
        value = values[name]
        if nested:
            if not isinstance(value, Mapping):
                problems.append(f"{key}={_show(value)} is not a mapping of keys{example}")
                continue
            filled[name] = _check_node(value, annotation, key + ".", problems)
            continue
        problem = _value_problem(value, annotation, rules)
        if problem:
            problems.append(f"{key}={_show(value)} {problem}{example}")
        elif "each" in rules:
            problems.extend(f"{key}.{item_key}={_show(item)} {item_problem}; e.g. {key}.{rules['each_example']}"
                            for item_key, item in value.items() if (item_problem := rules["each"](item_key, item)))
        filled[name] = value
    return filled


def _kind(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without Optional, whether null is allowed)."""
    if typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation):
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None)), True
    return annotation, False


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _is(value: Any, kind: Any) -> bool:
    """Strict types: a bool is never a number here, an int is a float."""
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, {float: (int, float)}.get(kind, kind))


def _value_problem(value: Any, annotation: Any, rules: Mapping) -> str | None:
    kind, optional = _kind(annotation)
    if value is None:
        return None if optional or kind is Any else "must be set"
    origin = typing.get_origin(kind)
    if origin is list:
        (item_kind,) = typing.get_args(kind)
        if not (isinstance(value, list) and all(_is(item, item_kind) for item in value)):
            return f"is not a list of {_TYPE_WORDS[item_kind].split(' ', 1)[1]}s"
        items = value
    elif origin is dict:
        if not isinstance(value, Mapping):
            return "is not a mapping"
        items = []
    elif kind is not Any:
        if not _is(value, kind):
            return f"is not {_TYPE_WORDS[kind]}"
        items = [value]
    else:
        items = []
    for item in items:
        problem = bound_problem(item, rules)
        if problem:
            # a list names its bad item: 'sweep.lrs=[0.1,-1] holds -1, which is too small (must be above 0)'
            return f"holds {_show(item)}, which {problem}" if origin is list else problem
    if "check" in rules:
        return rules["check"](value)
    return None




def describe_missing_key(dotted_key: str, override: str) -> str:
    """Why an override of a key that the composed sweep config does not have failed, in one line: a key of the
    schema wants a `+` (the sweep config leaves it out), any other gets a did-you-mean."""
    *parents, leaf = dotted_key.split(".")
    if parents == ["sweep"] and leaf in RENAMED_KEYS:
        return renamed_key_line(dotted_key, override)
    if dotted_key == "sweep.mode" and override.partition("=")[2].strip("'\"") in RENAMED_MODES:
        return renamed_mode_line(override.partition("=")[2].strip("'\""))
    schema, prefix = None, ""
    for index, part in enumerate(parents):
        hint = SweepConfig if index == 0 and part == "sweep" else type_hints(schema).get(part) if schema else None
        if not dataclasses.is_dataclass(hint):
            schema = None
            break
        schema, prefix = hint, prefix + part + "."
    known = [schema_field.name for schema_field in dataclasses.fields(schema)] if schema else []
    if leaf in known or not schema:
        return f"{dotted_key} is not in this sweep config; add it with a plus: +{override}"
    return _describe_unknown_key(prefix, leaf, known)


def _describe_unknown_key(prefix: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"{prefix}{key} is not a sweep config key; did you mean {prefix}{close[0]}?"
    return f"{prefix}{key} is not a sweep config key; the keys are {', '.join(known)}"


