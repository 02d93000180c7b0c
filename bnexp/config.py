"""Config access shared by the modules: where conf/ is, composing it in code, and reading optional keys."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def config_value(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg[key]` from a dict, a DictConfig or None; the default when the key is missing or null."""
    if cfg is None:
        return default
    try:
        value = cfg.get(key, default)
    except AttributeError:
        value = getattr(cfg, key, default)
    return default if value is None else value


def compose_train_config(overrides: list[str]):
    """The resolved-on-access train config for these command-line overrides, without running Hydra's main."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


# (dotted key, kind, smallest allowed, largest allowed, how to fix) for the values the trainer does arithmetic on.
# A wrong value gets one ValueError naming the key, instead of a TypeError or ZeroDivisionError deep in a loop.
_CHECKED_TRAIN_KEYS = (
    ("train.epochs", int, 1, None, "e.g. train.epochs=10"),
    ("train.batch_size", int, 1, None, "e.g. train.batch_size=512 (at most data.train_size)"),
    ("train.eval_batch_size", int, 1, None, "e.g. train.eval_batch_size=1024"),
    ("train.log_every", int, 1, None, "e.g. train.log_every=25"),
    ("train.augment_pad", int, 0, None, "0 turns cropping off"),
    ("model.width", float, 1e-6, None, "a channel multiplier, e.g. model.width=0.25"),
    ("optim.lr", float, 0.0, None, "e.g. optim.lr=0.1"),
    ("optim.weight_decay", float, 0.0, None, "e.g. optim.weight_decay=5e-4"),
    ("optim.label_smoothing", float, 0.0, 1.0, "e.g. optim.label_smoothing=0.1"),
    ("optim.warmup_frac", float, 0.0, 1.0, "a fraction of all steps, e.g. optim.warmup_frac=0.1"),
    ("divergence.loss_factor", float, 1.0, None, "e.g. divergence.loss_factor=5"),
    ("seed", int, None, None, "e.g. seed=0"),
)


def validate_train_config(cfg: Any) -> None:
    """Raise one ValueError that names the key, the bad value and a fix, for the first out-of-place value."""
    from omegaconf import OmegaConf

    for dotted_key, kind, lowest, highest, fix in _CHECKED_TRAIN_KEYS:
        value = OmegaConf.select(cfg, dotted_key, default=None)
        if value is None:
            continue  # optional keys (a config group without this setting) are not checked
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok_type = ok_type and float(value).is_integer()
        if not ok_type:
            raise ValueError(f"{dotted_key}={value!r} is not {'an integer' if kind is int else 'a number'}; {fix}")
        if lowest is not None and value < lowest:
            raise ValueError(f"{dotted_key}={value!r} is too small (at least {lowest:g}); {fix}")
        if highest is not None and value > highest:
            raise ValueError(f"{dotted_key}={value!r} is too large (at most {highest:g}); {fix}")
    device = OmegaConf.select(cfg, "device", default="auto")
    if not (device in ("auto", "cpu", "cuda") or (isinstance(device, str) and re.fullmatch(r"cuda:\d+", device))):
        raise ValueError(f"device={device!r} is not a device bnexp trains on; use device=auto, cpu, cuda or cuda:N")
