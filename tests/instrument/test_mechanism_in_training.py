"""The run records the statistic groups each norm layer got: in summary.json and in the saved config."""
import json

import pytest
import yaml

from bnexp.train.run import train
from tests.helpers import TINY_RUN, compose_config


@pytest.mark.slow
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


@pytest.mark.slow
def test_shared_and_unnormalised_runs_record_their_groups_and_mechanism_metrics(tmp_path):
    shared = train(compose_config(["+variant=shared_bn", *TINY_RUN]), str(tmp_path / "shared"))
    assert set(shared["stat_groups_by_layer"].values()) == {1} and len(shared["stat_groups_by_layer"]) == 7
    first = json.loads((tmp_path / "shared" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0
    # 7 norm layers and 7 activation calls (each conv group applies its GELU twice), and the head
    assert len([key for key in first if key.endswith("/out_std_ratio")]) == 7
    dead = [first[key] for key in first if key.endswith("/dead_frac")]
    assert len(dead) == 7 and "act/groups.2.act.call2/dead_frac" in first and "act/head/in_zero_frac" in first
    assert shared["final_mechanism_step"] == 0  # the only measure step of 4 with instrument.every=50
    assert shared["final_dead_frac"] == sum(dead) / 7
    assert shared["final_gamma_ratio"] is None  # one gamma per layer: no spread to measure
    no_bn = train(compose_config(["+variant=no_bn", *TINY_RUN]), str(tmp_path / "no_bn"))
    assert no_bn["stat_groups_by_layer"] == {}
    assert yaml.safe_load((tmp_path / "no_bn" / "config.yaml").read_text())["variant"]["stat_groups_by_layer"] == {}
