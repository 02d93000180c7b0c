"""The run records the statistic groups each norm layer got: in summary.json and in the saved config."""
import json

import yaml

from bnexp.trainer import train
from tests.helpers import TINY_RUN, compose_config


def test_grouped_by_size_run_records_each_layers_groups(tmp_path):
    # width 0.125: layers of 8, 8, 32 and 32 channels; 4 channels per statistic -> 2, 2, 8 and 8 groups
    cfg = compose_config(["+variant=grouped_bn_by_size", "variant.channels_per_group=4", *TINY_RUN])
    summary = train(cfg, str(tmp_path))
    assert summary["status"] == "finished", summary["error"]
    expected = {"stem.1": 2, "groups.0.norm1": 2, "groups.0.norm2": 2, "groups.1.norm1": 8, "groups.1.norm2": 8,
                "groups.2.norm1": 8, "groups.2.norm2": 8}
    assert json.loads((tmp_path / "summary.json").read_text())["stat_groups_by_layer"] == expected
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["variant"]["stat_groups_by_layer"] == expected
    assert saved["variant"]["name"] == "grouped_bn_4ch"


def test_shared_and_unnormalised_runs_record_their_groups(tmp_path):
    shared = train(compose_config(["+variant=shared_bn", *TINY_RUN]), str(tmp_path / "shared"))
    assert set(shared["stat_groups_by_layer"].values()) == {1} and len(shared["stat_groups_by_layer"]) == 7
    no_bn = train(compose_config(["+variant=no_bn", *TINY_RUN]), str(tmp_path / "no_bn"))
    assert no_bn["stat_groups_by_layer"] == {}
    assert yaml.safe_load((tmp_path / "no_bn" / "config.yaml").read_text())["variant"]["stat_groups_by_layer"] == {}
