"""Bad config values, drawn from generators: every key of every type is refused before any data is read, with an
error that names the key and the value and gives a valid example; the command line exits 2 without a traceback.

In-process first (fast): a bad value is written into a composed config the way Hydra merges an override (the
schema refuses a wrong type there) or into a plain config (the Python API, where the validator checks the types).
Then a handful of real command lines."""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from bnexp.config import checks as config_checks
from bnexp.config import schema as config_schema
from bnexp.config.checks import check_train_config, describe_type_error, norm_layer_widths
from bnexp.config.compose import ConfigError, describe_composition_error, validate_train_config
from bnexp.config.schema import GROUP_OPTION_SCHEMAS, TrainConfig
from tests.helpers import REPO, TINY_RUN, compose_config, repo_env


# One composed config per option of each group with its own keys, so that every key of every option is drawn.
BASES = {
    "synthetic/sgd/none": ["+variant=grouped_bn", "variant.stat_groups=2", *TINY_RUN],
    "folder/adamw/wandb": ["+variant=grouped_bn", "variant.stat_groups=2", *TINY_RUN, "data=cifar10_folder",
                           "data.path=nowhere.tar.xz", "optim=adamw", "logger=wandb"],
    "cifar10/sgd/none": ["+variant=grouped_bn", "variant.stat_groups=2", *TINY_RUN, "data=cifar10"],
}


@pytest.fixture(scope="module")
def composed():
    return {name: compose_config(overrides) for name, overrides in BASES.items()}


def leaf_fields(node: DictConfig, schema: type, prefix: str = ""):
    """(dotted key, schema field, kind, optional) for every leaf of a composed config, with the schema its node has."""
    hints = config_checks.type_hints(schema)
    for schema_field in dataclasses.fields(schema):
        annotation = hints[schema_field.name]
        key = prefix + schema_field.name
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            child = node[schema_field.name]
            yield from leaf_fields(child, OmegaConf.get_type(child), key + ".")
        else:
            kind, optional = config_checks._kind_of(annotation, schema_field.metadata)
            yield key, schema_field, kind, optional


def all_leaves():
    cfgs = {name: compose_config(overrides) for name, overrides in BASES.items()}
    return [(name, *leaf) for name, cfg in cfgs.items() for leaf in leaf_fields(cfg, TrainConfig)]


LEAVES = all_leaves()
LEAF_IDS = sorted({key for _, key, *_ in LEAVES})


def test_the_schema_covers_every_key_of_every_config_in_conf(composed):
    """Every key conf/ defines is typed by the schema (a key added to conf/ without it would not compose)."""
    for cfg in composed.values():
        keys = set(flatten(OmegaConf.to_container(cfg)))
        typed = {key for _, key, *_ in LEAVES}
        assert keys <= typed, keys - typed
    assert {"optim.lr", "variant.stat_groups", "data.train_size", "data.decode_workers", "optim.betas",
            "logger.init_timeout", "train.amp", "instrument.acc_targets", "seed", "device"} <= set(LEAF_IDS)


