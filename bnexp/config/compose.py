"""Config access shared by the modules: where conf/ is, composing it in code, and saying what is wrong with it."""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@functools.cache
def default_instrument_cfg() -> dict:
    """A run's instrument defaults, conf/instrument/default.yaml (each key is explained there), read when first
    needed: a run's config has every key, so only a probe built without one (tests, benchmarks) and the dashboard's
    steps_to_acc columns read the file."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "instrument" / "default.yaml"))


def compose_train_config(overrides: list[str]):
    """The resolved-on-access train config for these command-line overrides, without running Hydra's main."""
    from hydra import compose, initialize_config_dir

    import bnexp.config.schema  # noqa: F401  (registers the schemas conf/train.yaml extends)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and a valid example."""


def validate_train_config(cfg: Any) -> None:
    """Raise one ConfigError listing every bad value of a train config (one line each), before any data is read.

    Types, bounds and choices come from the schema (bnexp/config/schema.py), applied by bnexp/config/checks.py; a
    composed config has its types checked by Hydra already, a config built in Python gets them checked here."""
    from bnexp.config.checks import check_train_config

    problems = check_train_config(cfg)
    if problems:
        raise ConfigError("\n".join(problems))


def describe_composition_error(error: BaseException) -> str | None:
    """One line saying what is wrong with a command line that Hydra could not compose, and the fix (a valid
    example, the available choices, or the missing `+`); None when `error` is not a config error."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    from bnexp.config.checks import describe_type_error, describe_unknown_key

    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, name = error.missing_cfg_file.rpartition("/")
        plus = "" if group in _groups_in_train_defaults() else "+"
        return (f"there is no {group} {name!r} (conf/{group}/{name}.yaml); choose one of "
                f"{', '.join(error.options)}, e.g. {plus}{group}={error.options[0]}")
    if isinstance(error, OverrideParseException):
        return (f"cannot read the command line: {_one_line(str(error))}. Overrides are key=value, quoted "
                "where the value has spaces or brackets, e.g. optim.lr=0.1 'optim.betas=[0.9,0.99]'")
    if not isinstance(error, (HydraException, OmegaConfBaseException)):
        return None
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    full_key = getattr(cause, "full_key", None)
    if isinstance(cause, OmegaConfBaseException) and full_key:
        if isinstance(cause, ValidationError):
            return describe_type_error(full_key, cause.value)
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            return describe_unknown_key(full_key, getattr(cause, "object_type", None))
    plus_hint = re.search(r"Could not override '([^']+)'\. No match in the defaults list.*use (\+\S+)", str(error),
                          flags=re.DOTALL)
    if plus_hint:
        return (f"{plus_hint.group(1)} is not chosen by default, so it is added with a plus: {plus_hint.group(2)} "
                f"(conf/{plus_hint.group(1)}/ has the choices)")
    message = _one_line(str(error))
    if cause is not error:  # Hydra's error wraps OmegaConf's: add the latter's own words
        message += f": {_one_line(cause.msg)}"
    return f"{full_key}: {message}" if full_key else message


def _one_line(text: str) -> str:
    """Hydra's multi-line messages as one line, without the config search path it appends."""
    lines = [line.strip() for line in str(text).splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith(
        ("Config search path", "provider=", "full_key:", "object_type=", "reference_type=")))


def train_default_choices() -> dict[str, str]:
    """group -> option that conf/train.yaml chooses by default (chosen with `group=x`; any other group of conf/
    needs `+group=x`); Hydra's own groups (`override hydra/...`) are left out."""
    import yaml

    defaults = yaml.safe_load((CONF_DIR / "train.yaml").read_text()).get("defaults", [])
    return {key: option for entry in defaults if isinstance(entry, dict) for key, option in entry.items()
            if not key.startswith("override ")}


def _groups_in_train_defaults() -> set[str]:
    return set(train_default_choices())
