"""The train config's schema: every key's type, allowed values and a valid example, registered in Hydra's
ConfigStore. Applying it to a config (the checks between keys and the messages) is bnexp/config/checks.py.

conf/train.yaml names `bnexp_train_schema` first in its defaults list, and the group options of `data`, `optim`
and `logger` (whose keys differ per option) name their own schema from the `bnexp_schema/<group>` group, so Hydra
types every value while it composes: `variant.stat_groups=2.5`, `=true` or `=two`, or a key that does not exist,
stop the command before a run dir exists. Hydra converts a quoted number ('4') to the int or float it spells.

Types alone do not say that an lr must be finite and above 0 or a group count at least 1: each field also carries
its rules and a valid example. Booleans are typed `Any` and checked by the rules, because OmegaConf would read
`train.compile=2` as true.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

# The largest seed numpy accepts (seed_everything seeds numpy too).
MAX_SEED = 2**32 - 1
# Synthetic images are drawn in memory in one go (float32 noise: 12 kB an image, several temporaries).
MAX_SYNTHETIC_IMAGES = 100_000
CIFAR10_TRAIN_IMAGES, CIFAR10_TEST_IMAGES = 50_000, 10_000
# More epochs than any study runs, far below what would overflow a step count.
MAX_EPOCHS = 1_000_000
# Images in one batch: far above any GPU's memory at CIFAR's size, far below what would overflow an index.
MAX_BATCH = 1_000_000


def setting(example: str | None, **rules: Any) -> Any:
    """A schema field: no default (conf/ holds the defaults), a valid example for error messages, and rules:
    kind ('bool' for strict booleans in an `Any` field), at_least / at_most / above (bounds),
    choices (a tuple, or a function returning one, resolved when checked), check (value -> problem or None), and
    check_with_torch (the same, for a rule that imports torch or the model registry: the early check of the
    command line, made before torch is loaded, leaves it to the full check)."""
    return field(default=MISSING, metadata={"example": example, **rules})


def _norm_kind_problem(value: str) -> str | None:
    from bnexp.models import NORM_KINDS
    return None if value in NORM_KINDS else f"is not one of {', '.join(NORM_KINDS)}"


def _model_name_problem(value: str) -> str | None:
    from bnexp.models import MODELS
    return None if value in MODELS else f"is not one of {', '.join(sorted(MODELS))}"


def non_empty(value: str) -> str | None:
    return None if value.strip() else "is empty"


def _path_component_problem(value: str) -> str | None:
    """A name that becomes a folder of the run dir (conf/train.yaml's hydra.run.dir): one plain path component,
    so that no name can place a run outside runs/."""
    if not value.strip():
        return "is empty"
    if any(separator in value for separator in ("/", "\\", "\0")) or value in (".", ".."):
        return "names a folder of the run dir, so it may not contain / or \\ or be . or .."
    return None


def _device_problem(value: str) -> str | None:
    if not (value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value)):
        return "is not a device bnexp trains on; use device=auto, cpu, cuda or cuda:N"
    return None


def _cuda_device_problem(value: str) -> str | None:
    if not value.startswith("cuda"):
        return None
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
    name: str = setting("correct_bn", check=_path_component_problem)
    norm: str = setting("per_channel", check_with_torch=_norm_kind_problem)
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
    epochs: int = setting("10", at_least=1, at_most=MAX_EPOCHS)
    batch_size: int = setting("512", at_least=1, at_most=MAX_BATCH)
    eval_batch_size: int = setting("1024", at_least=1, at_most=MAX_BATCH)
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
    name: str = setting("airbench", check=_path_component_problem, check_with_torch=_model_name_problem)
    # and not so small that every layer is held at the 8-channel minimum (a rule of each model: checks.py)
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
    data_dir: str = setting("data", check=non_empty)
    download: Any = setting("true", kind="bool")


@dataclass
class FolderDataConfig(DataConfig):
    # train_size/test_size are checked against the images found, once the source is read
    path: str = setting("/path/to/cifar10-jpeg.tar.xz", check=non_empty)
    data_dir: str = setting("data", check=non_empty)
    decode_workers: Optional[int] = setting("4", at_least=1, at_most=1024)


@dataclass
class SyntheticDataConfig(DataConfig):
    train_size: Optional[int] = setting("2048", at_least=1, at_most=MAX_SYNTHETIC_IMAGES)
    test_size: Optional[int] = setting("512", at_least=1, at_most=MAX_SYNTHETIC_IMAGES)


@dataclass
class OptimConfig:
    name: str = setting("sgd", choices=lambda: tuple(GROUP_OPTION_SCHEMAS["optim"]))
    lr: float = setting("0.1", above=0.0)  # lr=0 would train nothing, and the report drops such a run
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
    project: str = setting("bnexp", check=non_empty)
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
    sharpness_every: int = setting("10", at_least=0)
    sharpness_lanczos_steps: int = setting("20", at_least=1)
    sharpness_tolerance: float = setting("1e-3", at_least=0.0)
    sharpness_batch_size: Optional[int] = setting("512", at_least=1)  # null: train.batch_size


@dataclass
class TrainConfig:
    """The composed config of `python -m bnexp.train` (conf/train.yaml and its groups)."""
    variant: VariantConfig = MISSING
    train: TrainLoopConfig = MISSING
    divergence: DivergenceConfig = MISSING
    seed: int = setting("0", at_least=0, at_most=MAX_SEED)
    # the problem text gives the choices
    device: str = setting(None, check=_device_problem, check_with_torch=_cuda_device_problem)
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