def flatten(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


# ---------------------------------------------------------------- generators of bad values

WRONG_TEXT = st.text(alphabet="abcxyz_-", min_size=1, max_size=8).filter(
    lambda text: text not in ("auto", "true", "false", "cpu", "cuda", "none", "sgd", "adamw", "linear", "cosine",
                              "off", "wrap", "torch", "triton", "online", "offline", "disabled", "shared",
                              "grouped", "per_channel"))
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def bad_values(schema_field, kind: str, optional: bool):
    """Values that are wrong for this field: of another type, out of its bounds, not one of its choices."""
    rules = schema_field.metadata
    options = []
    if not optional and kind != "any":
        options.append(st.none())
    if kind == "int":
        options += [st.booleans(), WRONG_TEXT, st.floats(allow_nan=False).filter(lambda x: not float(x).is_integer()),
                    NON_FINITE, st.lists(st.integers(), max_size=2)]
        if "at_least" in rules:
            options.append(st.integers(max_value=int(rules["at_least"]) - 1))
        if "at_most" in rules:
            options.append(st.integers(min_value=int(rules["at_most"]) + 1))
    elif kind == "float":
        options += [st.booleans(), WRONG_TEXT, NON_FINITE, st.lists(st.floats(), max_size=2)]
        if "at_least" in rules:
            options.append(st.floats(max_value=rules["at_least"], exclude_max=True, allow_infinity=False))
        if "above" in rules:
            options.append(st.floats(max_value=rules["above"], allow_infinity=False, allow_nan=False))
        if "at_most" in rules:
            options.append(st.floats(min_value=rules["at_most"], exclude_min=True, allow_infinity=False))
    elif kind == "bool":
        options += [st.integers(), WRONG_TEXT, st.floats(allow_nan=False)]
    elif kind == "str":
        options += [st.lists(st.integers(), min_size=1, max_size=2)]
        if "choices" in rules:
            options += [WRONG_TEXT, st.booleans()]
        if rules.get("check") in (config_schema.non_empty, config_schema._path_component_problem):
            options.append(st.sampled_from(["", " ", "\t"]))
        if rules.get("check") is config_schema._path_component_problem:
            options.append(st.sampled_from(["..", ".", "a/b", "../../x", "a\\b", "/abs"]))
        if rules.get("check") is config_schema._device_problem:
            options.append(WRONG_TEXT)
    elif kind.startswith("list:"):
        options += [st.integers(), st.text(max_size=4)]
        if kind == "list:float":
            options += [st.lists(WRONG_TEXT, min_size=1, max_size=3), st.lists(NON_FINITE, min_size=1, max_size=2)]
            if rules.get("check") is config_schema._acc_targets_problem:
                options.append(st.lists(st.floats(min_value=1.0, exclude_min=True, allow_infinity=False),
                                        min_size=1, max_size=3))
            if rules.get("check") is config_schema._betas_problem:
                options += [st.lists(st.floats(0, 0.99), min_size=3, max_size=4),
                            st.lists(st.floats(1.0, 5.0), min_size=2, max_size=2)]
        else:
            options.append(st.lists(st.lists(st.integers(), min_size=1), min_size=1, max_size=2))
    elif "choices" in rules:  # an `Any` field with choices (train.amp, train.channels_last)
        options += [WRONG_TEXT, st.integers(), st.none()]
    return st.one_of(options)


def leaf_and_bad_value():
    return st.sampled_from(LEAVES).flatmap(
        lambda leaf: st.tuples(st.just(leaf), bad_values(leaf[2], leaf[3], leaf[4])))


def plain(cfg: DictConfig):
    """The same config without the schema, as a user of the Python API might build it."""
    return OmegaConf.create(OmegaConf.to_container(cfg))


def names_the_key(problems: list[str], key: str) -> bool:
    return any(problem.startswith(key) for problem in problems)


# ---------------------------------------------------------------- every key, every type: in-process

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=leaf_and_bad_value())
def test_a_bad_value_of_any_key_is_refused_naming_the_key(composed, drawn):
    (base, key, _schema_field, _kind, _optional), bad = drawn
    # The Python API: a plain config with the bad value is refused by the validator, naming key and value.
    untyped = plain(composed[base])
    OmegaConf.update(untyped, key, bad, force_add=True)
    problems = check_train_config(untyped)
    assert names_the_key(problems, key), (key, bad, problems)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_train_config(untyped)
    # The command line: Hydra merges an override into the typed config; the schema refuses a wrong type there
    # (and the one-line message names the key), anything else is refused by the validator.
    typed = copy.deepcopy(composed[base])
    try:
        OmegaConf.update(typed, key, bad, merge=True)
    except ValidationError:
        assert describe_type_error(key, bad).startswith(f"{key}=")
        return
    assert names_the_key(check_train_config(typed), key), (key, bad, OmegaConf.select(typed, key))


def good_values(schema_field, kind: str, optional: bool):
    rules = schema_field.metadata
    if "choices" in rules:
        choices = rules["choices"]() if callable(rules["choices"]) else rules["choices"]
        return st.sampled_from(list(choices))
    if kind == "int":
        return st.integers(int(rules.get("at_least", 0)), int(min(rules.get("at_most", 10**6), 10**6)))
    if kind == "float":
        low = rules.get("at_least", rules.get("above", 0.0))
        return st.floats(low, min(rules.get("at_most", 1e6), 1e6), exclude_min="above" in rules)
    if kind == "bool":
        return st.booleans()
    return st.nothing()


