"""The train config's schema: every key's type and allowed values, registered in Hydra's ConfigStore.

conf/train.yaml names `bnexp_train_schema` first in its defaults list, and the group options of `data`, `optim`
and `logger` (whose keys differ per option) name their own schema from the `bnexp_schema/<group>` group, so Hydra
types every value while it composes: `variant.stat_groups=2.5`, `=true` or `=two`, or a key that does not exist,
stop the command before a run dir exists. Hydra converts a quoted number ('4') to the int or float it spells.

Types alone do not say that an lr must be finite or a group count at least 1: each field also carries its rules
and a valid example, which `check_train_config` applies to a composed config (or to a plain one built in Python,
where it checks the types too, strictly: no strings for numbers, no 0/1 for booleans).
Booleans are typed `Any` and checked here, because OmegaConf would read `train.compile=2` as true.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from bnexp.config.keys import config_value

# The largest seed numpy accepts (seed_everything seeds numpy too).
MAX_SEED = 2**32 - 1
# Synthetic images are drawn in memory in one go (float32 noise: 12 kB an image, several temporaries).
MAX_SYNTHETIC_IMAGES = 100_000
CIFAR10_TRAIN_IMAGES, CIFAR10_TEST_IMAGES = 50_000, 10_000


def setting(example: str | None, **rules: Any) -> Any:
    """A schema field: no default (conf/ holds the defaults), a valid example for error messages, and rules:
    kind ('bool' for strict booleans in an `Any` field), at_least / at_most / above (bounds),
    choices (a tuple, or a function returning one, resolved when checked), check (value -> problem or None)."""
    return field(default=MISSING, metadata={"example": example, **rules})


def _norm_kinds() -> tuple:
    from bnexp.models import NORM_KINDS
    return NORM_KINDS


def _model_names() -> tuple:
    from bnexp.models import MODELS
    return tuple(sorted(MODELS))


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "is empty"


def _device_problem(value: str) -> str | None:
    if not (value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value)):
        return "is not a device bnexp trains on; use device=auto, cpu, cuda or cuda:N"
    if value.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            return "was requested but CUDA is not available; use device=auto or device=cpu"
        index = int(value.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return f"is not one of the {torch.cuda.device_count()} visible CUDA devices; use device=cuda:0"
    return None


def _betas_problem(value: list) -> str | None:
    return None if len(value) == 2 and all(0 <= beta < 1 for beta in value) else "must be two numbers in [0, 1)"


def _acc_targets_problem(value: list) -> str | None:
    return None if all(0 < target <= 1 for target in value) else "must hold accuracies in (0, 1]"


AUTO_OR_BOOL = ("auto", True, False)


@dataclass
class VariantConfig:
    name: str = setting("correct_bn", check=_non_empty)
    norm: str = setting("per_channel", choices=_norm_kinds)
    stat_groups: Optional[int] = setting("8", at_least=1)  # grouped only; must divide every layer's width
    # grouped only, instead of stat_groups: channels per statistic, so each layer gets C // channels_per_group groups
    channels_per_group: Optional[int] = setting("4", at_least=1)
    affine_per_channel: Any = setting("true", kind="bool")
    backend: str = setting("auto", choices=("auto", "torch", "triton"))
    # interventions (bnexp's norm layer only): which statistic a group pools, and gamma frozen at 1
    pooled: str = setting("mean", choices=("both", "mean", "var"))
    freeze_weight: Any = setting("true", kind="bool")
    # Not a setting: the run writes here each norm layer's statistic groups (layer name -> groups), so
    # config.yaml and the W&B config say what stat_groups / channels_per_group came to (a given value is replaced).
    stat_groups_by_layer: Optional[Dict[str, int]] = None


@dataclass
class TrainLoopConfig:
    epochs: int = setting("10", at_least=1)
    batch_size: int = setting("512", at_least=1)
    eval_batch_size: int = setting("1024", at_least=1)
    log_every: int = setting("25", at_least=1)
    amp: Any = setting("auto", choices=AUTO_OR_BOOL)
    channels_last: Any = setting("auto", choices=AUTO_OR_BOOL)
    compile: Any = setting("false", kind="bool")
    augment_pad: int = setting("4", at_least=0, at_most=31)  # reflect padding needs pad < 32 (the image side)
    augment_flip: Any = setting("true", kind="bool")


@dataclass
class DivergenceConfig:
    loss_factor: float = setting("5", at_least=1.0)


@dataclass
class ModelConfig:
    name: str = setting("airbench", choices=_model_names)
    width: float = setting("0.25", above=0.0, at_most=16.0)


@dataclass
class DataConfig:
    name: str = setting("synthetic", choices=lambda: tuple(GROUP_OPTION_SCHEMAS["data"]))
    train_size: Optional[int] = setting("5000", at_least=1)
    test_size: Optional[int] = setting("1000", at_least=1)
    subset_seed: int = setting("0", at_least=0, at_most=MAX_SEED)


@dataclass
class Cifar10DataConfig(DataConfig):
    train_size: Optional[int] = setting("5000", at_least=1, at_most=CIFAR10_TRAIN_IMAGES)
    test_size: Optional[int] = setting("1000", at_least=1, at_most=CIFAR10_TEST_IMAGES)
    data_dir: str = setting("data", check=_non_empty)
    download: Any = setting("true", kind="bool")


@dataclass
class FolderDataConfig(DataConfig):
    # train_size/test_size are checked against the images found, once the source is read
    path: str = setting("../shared/data/cifar10-jpeg.tar.xz", check=_non_empty)
    data_dir: str = setting("data", check=_non_empty)
    decode_workers: Optional[int] = setting("4", at_least=1, at_most=1024)


@dataclass
class SyntheticDataConfig(DataConfig):
    train_size: Optional[int] = setting("2048", at_least=1, at_most=MAX_SYNTHETIC_IMAGES)
    test_size: Optional[int] = setting("512", at_least=1, at_most=MAX_SYNTHETIC_IMAGES)


@dataclass
class OptimConfig:
    name: str = setting("sgd", choices=lambda: tuple(GROUP_OPTION_SCHEMAS["optim"]))
    lr: float = setting("0.1", at_least=0.0)
    weight_decay: float = setting("5e-4", at_least=0.0)
    label_smoothing: float = setting("0.1", at_least=0.0, at_most=1.0)
    warmup_frac: float = setting("0.1", at_least=0.0, at_most=1.0)
    schedule: str = setting("cosine", choices=("cosine", "linear"))


@dataclass
class SgdConfig(OptimConfig):
    momentum: float = setting("0.9", at_least=0.0, at_most=1.0)
    nesterov: Any = setting("true", kind="bool")


@dataclass
class AdamwConfig(OptimConfig):
    betas: List[float] = setting("[0.9,0.999]", check=_betas_problem)


@dataclass
class LoggerConfig:
    name: str = setting("none", choices=lambda: tuple(GROUP_OPTION_SCHEMAS["logger"]))


@dataclass
class NoLoggerConfig(LoggerConfig):
    pass


@dataclass
class WandbLoggerConfig(LoggerConfig):
    project: str = setting("bnexp", check=_non_empty)
    entity: Optional[str] = setting("my-team")
    mode: str = setting("auto", choices=("auto", "online", "offline", "disabled"))
    tags: List[str] = setting("[study1]")
    init_timeout: float = setting("30", above=0.0)
    console: str = setting("off", choices=("off", "auto", "wrap", "redirect", "wrap_raw", "wrap_emu"))
    run_name: Optional[str] = setting("my-run")


@dataclass
class InstrumentConfig:
    every: int = setting("50", at_least=0)
    loss_spike_factor: float = setting("3", at_least=1.0)
    loss_window: int = setting("64", at_least=1)
    acc_targets: List[float] = setting("[0.5,0.7,0.8]", check=_acc_targets_problem)
    activations: Any = setting("true", kind="bool")
    update_ratio: Any = setting("true", kind="bool")


@dataclass
class TrainConfig:
    """The composed config of `python -m bnexp.train` (conf/train.yaml and its groups)."""
    variant: VariantConfig = MISSING
    train: TrainLoopConfig = MISSING
    divergence: DivergenceConfig = MISSING
    seed: int = setting("0", at_least=0, at_most=MAX_SEED)
    device: str = setting(None, check=_device_problem)  # its problem text gives the choices
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    logger: LoggerConfig = MISSING
    instrument: InstrumentConfig = MISSING


# group -> option -> schema: conf/<group>/<option>.yaml extends /bnexp_schema/<group>/<option>
GROUP_OPTION_SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"cifar10": Cifar10DataConfig, "cifar10_folder": FolderDataConfig, "synthetic": SyntheticDataConfig},
    "optim": {"sgd": SgdConfig, "adamw": AdamwConfig},
    "logger": {"none": NoLoggerConfig, "wandb": WandbLoggerConfig},
}


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent; conf/ refers to them by name)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="bnexp_train_schema", node=TrainConfig)  # the first entry of conf/train.yaml's defaults
    for group, options in GROUP_OPTION_SCHEMAS.items():
        for option, schema in options.items():  # what conf/<group>/<option>.yaml extends
            store.store(group=f"bnexp_schema/{group}", name=option, node=schema)


register_schemas()


# ---------------------------------------------------------------- checking a config against the schema

def _schemas_at(prefix: str) -> list[type]:
    """The schemas whose fields are the keys below a dotted prefix ('': the top level); below `data`, `optim` and
    `logger` the fields of every option count. [] when the prefix is no config group."""
    if not prefix:
        return [TrainConfig]
    group = _type_hints(TrainConfig).get(prefix)  # groups hold no groups: a dotted prefix is none
    if not (isinstance(group, type) and dataclasses.is_dataclass(group)):
        return []
    return [group, *GROUP_OPTION_SCHEMAS.get(prefix, {}).values()]


def _locate(dotted_key: str) -> tuple[dataclasses.Field, type] | None:
    """The schema field of a dotted key (`variant.stat_groups`) and the schema that declares it, or None."""
    parent, _, leaf = dotted_key.rpartition(".")
    return next(((schema_field, schema) for schema in _schemas_at(parent)
                 for schema_field in dataclasses.fields(schema) if schema_field.name == leaf), None)


def describe_unknown_key(dotted_key: str, node_schema: type | None = None) -> str:
    """Why a key is refused: it belongs to another option of its group, or a close name exists, or the list of
    keys at its level."""
    import difflib

    parent, _, leaf = dotted_key.rpartition(".")
    options = GROUP_OPTION_SCHEMAS.get(parent, {})
    owners = [option for option, schema in options.items() if leaf in {f.name for f in dataclasses.fields(schema)}]
    if owners and node_schema in options.values():
        current = next(option for option, schema in options.items() if schema is node_schema)
        return (f"{dotted_key} is not a key of {parent}={current}; it belongs to "
                f"{' and '.join(f'{parent}={owner}' for owner in owners)}")
    names = sorted({f.name for schema in _schemas_at(parent) for f in dataclasses.fields(schema)})
    close = difflib.get_close_matches(leaf, names, n=1)
    prefix = f"{parent}." if parent else ""
    if close:
        return f"{dotted_key} is not a config key; did you mean {prefix}{close[0]}?"
    if names:
        return f"{dotted_key} is not a config key; the keys{' of ' + parent if parent else ''} are {', '.join(names)}"
    return f"{dotted_key} is not a config key (see conf/ for the keys)"


def describe_type_error(dotted_key: str, value: Any) -> str:
    """'<key>=<value> is not an integer; e.g. <key>=8', for a value Hydra could not convert to the key's type."""
    dotted_key = re.sub(r"\[\d+\]$", "", dotted_key)  # an item of a list: the list's key
    located = _locate(dotted_key)
    if located is None:
        return f"{dotted_key}={_show(value)} has the wrong type"
    schema_field, schema = located
    kind, _ = _kind_of(_type_hints(schema)[schema_field.name], schema_field.metadata)
    example = schema_field.metadata.get("example")
    return f"{dotted_key}={_show(value)} is not {_KIND_WORDS.get(kind, 'of its type')}" + \
        (f"; e.g. {dotted_key}={example}" if example else "")


