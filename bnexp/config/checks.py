"""Checking a train config against its schema (bnexp/config/schema.py): each key's type and rules, the keys the
schema does not have, the rules between keys, and the one-line messages that name the key, the value and a fix.

A composed config has its types checked by Hydra already; a plain one built in Python gets them checked here,
strictly (no strings for numbers, no 0/1 for booleans). `check_train_config(cfg, with_torch=False)` is the early
check the command line makes before torch is imported: every rule but those that need torch or the model registry
(the model and norm names, a CUDA device, the rules on layer widths), which the full check adds.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import typing
from typing import Any, Iterator, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from bnexp.config.keys import config_value
from bnexp.config.schema import CIFAR10_TRAIN_IMAGES, GROUP_OPTION_SCHEMAS, TrainConfig

# The largest integer any key may hold: what torch, numpy and JSON readers take as an integer (64-bit).
LARGEST_INT = 2**63 - 1


def check_train_config(cfg: Any, *, with_torch: bool = True) -> list[str]:
    """Every problem of a train config, one line each (empty when it is valid): the key, the value and a valid
    example. Works on a composed config and on a plain one; keys the config does not have are not checked, keys
    the schema does not have are refused. with_torch=False leaves out the rules that import torch."""
    problems: list[str] = []
    _check_node(cfg, TrainConfig, "", problems, with_torch)
    if not problems:  # relations between keys are only meaningful once every key is valid on its own
        problems.extend(_cross_key_problems(cfg))
        if with_torch:
            problems.extend(_layer_width_problems(cfg))
    return problems


# ---------------------------------------------------------------- one key at a time

type_hints = functools.cache(typing.get_type_hints)  # a schema's annotations, resolved once

# Top-level keys that are not the run's: Hydra's own settings, in the config a Hydra callback is given.
_NOT_THE_RUNS = {"hydra"}


def _check_node(node: Any, schema: type, prefix: str, problems: list[str], with_torch: bool = True,
                unknown_keys: bool = True) -> None:
    """Each key of one node against its schema field, then (with unknown_keys) the node's keys the schema lacks."""
    hints = type_hints(schema)
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
            group_schema, known = _node_schema(value, annotation, key, problems)
            _check_node(value, group_schema, key + ".", problems, with_torch, unknown_keys=known)
            continue
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        kind, optional = _kind_of(annotation, schema_field.metadata)
        if value is None:
            problem = None if optional else "is not allowed"
        elif not _type_ok(value, kind):
            problem = f"is not {_KIND_WORDS.get(kind, 'valid')}"
        else:
            problem = _value_problem(value, kind, schema_field.metadata, with_torch)
        if problem:
            problems.append(f"{key}={_show(value)} {problem}{example}")
    if unknown_keys:
        # A key the schema lacks, such as `+train.epoch=3` (Hydra adds a key given with a plus): it would be
        # recorded in config.yaml and read by nothing.
        known = {schema_field.name for schema_field in dataclasses.fields(schema)}
        problems.extend(describe_unknown_key(prefix + name, schema) for name in node.keys()
                        if name not in known and not (not prefix and name in _NOT_THE_RUNS))


def _node_schema(node: Any, base: type, key: str, problems: list[str]) -> tuple[type, bool]:
    """The schema of a group node (its own, as a composed config knows it, or the one its `name` picks), and
    whether it is the option's own schema: under an unknown option name only the keys common to all options are
    checked, and no key is called unknown."""
    options = GROUP_OPTION_SCHEMAS.get(key)
    if not options:
        return base, True
    name, known = node.get("name"), OmegaConf.get_type(node)  # a plain dict's type is dict, no schema
    if isinstance(known, type) and issubclass(known, base) and known is not base:
        if name is not None and options.get(name) not in (None, known):
            problems.append(f"{key}.name={_show(name)} does not match the {key} group's choice; "
                            f"choose the {key} with {key}={name} instead")
        return known, True
    # an unknown name is reported by the check of the `name` field
    return options.get(name, base), name in options


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


def _value_problem(value: Any, kind: str, rules: Mapping, with_torch: bool = True) -> str | None:
    """What is wrong with one value (already known to be of its type), or None."""
    if kind == "list:float" and not all(math.isfinite(item) for item in value):
        return "holds a number that is not finite"
    if kind == "int" and abs(value) > LARGEST_INT:
        return f"is too large (at most {number_text(rules.get('at_most', LARGEST_INT))})"
    if not kind.startswith("list:"):
        problem = bound_problem(value, rules)
        if problem:
            return problem
    for rule in ("check", "check_with_torch") if with_torch else ("check",):
        problem = rules[rule](value) if rule in rules else None
        if problem:
            return problem
    return None


# ---------------------------------------------------------------- rules between keys

def _cross_key_problems(cfg: Any) -> Iterator[str]:
    """Rules between keys that need neither torch nor the models, all known before any data is read."""
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
    sharpness_batch_size = config_value(cfg, "instrument.sharpness_batch_size")
    if sharpness_batch_size is not None and train_size is not None and sharpness_batch_size > train_size:
        yield (f"instrument.sharpness_batch_size={sharpness_batch_size} is larger than the {train_size} training "
               f"images (data.train_size); e.g. instrument.sharpness_batch_size={min(512, train_size)}")