GROUP_NAMES = {f"{group}.name" for group in GROUP_OPTION_SCHEMAS}  # fixed by the option the config was built from


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=st.sampled_from([leaf for leaf in LEAVES if leaf[1] not in GROUP_NAMES
                              and (leaf[3] in ("int", "float", "bool") or "choices" in leaf[2].metadata)])
       .flatmap(lambda leaf: st.tuples(st.just(leaf), good_values(leaf[2], leaf[3], leaf[4]))))
def test_a_value_within_the_rules_is_accepted(composed, drawn):
    """The checks are not stricter than the schema says: a value of the right type within its bounds passes
    (the rules between keys, such as a batch larger than the data, are tested on their own)."""
    (base, key, *_), good = drawn
    typed = copy.deepcopy(composed[base])
    OmegaConf.update(typed, key, good, merge=True)
    problems = []
    config_checks._check_node(typed, TrainConfig, "", problems)
    assert not problems, (key, good, problems)


@pytest.mark.parametrize("value, message", [
    (2.5, r"variant\.stat_groups=2\.5 is not an integer; e\.g\. variant\.stat_groups=8"),
    (True, r"variant\.stat_groups=true is not an integer"),
    ("4", r"variant\.stat_groups='4' is not an integer"),
    (0, r"variant\.stat_groups=0 is too small \(at least 1\)"),
    ("two", r"variant\.stat_groups='two' is not an integer"),
])
def test_stat_groups_from_python_must_be_a_positive_int(value, message, tmp_path):
    cfg = plain(compose_config(["+variant=grouped_bn", *TINY_RUN]))
    cfg.variant.stat_groups = value
    with pytest.raises(ConfigError, match=message):
        validate_train_config(cfg)


@pytest.mark.parametrize("override, message", [
    ("variant.stat_groups=2.5", r"variant\.stat_groups=2\.5 is not an integer"),
    ("variant.stat_groups=true", r"variant\.stat_groups=true is not an integer"),
    ("variant.stat_groups=two", r"variant\.stat_groups='two' is not an integer"),
    ("train.epochs=3.5", r"train\.epochs=3\.5 is not an integer"),
    ("optim.lr=fast", r"optim\.lr='fast' is not a number"),
    ("train.epoch=3", r"train\.epoch is not a config key; did you mean train\.epochs\?"),
    ("data.decode_workers=2", r"data\.decode_workers is not a key of data=synthetic; it belongs to "
                              r"data=cifar10_folder"),
])
def test_wrong_types_and_unknown_keys_stop_hydra_naming_the_key(override, message):
    from hydra.errors import ConfigCompositionException
    with pytest.raises(ConfigCompositionException) as caught:
        compose_config(["+variant=grouped_bn", *TINY_RUN, override])
    assert re.search(message, describe_composition_error(caught.value))


def test_a_quoted_number_on_the_command_line_is_the_number(tmp_path):
    """'4' from the command line is converted by the schema (Hydra's rule); config.yaml records the int."""
    cfg = compose_config(["+variant=grouped_bn", "variant.stat_groups='4'", *TINY_RUN])
    assert cfg.variant.stat_groups == 4 and type(cfg.variant.stat_groups) is int
    validate_train_config(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=nan"], r"optim\.lr=nan is not a finite number"),
    (["optim.lr=inf"], r"optim\.lr=inf is not a finite number"),
    (["data.train_size=-5"], r"data\.train_size=-5 is too small"),
    (["data.test_size=0"], r"data\.test_size=0 is too small"),
    (["data.train_size=1000000000000"], r"data\.train_size=1000000000000 is too large \(at most 100000\)"),
    (["data=cifar10", "data.train_size=60000"], r"data\.train_size=60000 is too large \(at most 50000\)"),
    (["variant.stat_groups=0"], r"variant\.stat_groups=0 is too small"),
    (["variant.stat_groups=3"], r"variant\.stat_groups=3 does not divide every norm layer's width"),
    (["variant.stat_groups=null"], r"variant\.norm=grouped needs a group count"),
    (["train.batch_size=512"], r"train\.batch_size=512 is larger than the 256 training images"),
    (["instrument.sharpness_batch_size=512"],
     r"instrument\.sharpness_batch_size=512 is larger than the 256 training images"),
    (["instrument.sharpness_every=-1"], r"instrument\.sharpness_every=-1 is too small"),
    (["optim=adamw", "optim.betas=[0.9]"], r"optim\.betas=\[0\.9\] must be two numbers"),
    (["train.compile=2"], r"train\.compile=2 is not true or false"),
])
def test_the_issues_bad_numbers_are_config_errors_before_any_data_is_read(overrides, message, tmp_path,
                                                                          monkeypatch):
    from bnexp.train import loop as trainer
    from bnexp.train.run import train

    def no_data(*_):
        raise AssertionError("the data was read before the config was checked")

    monkeypatch.setattr(trainer, "load_dataset", no_data)
    cfg = compose_config(["+variant=grouped_bn", "variant.stat_groups=2", *TINY_RUN, *overrides])
    with pytest.raises(ConfigError, match=message):
        train(cfg, str(tmp_path))


