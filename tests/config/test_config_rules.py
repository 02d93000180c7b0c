"""The rules a type cannot say, each checked in one place (bnexp/config/checks.py) and named in one line: the
grouping of the statistics, the layer widths, names that become folders, bounds, keys added with `+`, and the
messages a user meets on the command line (a typo in a variant, a value Hydra needs quoted)."""
from __future__ import annotations

import copy
import functools
import re
import shlex

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf

from bnexp.config.checks import check_train_config
from bnexp.config.compose import describe_composition_error
from bnexp.models import NORM_KINDS, build_model
from bnexp.norm import BatchNorm2d
from tests.helpers import TINY_RUN, compose_config


def problems_of(overrides: list[str], *, with_torch: bool = True) -> list[str]:
    return check_train_config(compose_config([*TINY_RUN, *overrides]), with_torch=with_torch)


@functools.cache
def tiny_run_config() -> dict:
    return OmegaConf.to_container(compose_config(TINY_RUN))


def plain_problems(variant: dict, model: dict | None = None) -> list[str]:
    """A config built in Python, as a user of the API might: the variant and model keys that matter here."""
    cfg = copy.deepcopy(tiny_run_config())
    cfg["variant"].update(variant)
    cfg["model"].update(model or {})
    return check_train_config(cfg)


# ---------------------------------------------------------------- grouping: one place, and the builder agrees

@pytest.mark.parametrize("variant, message", [
    (dict(norm="grouped", stat_groups=2, channels_per_group=4),
     r"variant\.stat_groups=2 and variant\.channels_per_group=4 are both set; set one"),
    (dict(norm="per_channel", channels_per_group=4),
     r"variant\.channels_per_group=4 applies to variant\.norm=grouped only \(variant\.norm=per_channel\)"),
    (dict(norm="grouped", channels_per_group=0), r"variant\.channels_per_group=0 is too small \(at least 1\)"),
    (dict(norm="grouped", channels_per_group="four"), r"variant\.channels_per_group='four' is not an integer"),
    (dict(norm="grouped", stat_groups=None, channels_per_group=None),
     r"variant\.norm=grouped needs a group count or a group size; e\.g\. variant\.stat_groups=8"),
    (dict(norm="grouped", stat_groups=None, channels_per_group=3),
     r"variant\.channels_per_group=3 does not divide a layer of 8 channels.*e\.g\. 2 or 4"),
    (dict(norm="grouped", stat_groups=3), r"variant\.stat_groups=3 does not divide every norm layer's width"),
])
def test_each_grouping_rule_is_refused_by_the_config_check_naming_the_key(variant, message):
    problems = plain_problems(variant)
    assert len(problems) == 1 and re.search(message, problems[0]), problems


@pytest.mark.parametrize("norm", NORM_KINDS)
@pytest.mark.parametrize("stat_groups", [None, 1, 3, 8])
@pytest.mark.parametrize("channels_per_group", [None, 1, 3, 16, 1000])
def test_a_config_the_checks_pass_builds_and_one_they_refuse_does_not_reach_the_builder(norm, stat_groups,
                                                                                        channels_per_group):
    """The builder trusts the checked config: whatever grouping the checks let through builds the model (on the
    meta device), so no run can pass the checks and then fail, or be silently changed, in build_model."""
    problems = plain_problems(dict(norm=norm, stat_groups=stat_groups, channels_per_group=channels_per_group),
                              dict(width=0.25))
    if problems:
        return
    with torch.device("meta"):
        model = build_model("airbench", norm, width=0.25, stat_groups=stat_groups,
                            channels_per_group=channels_per_group)
    if norm == "grouped" and channels_per_group is not None:  # the group size it was asked for, in every layer
        for layer in (module for module in model.modules() if isinstance(module, BatchNorm2d)):
            wider = layer.num_features > channels_per_group
            assert layer.stat_groups * channels_per_group == layer.num_features if wider else layer.stat_groups == 1


