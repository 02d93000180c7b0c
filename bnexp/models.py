"""CIFAR CNNs built around a norm factory, so every variant applies to every model.

A norm factory maps a channel count to a module (our BatchNorm2d in some mode,
stock nn.BatchNorm2d, or nn.Identity for no normalisation). When there is no
normalisation the convs get biases, since nothing else would shift activations.
"""
from __future__ import annotations

import itertools
from typing import Callable

from torch import Tensor, nn

from bnexp.norm import BatchNorm2d

NormFactory = Callable[[int], nn.Module]

NORM_KINDS = ("per_channel", "grouped", "shared", "none", "torch")


def groups_for_width(channels: int, channels_per_group: int) -> int:
    """Statistic groups for a layer of `channels` channels when each statistic pools `channels_per_group` of them.

    A layer no wider than the group size gets one group (one statistic over all its channels); a wider one
    must be a multiple of the group size, since groups are contiguous and equal. This is the rule's one home: the
    train config's checks apply it to every layer of the configured model before a run starts.
    """
    if channels <= channels_per_group:
        return 1
    if channels % channels_per_group:
        below = max(d for d in range(1, channels_per_group) if channels % d == 0)
        above = min(d for d in range(channels_per_group + 1, channels + 1) if channels % d == 0)
        raise ValueError(
            f"variant.channels_per_group={channels_per_group} does not divide a layer of {channels} channels; "
            f"use a divisor of the layer widths (e.g. {below} or {above}; widths are multiples of 8, so 1, 2, 4 "
            f"and 8 always fit), or a value at least as large as the widest layer for one group everywhere")
    return channels // channels_per_group


def make_norm_factory(norm: str, stat_groups: int | None = None, affine_per_channel: bool = True,
                      backend: str = "auto", channels_per_group: int | None = None, pooled: str = "both",
                      freeze_weight: bool = False) -> NormFactory:
    """Return channels -> norm module for one of NORM_KINDS.

    Grouped statistics take either `stat_groups` (the same group count in every layer) or `channels_per_group`
    (the same group size in every layer: C // channels_per_group groups, at least one). `pooled` and
    `freeze_weight` are the interventions of bnexp's layer (see BatchNorm2d), for its norm kinds only. The arguments
    are taken as valid: the train config's checks (bnexp/config/checks.py) refuse a bad combination, and build_model
    guards a caller that bypasses them.
    """
    options = {"affine_per_channel": affine_per_channel, "backend": backend, "pooled": pooled,
               "freeze_weight": freeze_weight}
    if norm == "grouped" and channels_per_group is not None:
        return lambda channels: BatchNorm2d(channels, stat_groups=groups_for_width(channels, channels_per_group),
                                            **options)
    factories = {
        "per_channel": lambda channels: BatchNorm2d(channels, **options),
        "grouped": lambda channels: BatchNorm2d(channels, stat_groups=stat_groups, **options),
        "shared": lambda channels: BatchNorm2d(channels, stat_groups=1, **options),  # grouped with one group
        "none": lambda channels: nn.Identity(),
        "torch": lambda channels: nn.BatchNorm2d(channels),
    }
    return factories[norm]


# Every layer keeps at least this many channels, a multiple of 8 like every width, so that stat_groups and
# channels_per_group in {1, 2, 4, 8} always divide it.
MIN_CHANNELS = 8


def scaled_width(channels: int, width: float) -> int:
    """Scale a channel count, keeping it a multiple of 8 and at least MIN_CHANNELS."""
    return max(MIN_CHANNELS, int(round(channels * width / 8)) * 8)


def conv3x3(in_channels: int, out_channels: int, with_bias: bool, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=with_bias)


class ConvGroup(nn.Module):
    """conv -> pool -> norm -> act -> conv -> norm -> act: one stage of the fast net (no residual)."""

    def __init__(self, in_channels: int, out_channels: int, norm_factory: NormFactory, with_bias: bool):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, with_bias)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = norm_factory(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, with_bias)
        self.norm2 = norm_factory(out_channels)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    """A fast CIFAR net in the spirit of airbench: a stem, three conv groups (64/256/256), a linear head."""

    def __init__(self, norm_factory: NormFactory, with_bias: bool, width: float = 1.0,
                 group_channels=(64, 256, 256), stem_channels: int = 32, num_classes: int = 10):
        super().__init__()
        stem = scaled_width(stem_channels, width)
        self.stem = nn.Sequential(conv3x3(3, stem, with_bias), norm_factory(stem), nn.GELU())
        widths = [stem] + [scaled_width(c, width) for c in group_channels]
        self.groups = nn.Sequential(*[ConvGroup(in_channels, out_channels, norm_factory, with_bias)
                                      for in_channels, out_channels in itertools.pairwise(widths)])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[-1], num_classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.groups(self.stem(x))).flatten(1))


VGG11_PLAN = (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512, "pool")