@settings(max_examples=60, deadline=None)
@given(model=st.sampled_from(["airbench", "vgg", "resnet18"]), width=st.sampled_from([0.125, 0.25, 0.5, 1.0]),
       stat_groups=st.integers(1, 300))
def test_stat_groups_is_refused_exactly_when_it_does_not_divide_a_norm_layer(model, width, stat_groups):
    """Against the widths of the real model (built on the CPU), not the meta-device copy the check uses."""
    import torch

    from bnexp.models import build_model
    real = build_model(model, "torch", width=width)
    widths = [m.num_features for m in real.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert list(norm_layer_widths(model, width)) == widths
    cfg = {"variant": {"name": "grouped_bn", "norm": "grouped", "stat_groups": stat_groups},
           "model": {"name": model, "width": width}}
    refused = any("does not divide" in problem for problem in check_train_config(cfg))
    assert refused == any(channels % stat_groups for channels in widths)


def test_a_crash_inside_a_run_is_not_taken_for_a_config_error():
    """The CLI gives Hydra's errors one line and exit 2, but an exception out of the run keeps its traceback."""
    from hydra.errors import MissingConfigException

    from bnexp.train.cli import _raised_by_the_run, main
    with pytest.raises(Exception) as inside:
        main.__wrapped__(compose_config(TINY_RUN))  # no Hydra run: fails inside the task function
    assert _raised_by_the_run(inside.value)
    with pytest.raises(MissingConfigException) as composing:
        compose_config(["+variant=wrong_bn"])
    assert not _raised_by_the_run(composing.value)
    assert describe_composition_error(composing.value).startswith("there is no variant 'wrong_bn'")
    assert describe_composition_error(RuntimeError("a crash")) is None


# ---------------------------------------------------------------- real command lines

CLI_CASES = {
    "unknown variant": (["+variant=wrong_bn"], r"there is no variant 'wrong_bn'.*correct_bn, .*grouped_bn.*"
                                               r"e\.g\. \+variant="),
    "variant without the plus": (["variant=grouped_bn"], r"variant is not chosen by default, so it is added with "
                                                         r"a plus: \+variant=grouped_bn"),
    "bad override syntax": (["optim.lr=[0.1"], r"cannot read the command line.*key=value"),
    "stat_groups two": (["+variant=grouped_bn", "variant.stat_groups=two"],
                        r"variant\.stat_groups='two' is not an integer; e\.g\. variant\.stat_groups=8"),
    "lr nan": (["optim.lr=nan"], r"optim\.lr=nan is not a finite number; e\.g\. optim\.lr=0\.1"),
}


def test_the_command_line_exits_2_with_one_line_and_no_traceback(tmp_path):
    """Real processes, all started at once. The data source does not exist: touching it would be a different
    error, so each message also shows that nothing was read before the config was refused."""
    env = repo_env()
    env.pop("HYDRA_FULL_ERROR", None)
    missing_source = ["data=cifar10_folder", f"data.path={tmp_path / 'missing.tar.xz'}", "data.train_size=256"]
    processes = {
        name: subprocess.Popen([sys.executable, "-m", "bnexp.train", *missing_source, *arguments,
                                f"hydra.run.dir={tmp_path / name.replace(' ', '_')}"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (arguments, _) in CLI_CASES.items()}
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        message = CLI_CASES[name][1]
        assert process.returncode == 2, (name, stderr[-2000:])
        assert "Traceback" not in stderr and "does not exist" not in stderr, (name, stderr[-2000:])
        error_lines = [line for line in stderr.splitlines() if line.startswith("bnexp.train: error:")]
        assert len(error_lines) == 1 and re.search(message, error_lines[0]), (name, stderr[-2000:])
