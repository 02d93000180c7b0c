"""Dotted keys (`optim.lr`) in a config: one lookup for the trainer's DictConfig and the plain dicts read back
from run dirs alike."""
from __future__ import annotations

from typing import Any, Mapping


def config_value(cfg: Any, key: str, default: Any = None, *, null_is_missing: bool = True) -> Any:
    """`cfg[key]` from a dict, a DictConfig or None, a dotted key (`optim.lr`) level by level; the default when
    a level is missing or not a mapping, or the value is null. With null_is_missing=False a null value is None,
    for a caller whose default is a second source that must not override a null the config itself says."""
    for part in key.split("."):
        if not isinstance(cfg, Mapping) or part not in cfg:
            return default
        cfg = cfg.get(part)
    return default if cfg is None and null_is_missing else cfg


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
