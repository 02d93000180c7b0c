"""The intervention variants (conf/variant/pooled_*_bn, frozen_gamma_*): each composes, builds the layers it says,
gets a distinct report label, and trains; their options are refused where they cannot apply."""
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from bnexp.config.compose import ConfigError
from bnexp.norm import BatchNorm2d
from bnexp.report.records import channels_per_statistic, variant_label
from bnexp.train.run import model_from_config, train
from tests.helpers import compose_config


def as_written(cfg) -> dict:
    """The variant block as a run dir's config.yaml reads back: plain values, interpolations resolved."""
    return {"variant": OmegaConf.to_container(cfg.variant, resolve=True)}

# variant file -> (pooled, freeze_weight, one statistic per layer?, the report's label)
INTERVENTIONS = {
    "pooled_mean_bn": ("mean", False, True, "pooled_mean_bn_g1"),
    "pooled_var_bn": ("var", False, True, "pooled_var_bn_g1"),
    "frozen_gamma_bn": ("both", True, False, "frozen_gamma_bn"),
    "frozen_gamma_grouped_bn": ("both", True, True, "frozen_gamma_grouped_bn_g1"),
}


@pytest.mark.parametrize("variant", sorted(INTERVENTIONS))
def test_each_intervention_builds_the_layers_it_names(variant):
    pooled, freeze_weight, one_statistic, label = INTERVENTIONS[variant]
    cfg = compose_config([f"+variant={variant}", "model.width=0.125"])
    assert (cfg.variant.pooled, cfg.variant.freeze_weight) == (pooled, freeze_weight)
    norms = [m for m in model_from_config(cfg).modules() if isinstance(m, BatchNorm2d)]
    assert norms
    for norm in norms:
        channels = norm.num_features
        assert (norm.pooled, norm.freeze_weight) == (pooled, freeze_weight)
        assert norm.stat_groups == (1 if one_statistic else channels)
        assert norm.running_mean.numel() == (channels if pooled == "var" or not one_statistic else 1)
        assert norm.running_var.numel() == (channels if pooled == "mean" or not one_statistic else 1)
        assert isinstance(norm.weight, torch.nn.Parameter) != freeze_weight
    config = as_written(cfg)
    assert variant_label(config, {}) == label
    assert channels_per_statistic(config) == ("all" if one_statistic else 1)


def test_intervention_labels_differ_from_each_other_and_from_the_plain_variants():
    plain = {"correct_bn": [], "shared_bn": [], "grouped_bn_g1": ["variant.stat_groups=1"]}
    labels = [variant_label(as_written(compose_config([f"+variant={name}"])), {}) for name in INTERVENTIONS]
    labels += [variant_label(as_written(compose_config([f"+variant={name.removesuffix('_g1')}", *extra])), {})
               for name, extra in plain.items()]
    assert len(set(labels)) == len(labels), labels
    # the pooled variants' names follow variant.pooled, so an override cannot mislabel them
    overridden = compose_config(["+variant=pooled_mean_bn", "variant.pooled=var"])
    assert variant_label(as_written(overridden), {}) == "pooled_var_bn_g1"


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(INTERVENTIONS))
def test_each_intervention_trains_a_tiny_run(variant, tmp_path):
    # with the sharpness on: it differentiates each variant's layers twice
    cfg = compose_config([f"+variant={variant}", "data=synthetic", "+preset=tiny", "instrument.sharpness_every=1"])
    summary = train(cfg, str(tmp_path))
    assert summary["status"] == "finished" and summary["variant"] == variant
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    top_eigs = [record["sharpness/top_eig"] for record in records if "sharpness/top_eig" in record]
    assert len(top_eigs) == 3 and all(math.isfinite(value) for value in top_eigs), top_eigs
    assert summary["steps_done"] == 3 and 0.0 <= summary["final_test_acc"] <= 1.0
    pooled = INTERVENTIONS[variant][0]
    # the probe's x_hat: channel scales equal when each channel has its own variance, no offsets with its own mean
    assert (summary["final_xhat_std_ratio"] < 1.01) == (pooled == "mean" or variant == "frozen_gamma_bn")
    assert (summary["final_xhat_offset_max"] < 1e-4) == (pooled == "var" or variant == "frozen_gamma_bn")


@pytest.mark.parametrize("overrides, message", [
    (["+variant=no_bn", "variant.pooled=mean"], r"variant\.pooled='mean': an option of bnexp's norm layer"),
    (["+variant=torch_bn", "variant.freeze_weight=true"], r"variant\.freeze_weight=true: an option of bnexp's"),
    (["+variant=pooled_var_bn", "variant.backend=triton"], r"variant\.pooled=var has no Triton kernels; e\.g\. "
                                                           r"variant\.backend=torch"),
    (["+variant=pooled_var_bn", "variant.pooled=channel"], r"variant\.pooled='channel' is not one of both, mean"),
])
def test_interventions_where_they_cannot_apply_are_config_errors(overrides, message, tmp_path):
    cfg = compose_config([*overrides, "data=synthetic", "+preset=tiny"])
    with pytest.raises(ConfigError, match=message):
        train(cfg, str(tmp_path))