# ---------------------------------------------------------------- model.width

@pytest.mark.parametrize("model_name, smallest", [("airbench", 0.03125), ("vgg", 0.015625), ("resnet18", 0.015625)])
def test_a_width_that_would_hold_every_layer_at_the_minimum_is_refused(model_name, smallest):
    """Below the width at which the widest layer has 8 channels every layer is the 8-channel minimum: the same
    net at every smaller width, not the one the recorded width names. The smallest width itself is allowed."""
    assert not problems_of([f"model={model_name}", f"model.width={smallest}"])
    for too_small in (smallest * 0.99, 0.001):
        problems = problems_of([f"model={model_name}", f"model.width={too_small}"])
        assert len(problems) == 1, problems
        assert re.match(rf"model\.width={too_small:g} is too small for model={model_name}: .*8-channel minimum; "
                        rf"e\.g\. model\.width={smallest:g}", problems[0]), problems


# ---------------------------------------------------------------- names that become folders of the run dir

@pytest.mark.parametrize("key", ["variant.name", "model.name"])
@pytest.mark.parametrize("name", ["../../../x", "a/b", "/abs", "..", ".", "a\\b"])
def test_a_name_that_would_place_the_run_outside_runs_is_refused(key, name):
    cfg = OmegaConf.create(OmegaConf.to_container(compose_config(TINY_RUN)))
    OmegaConf.update(cfg, key, name)
    problems = check_train_config(cfg, with_torch=False)
    assert any(problem.startswith(f"{key}={name!r} names a folder of the run dir, so it may not contain /")
               for problem in problems), problems


def test_names_that_are_plain_folders_are_accepted():
    assert not problems_of(["variant.name=grouped_bn_4ch", "+variant=grouped_bn_by_size"])
    assert not problems_of(["variant.name=my.variant-2"])


# ---------------------------------------------------------------- bounds

@pytest.mark.parametrize("override, message", [
    ("train.epochs=99999999999999999999", r"train\.epochs=99999999999999999999 is too large \(at most 1000000\)"),
    ("train.epochs=1000001", r"train\.epochs=1000001 is too large \(at most 1000000\)"),
    ("instrument.loss_window=99999999999999999999",
     r"instrument\.loss_window=99999999999999999999 is too large \(at most 9223372036854775807\)"),
    ("train.eval_batch_size=99999999999999999999", r"train\.eval_batch_size=.* is too large \(at most 1000000\)"),
    ("optim.lr=0", r"optim\.lr=0\.0 is too small \(must be above 0\); e\.g\. optim\.lr=0\.1"),
    ("optim.lr=-0.1", r"optim\.lr=-0\.1 is too small \(must be above 0\)"),
    ("optim.lr=1e400", r"optim\.lr=inf is not a finite number"),
    ("seed=4294967296", r"seed=4294967296 is too large \(at most 4294967295\); e\.g\. seed=0"),
    ("data.subset_seed=-1", r"data\.subset_seed=-1 is too small \(at least 0\)"),
])
def test_values_out_of_bounds_are_refused_with_the_bound_written_as_typed(override, message):
    problems = problems_of([override], with_torch=False)
    assert len(problems) == 1 and re.match(message, problems[0]), problems
    assert "e+" not in problems[0]  # no 4.29497e+09


def test_bounds_are_inclusive_where_they_say_at_most():
    assert not problems_of(["train.epochs=1000000", "seed=4294967295", "optim.lr=1e-12"], with_torch=False)


# ---------------------------------------------------------------- keys added with +

@pytest.mark.parametrize("override, message", [
    ("+train.epoch=3", r"train\.epoch is not a config key; did you mean train\.epochs\?"),
    ("+optim.learning_rate=0.1", r"optim\.learning_rate is not a config key"),
    ("+seeds=3", r"seeds is not a config key; did you mean seed\?"),
    ("+data.decode_workers=2", r"data\.decode_workers is not a key of data=synthetic; it belongs to "
                               r"data=cifar10_folder"),
])
def test_a_key_the_schema_lacks_is_refused_when_added_with_a_plus(override, message):
    """Hydra adds a key given with a plus to the config, which would record it in config.yaml and read nothing."""
    problems = problems_of([override], with_torch=False)
    assert len(problems) == 1 and re.match(message, problems[0]), problems