def _layer_width_problems(cfg: Any) -> Iterator[str]:
    """Rules on the widths of the model's norm layers (from a copy built on the meta device, so torch)."""
    from bnexp.models import MIN_CHANNELS, groups_for_width

    model_name, width = config_value(cfg, "model.name"), config_value(cfg, "model.width")
    if model_name is None or width is None:
        return
    widest = max(norm_layer_widths(model_name, 1.0))
    if width * widest < MIN_CHANNELS:
        # every layer would be held at the minimum: the same net at any smaller width, not the one named
        yield (f"model.width={width:g} is too small for model={model_name}: its widest layer ({widest} channels at "
               f"model.width=1) would have {width * widest:.3g}, and every layer would be held at the "
               f"{MIN_CHANNELS}-channel minimum; e.g. model.width={MIN_CHANNELS / widest:g} ({MIN_CHANNELS} channels "
               f"in every layer)")
        return
    norm, stat_groups = config_value(cfg, "variant.norm"), config_value(cfg, "variant.stat_groups")
    channels_per_group = config_value(cfg, "variant.channels_per_group")
    if norm != "grouped":
        return
    widths = norm_layer_widths(model_name, width)
    if stat_groups is not None and any(channels % stat_groups for channels in widths):
        divisors = [g for g in (1, 2, 4, 8, 16, 32) if all(channels % g == 0 for channels in widths)]
        yield (f"variant.stat_groups={stat_groups} does not divide every norm layer's width of model={model_name} "
               f"at model.width={width:g} (widths {', '.join(map(str, sorted(set(widths))))}); "
               f"e.g. variant.stat_groups={divisors[-1]}")
    if channels_per_group is not None:
        for channels in sorted(set(widths)):
            try:  # the rule of a group size is the models' own: a wider layer must be a multiple of it
                groups_for_width(channels, channels_per_group)
            except ValueError as error:
                yield str(error)
                break


@functools.lru_cache(maxsize=64)
def norm_layer_widths(model_name: str, width: float) -> tuple[int, ...]:
    """The channel count of every norm layer of a model, from a copy built on the meta device (no memory,
    no init cost), so that a group count that does not divide one is refused before any data is read."""
    import torch

    from bnexp.models import build_model
    with torch.device("meta"):
        model = build_model(model_name, "torch", width=width)
    return tuple(module.num_features for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d))


# ---------------------------------------------------------------- messages

def _schemas_at(prefix: str) -> list[type]:
    """The schemas whose fields are the keys below a dotted prefix ('': the top level); below `data`, `optim` and
    `logger` the fields of every option count. [] when the prefix is no config group."""
    if not prefix:
        return [TrainConfig]
    group = type_hints(TrainConfig).get(prefix)  # groups hold no groups: a dotted prefix is none
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


def key_kind(dotted_key: str) -> str | None:
    """The kind of value a dotted key holds ('int', 'str', 'list:float', ...), or None for no key of the schema."""
    located = _locate(dotted_key)
    if located is None:
        return None
    schema_field, schema = located
    return _kind_of(type_hints(schema)[schema_field.name], schema_field.metadata)[0]


def describe_type_error(dotted_key: str, value: Any) -> str:
    """'<key>=<value> is not an integer; e.g. <key>=8', for a value Hydra could not convert to the key's type."""
    dotted_key = re.sub(r"\[\d+\]$", "", dotted_key)  # an item of a list: the list's key
    located = _locate(dotted_key)
    if located is None:
        return f"{dotted_key}={_show(value)} has the wrong type"
    schema_field, schema = located
    kind, _ = _kind_of(type_hints(schema)[schema_field.name], schema_field.metadata)
    example = schema_field.metadata.get("example")
    return f"{dotted_key}={_show(value)} is not {_KIND_WORDS.get(kind, 'of its type')}" + \
        (f"; e.g. {dotted_key}={example}" if example else "")


def bound_problem(value: Any, rules: Mapping) -> str | None:
    """What is wrong with one scalar of its type against the rules every schema shares (finite, at_least / above /
    at_most, choices), in their one wording; None when nothing is. The train and the sweep schema both use it."""
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number"
    if "at_least" in rules and value < rules["at_least"]:
        return f"is too small (at least {number_text(rules['at_least'])})"
    if "above" in rules and value <= rules["above"]:
        return f"is too small (must be above {number_text(rules['above'])})"
    if "at_most" in rules and value > rules["at_most"]:
        return f"is too large (at most {number_text(rules['at_most'])})"
    if "choices" in rules:
        choices = rules["choices"]() if callable(rules["choices"]) else rules["choices"]
        # compared with their types, so that 1 is not taken for true
        if not any(type(value) is type(choice) and value == choice for choice in choices):
            return f"is not one of {', '.join(_spell(choice) for choice in choices)}"
    return None


def show_value(value: Any) -> str:
    """A value as the command line writes it: true/false/null, repr for strings and numbers, [a,b] for lists,
    {k:v} for mappings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{key}:{show_value(item)}" for key, item in value.items()) + "}"
    return repr(value)


_show = show_value


def _spell(value: Any) -> str:
    """A choice as it is typed: strings bare, true/false for booleans."""
    return value if isinstance(value, str) else _show(value)


def number_text(bound: int | float) -> str:
    """A bound as it is typed: an integer in full (4294967295, not 4.29497e+09), a float short (0.5, 1e-06)."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"
