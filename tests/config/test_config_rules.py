"""The rules a type cannot say, each checked in one place (bnexp/config/checks.py) and named in one line: the
grouping of the statistics against the model's layer widths, and the builder that trusts what the checks let
through."""
from __future__ import annotations

import copy
import functools
import re

import pytest
import torch
from omegaconf import OmegaConf

from bnexp.config.checks import check_train_config
from bnexp.models import NORM_KINDS, build_model
from bnexp.norm import BatchNorm2d
from tests.helpers import TINY_RUN, compose_config


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