def test_hydras_own_settings_beside_the_run_config_are_not_unknown_keys():
    cfg = OmegaConf.to_container(compose_config(TINY_RUN))
    assert not check_train_config({**cfg, "hydra": {"run": {"dir": "x"}}}, with_torch=False)


# ---------------------------------------------------------------- the command line's messages

@pytest.mark.parametrize("typo, meant", [("sahred_bn", "shared_bn"), ("corect_bn", "correct_bn"),
                                         ("grouped", "grouped_bn")])
def test_a_variant_typo_gets_a_did_you_mean(typo, meant):
    with pytest.raises(MissingConfigException) as caught:
        compose_config([f"+variant={typo}"])
    message = describe_composition_error(caught.value)
    assert f"there is no variant '{typo}'" in message
    assert f"did you mean {meant}?" in message and message.endswith(f"e.g. +variant={meant}")


@pytest.mark.parametrize("path", ["/data/copy (2)/cifar10-jpeg.tar.xz", "/data/a,b/c.tar.xz", "/data/a=b.tar.xz",
                                  "/data/[x]/c.tar.xz", "/data/ünï/c.tar.xz", "/data/it's/c.tar.xz",
                                  "/data/(x)\\"])
def test_the_quoting_hint_shows_an_override_that_works(path):
    """The hint gives the override with Hydra's quotes inside the shell's; split as a shell splits it, it is one
    argument that Hydra reads back as the very path."""
    with pytest.raises((OverrideParseException, ConfigCompositionException)) as caught:
        compose_config(["data=cifar10_folder", f"data.path={path}"])
    message = describe_composition_error(caught.value)
    suggestion = re.search(r"inside the shell's(?: quotes)?: (.+)$", message)
    assert suggestion, message
    (argument,) = shlex.split(suggestion.group(1))
    assert OverridesParser.create().parse_override(argument).value() == path
    assert compose_config(["data=cifar10_folder", argument]).data.path == path


def test_a_comma_in_a_number_says_sweep_not_quote():
    with pytest.raises(ConfigCompositionException) as caught:
        compose_config(["optim.lr=0.1,0.2"])
    assert describe_composition_error(caught.value) == ("optim.lr=0.1,0.2: a comma separates values to sweep over, "
                                                        "with --multirun; a list is written [a,b]")


def test_an_argument_the_shell_split_at_a_space_gets_the_quoting_hint():
    with pytest.raises(OverrideParseException) as caught:
        compose_config(["data=cifar10_folder", "data.path=/data/my", "copy/cifar10-jpeg.tar.xz"])
    message = describe_composition_error(caught.value)
    assert "cannot read the command line at 'copy/cifar10-jpeg.tar.xz'" in message
    (example,) = re.findall(r"\((\'data\.path=.*\')\)$", message)
    (argument,) = shlex.split(example)
    assert compose_config(["data=cifar10_folder", argument]).data.path == "/path/to/my data (2)/cifar10-jpeg.tar.xz"


def test_the_early_check_leaves_only_the_rules_that_need_torch():
    """with_torch=False finds every problem the full check finds, except the model and norm names and layer
    widths (which need the models, so torch)."""
    assert problems_of(["optim.lr=nan"], with_torch=False) == problems_of(["optim.lr=nan"])
    assert not problems_of(["model.name=resnet"], with_torch=False)
    assert problems_of(["model.name=resnet"]) == ["model.name='resnet' is not one of airbench, resnet18, vgg; "
                                                  "e.g. model.name=airbench"]
    assert not problems_of(["model.width=0.001"], with_torch=False)