class PlainVGG(nn.Module):
    """A VGG-style stack of conv-norm-ReLU with no skip connections: where normalisation matters most."""

    def __init__(self, norm_factory: NormFactory, with_bias: bool, width: float = 1.0,
                 plan=VGG11_PLAN, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in plan:
            if item == "pool":
                layers.append(nn.MaxPool2d(2))
            else:
                out_channels = scaled_width(int(item), width)
                layers += [conv3x3(in_channels, out_channels, with_bias), norm_factory(out_channels),
                           nn.ReLU(inplace=True)]
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_factory: NormFactory,
                 with_bias: bool):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, with_bias, stride)
        self.norm1 = norm_factory(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, with_bias)
        self.norm2 = norm_factory(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=with_bias),
                norm_factory(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """The CIFAR ResNet-18 (3x3 stem, no initial max-pool)."""

    def __init__(self, norm_factory: NormFactory, with_bias: bool, width: float = 1.0, num_classes: int = 10):
        super().__init__()
        stage_widths = [scaled_width(c, width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(conv3x3(3, stage_widths[0], with_bias), norm_factory(stage_widths[0]),
                                  nn.ReLU(inplace=True))
        # two blocks a stage; the first block of every stage after the first halves the resolution
        blocks: list[nn.Module] = []
        for stage, (in_channels, out_channels) in enumerate(itertools.pairwise([stage_widths[0], *stage_widths])):
            blocks += [BasicBlock(in_channels, out_channels, 2 if stage > 0 else 1, norm_factory, with_bias),
                       BasicBlock(out_channels, out_channels, 1, norm_factory, with_bias)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(stage_widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


MODELS = {"airbench": FastNet, "vgg": PlainVGG, "resnet18": ResNet18}


def name_norm_layers(model: nn.Module) -> None:
    """Tell each bnexp norm layer its module path, so its errors can name it."""
    for name, module in model.named_modules():
        if isinstance(module, BatchNorm2d):
            module.layer_name = name


def init_weights(model: nn.Module) -> None:
    """He (fan-in) init for every conv and linear layer, zero biases, in every variant.

    PyTorch's default conv init shrinks the signal at each ReLU, which BatchNorm undoes but a net
    without normalisation cannot: no_bn would then sit at chance at every lr and never diverge.
    With variance-preserving init, no_bn trains at small lrs, so the comparison is about stability.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def stat_groups_by_layer(model: nn.Module) -> dict[str, int]:
    """The number of statistic groups each norm layer computes, by module path, in model order.

    Per-channel layers (bnexp's or torch's) report their channel count; a model without normalisation has none.
    """
    return {name: int(module.stat_groups if isinstance(module, BatchNorm2d) else module.num_features)
            for name, module in model.named_modules()
            if isinstance(module, (BatchNorm2d, nn.modules.batchnorm._BatchNorm))}


def _arguments_problem(model_name: str, norm: str, stat_groups: int | None, channels_per_group: int | None,
                       pooled: str = "both", freeze_weight: bool = False) -> str | None:
    """What is wrong with build_model's choice of model and grouping, in its own argument names, or None."""
    if model_name not in MODELS:
        return f"unknown model {model_name!r}; choose one of {sorted(MODELS)}"
    if norm not in NORM_KINDS:
        return f"unknown norm kind {norm!r}; choose one of {NORM_KINDS}"
    group_size_ok = channels_per_group is None or (
        isinstance(channels_per_group, int) and not isinstance(channels_per_group, bool) and channels_per_group >= 1)
    if norm == "grouped":  # exactly one way to group
        grouping_ok = (stat_groups is None) != (channels_per_group is None)
    else:  # a group size would be ignored (a group count is, as shared_bn's config sets one)
        grouping_ok = channels_per_group is None
    if not (group_size_ok and grouping_ok):
        return (f"norm {norm!r} with stat_groups={stat_groups!r} and channels_per_group={channels_per_group!r}: "
                "norm 'grouped' takes exactly one of stat_groups (a group count) and channels_per_group (a group "
                "size, a positive integer); the other norms take no channels_per_group")
    interventions = [setting for setting, is_set in ((f"variant.pooled={pooled}", pooled != "both"),
                                                     ("variant.freeze_weight=true", freeze_weight)) if is_set]
    if interventions and norm in ("none", "torch"):
        return (f"{' and '.join(interventions)}: an option of bnexp's norm layer, not of norm {norm!r}; use norm "
                "per_channel, grouped or shared, or variant.pooled=both variant.freeze_weight=false")
    return None


def build_model(model_name: str, variant_norm: str, *, width: float = 1.0, stat_groups: int | None = None,
                affine_per_channel: bool = True, backend: str = "auto", num_classes: int = 10,
                channels_per_group: int | None = None, pooled: str = "both", freeze_weight: bool = False
                ) -> nn.Module:
    # The one guard of these arguments. A run's config has been checked already (bnexp/config/checks.py names the
    # key and a fix); a Python caller of build_model bypasses those checks, and a grouping that names no grouping,
    # or two, would otherwise build a different net than asked without a word.
    problem = _arguments_problem(model_name, variant_norm, stat_groups, channels_per_group, pooled, freeze_weight)
    if problem:
        raise ValueError(f"build_model: {problem}")
    norm_factory = make_norm_factory(variant_norm, stat_groups, affine_per_channel, backend, channels_per_group,
                                     pooled, freeze_weight)
    model = MODELS[model_name](norm_factory, with_bias=variant_norm == "none", width=width,
                               num_classes=num_classes)
    init_weights(model)
    name_norm_layers(model)
    return model