def check_train_config(cfg: Any) -> list[str]:
    """Every problem of a train config, one line each (empty when it is valid): the key, the value and a valid
    example. Works on a composed config and on a plain one; keys the config does not have are not checked."""
    problems: list[str] = []
    _check_node(cfg, TrainConfig, "", problems)
    if not problems:  # relations between keys are only meaningful once every key is valid on its own
        problems.extend(_cross_key_problems(cfg))
    return problems


def _kind_of(annotation: Any, metadata: Mapping) -> tuple[str, bool]:
    """('int' | 'float' | 'str' | 'bool' | 'list:float' | 'list:str' | 'any', optional)."""
    optional = typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)
    if optional:
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if metadata.get("kind"):
        return metadata["kind"], optional
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return f"list:{item.__name__}", optional
    return {int: "int", float: "float", str: "str", bool: "bool"}.get(annotation, "any"), optional


def _show(value: Any) -> str:
    """A value as the command line writes it: true/false/null, repr for strings and numbers."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(item) for item in value) + "]"
    return repr(value)


def _spell(value: Any) -> str:
    """A choice as it is typed: strings bare, true/false for booleans."""
    return value if isinstance(value, str) else _show(value)


_KIND_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "list:float": "a list of numbers", "list:str": "a list of strings"}


# The Python types of each kind; a bool is an int to Python, but never a number here.
_KIND_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _type_ok(value: Any, kind: str) -> bool:
    if kind.startswith("list:"):
        return isinstance(value, (list, tuple)) and all(_type_ok(item, kind[5:]) for item in value)
    if kind not in _KIND_TYPES:
        return True
    return isinstance(value, _KIND_TYPES[kind]) and (kind == "bool" or not isinstance(value, bool))


def _value_problem(value: Any, kind: str, rules: Mapping) -> str | None:
    """What is wrong with one value (already known to be of its type), or None."""
    if kind == "float" and not math.isfinite(value):
        return "is not a finite number"
    if kind == "list:float" and not all(math.isfinite(item) for item in value):
        return "holds a number that is not finite"
    if "at_least" in rules and value < rules["at_least"]:
        return f"is too small (at least {rules['at_least']:g})"
    if "above" in rules and value <= rules["above"]:
        return f"is too small (must be above {rules['above']:g})"
    if "at_most" in rules and value > rules["at_most"]:
        return f"is too large (at most {rules['at_most']:g})"
    if "choices" in rules:
        choices = rules["choices"]() if callable(rules["choices"]) else rules["choices"]
        # compared with their types, so that 1 is not taken for true
        if not any(type(value) is type(choice) and value == choice for choice in choices):
            return f"is not one of {', '.join(_spell(choice) for choice in choices)}"
    if "check" in rules:
        return rules["check"](value)
    return None


def _node_schema(node: Any, base: type, key: str, problems: list[str]) -> type:
    """The schema of a group node: its own (a composed config knows it) or the one its `name` picks."""
    options = GROUP_OPTION_SCHEMAS.get(key)
    if not options:
        return base
    name, known = node.get("name"), OmegaConf.get_type(node)  # a plain dict's type is dict, no schema
    if isinstance(known, type) and issubclass(known, base) and known is not base:
        if name is not None and options.get(name) not in (None, known):
            problems.append(f"{key}.name={_show(name)} does not match the {key} group's choice; "
                            f"choose the {key} with {key}={name} instead")
        return known
    # an unknown name is reported by the check of the `name` field; the keys common to all options are still checked
    return options.get(name, base)


_type_hints = functools.cache(typing.get_type_hints)  # a schema's annotations, resolved once


def _check_node(node: Any, schema: type, prefix: str, problems: list[str]) -> None:
    hints = _type_hints(schema)
    for schema_field in dataclasses.fields(schema):
        name, key = schema_field.name, prefix + schema_field.name
        example = f"; e.g. {key}={schema_field.metadata['example']}" if schema_field.metadata.get("example") else ""
        if name not in node.keys():
            continue  # optional (e.g. a config built in Python without this group)
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, name):
            problems.append(f"{key} is not set{example}")
            continue
        try:
            value = node[name]
        except Exception as error:  # an interpolation that cannot be resolved
            problems.append(f"{key} cannot be resolved ({error}){example}")
            continue
        annotation = hints[name]
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            if not isinstance(value, (dict, DictConfig)):
                problems.append(f"{key}={_show(value)} is not a config group; e.g. {key}=<option> (see conf/{key}/)")
                continue
            _check_node(value, _node_schema(value, annotation, key, problems), key + ".", problems)
            continue
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        kind, optional = _kind_of(annotation, schema_field.metadata)
        if value is None:
            problem = None if optional else "is not allowed"
        elif not _type_ok(value, kind):
            problem = f"is not {_KIND_WORDS.get(kind, 'valid')}"
        else:
            problem = _value_problem(value, kind, schema_field.metadata)
        if problem:
            problems.append(f"{key}={_show(value)} {problem}{example}")


def _cross_key_problems(cfg: Any) -> Iterator[str]:
    """Rules between keys, all known before any data is read."""
    norm, stat_groups = config_value(cfg, "variant.norm"), config_value(cfg, "variant.stat_groups")
    channels_per_group = config_value(cfg, "variant.channels_per_group")
    if norm == "grouped" and stat_groups is None and channels_per_group is None:
        yield ("variant.stat_groups=null: variant.norm=grouped needs a group count or a group size; "
               "e.g. variant.stat_groups=8 or variant.channels_per_group=4")
    if stat_groups is not None and channels_per_group is not None:
        yield (f"variant.stat_groups={stat_groups} and variant.channels_per_group={channels_per_group} are both set; "
               "set one, e.g. variant.stat_groups=null")
    if channels_per_group is not None and norm != "grouped":
        yield (f"variant.channels_per_group={channels_per_group} applies to variant.norm=grouped only "
               f"(variant.norm={norm}); e.g. +variant=grouped_bn_by_size")
    pooled = config_value(cfg, "variant.pooled", "both")
    interventions = [f"variant.{key}={_show(value)}" for key, value, default in
                     (("pooled", pooled, "both"), ("freeze_weight", config_value(cfg, "variant.freeze_weight"), False))
                     if value not in (None, default)]
    if interventions and norm in ("none", "torch"):
        yield (f"{' and '.join(interventions)}: an option of bnexp's norm layer, which variant.norm={norm} does not "
               "use; e.g. variant.pooled=both variant.freeze_weight=false")
    if pooled != "both" and config_value(cfg, "variant.backend") == "triton":
        yield (f"variant.pooled={pooled} has no Triton kernels; e.g. variant.backend=torch (or auto, which runs it "
               "on the PyTorch path on every device)")
    model_name, width = config_value(cfg, "model.name"), config_value(cfg, "model.width")
    if norm == "grouped" and stat_groups is not None and model_name is not None and width is not None:
        widths = norm_layer_widths(model_name, width)
        if any(channels % stat_groups for channels in widths):
            divisors = [g for g in (1, 2, 4, 8, 16, 32) if all(channels % g == 0 for channels in widths)]
            yield (f"variant.stat_groups={stat_groups} does not divide every norm layer's width of model={model_name} "
                   f"at model.width={width:g} (widths {', '.join(map(str, sorted(set(widths))))}); "
                   f"e.g. variant.stat_groups={divisors[-1]}")
    if config_value(cfg, "optim.name") == "sgd" and config_value(cfg, "optim.nesterov") is True \
            and config_value(cfg, "optim.momentum") == 0:
        yield "optim.nesterov=true needs a momentum above 0; e.g. optim.momentum=0.9 (or optim.nesterov=false)"
    # data.train_size=null: all of cifar10's or synthetic's 50000 (a folder's count is only known once it is read)
    all_images = CIFAR10_TRAIN_IMAGES if config_value(cfg, "data.name") in ("cifar10", "synthetic") else None
    batch_size = config_value(cfg, "train.batch_size")
    train_size = config_value(cfg, "data.train_size", all_images)
    if batch_size is not None and train_size is not None and batch_size > train_size:
        yield (f"train.batch_size={batch_size} is larger than the {train_size} training images "
               f"(data.train_size); e.g. train.batch_size={min(512, train_size)}")


@functools.lru_cache(maxsize=64)
def norm_layer_widths(model_name: str, width: float) -> tuple[int, ...]:
    """The channel count of every norm layer of a model, from a copy built on the meta device (no memory,
    no init cost), so that a group count that does not divide one is refused before any data is read."""
    import torch

    from bnexp.models import build_model
    with torch.device("meta"):
        model = build_model(model_name, "torch", width=width)
    return tuple(module.num_features for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d))
