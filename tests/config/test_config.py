"""Every variant and model composes through Hydra's compose API and builds a working model."""
import pytest
import torch
from hydra.errors import MissingConfigException

from bnexp.models import build_model
from bnexp.norm import BatchNorm2d
from tests.helpers import compose_config

VARIANTS = ["correct_bn", "shared_bn", "grouped_bn", "no_bn", "torch_bn"]
MODELS = ["airbench", "vgg", "resnet18"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_and_model_compose_and_build(variant, model):
    cfg = compose_config([f"+variant={variant}", f"model={model}", "model.width=0.125"])
    assert cfg.variant.name == variant and cfg.model.name == model
    net = build_model(cfg.model.name, cfg.variant.norm, width=cfg.model.width,
                      stat_groups=cfg.variant.stat_groups, affine_per_channel=cfg.variant.affine_per_channel,
                      backend=cfg.variant.backend)
    norms = [m for m in net.modules() if isinstance(m, (BatchNorm2d, torch.nn.BatchNorm2d))]
    if variant == "no_bn":
        assert not norms
    else:
        assert norms
    if variant == "torch_bn":
        assert all(type(m) is torch.nn.BatchNorm2d for m in norms)
    if variant in ("correct_bn", "shared_bn", "grouped_bn"):
        expected_groups = {"correct_bn": None, "shared_bn": 1, "grouped_bn": cfg.variant.stat_groups}[variant]
        for norm in norms:
            assert norm.stat_groups == (expected_groups or norm.num_features)
            assert norm.layer_name  # errors can name the layer
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_default_run_is_correct_bn():
    cfg = compose_config([])
    assert cfg.variant.name == "correct_bn" and cfg.variant.norm == "per_channel"


def test_grouped_stat_groups_override_and_preset():
    cfg = compose_config(["+variant=grouped_bn", "variant.stat_groups=4", "+preset=quick", "model=vgg", "seed=3"])
    assert cfg.variant.stat_groups == 4 and cfg.train.epochs == 1 and cfg.model.width == 0.25 and cfg.seed == 3


def test_shared_bn_has_one_gamma():
    cfg = compose_config(["+variant=shared_bn"])
    net = build_model("airbench", cfg.variant.norm, width=0.125, stat_groups=cfg.variant.stat_groups,
                      affine_per_channel=cfg.variant.affine_per_channel)
    norm = next(m for m in net.modules() if isinstance(m, BatchNorm2d))
    assert norm.weight.shape == (1,) and norm.running_mean.shape == (1,)


def test_unknown_variant_names_the_choices():
    with pytest.raises(MissingConfigException, match="correct_bn"):
        compose_config(["+variant=wrong_bn"])


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
@pytest.mark.parametrize("data", ["cifar10", "cifar10_folder", "synthetic"])
def test_optim_and_data_groups_compose(optim, data):
    cfg = compose_config([f"optim={optim}", f"data={data}"])
    assert cfg.optim.name == optim and cfg.data.name == data
