"""Config access shared by the modules: where conf/ is, composing it in code, and reading optional keys."""
from __future__ import annotations

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
