"""Config access shared by the modules: where conf/ is, composing it in code, and saying what is wrong with it."""
from __future__ import annotations

import difflib
import functools
import re
import shlex
from pathlib import Path
from typing import Any

from bnexp.config.keys import config_value

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@functools.cache
def default_instrument_cfg() -> dict:
    """A run's instrument defaults, conf/instrument/default.yaml (each key is explained there), read when first
    needed: a run's config has every key, so only a probe built without one (tests, benchmarks) and the dashboard's
    steps_to_acc columns read the file."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "instrument" / "default.yaml"))


def instrument_setting(instrument_cfg: Any, key: str) -> Any:
    """`instrument.<key>` of the run's config, or its default (no config: tests and benchmarks)."""
    value = config_value(instrument_cfg, key)
    return default_instrument_cfg()[key] if value is None else value


def compose_train_config(overrides: list[str]):
    """The resolved-on-access train config for these command-line overrides, without running Hydra's main."""
    from hydra import compose, initialize_config_dir

    import bnexp.config.schema  # noqa: F401  (registers the schemas conf/train.yaml extends)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and a valid example."""


def validate_train_config(cfg: Any, *, with_torch: bool = True) -> None:
    """Raise one ConfigError listing every bad value of a train config (one line each), before any data is read.

    Types, bounds and choices come from the schema (bnexp/config/schema.py), applied by bnexp/config/checks.py; a
    composed config has its types checked by Hydra already, a config built in Python gets them checked here.
    with_torch=False checks all but the rules that import torch (the command line's early check)."""
    from bnexp.config.checks import check_train_config

    problems = check_train_config(cfg, with_torch=with_torch)
    if problems:
        raise ConfigError("\n".join(problems))


def describe_composition_error(error: BaseException) -> str | None:
    """One line saying what is wrong with a command line that Hydra could not compose, and the fix (a valid
    example, the available choices, or the missing `+`); None when `error` is not a config error."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    from bnexp.config.checks import describe_type_error, describe_unknown_key, key_kind

    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, name = error.missing_cfg_file.rpartition("/")
        plus = "" if group in _groups_in_train_defaults() else "+"
        close = difflib.get_close_matches(name, error.options, n=1)  # a typo: sahred_bn for shared_bn
        return (f"there is no {group} {name!r} (conf/{group}/{name}.yaml); "
                + (f"did you mean {close[0]}? " if close else "")
                + f"choose one of {', '.join(error.options)}, e.g. {plus}{group}={(close or error.options)[0]}")
    if isinstance(error, OverrideParseException):
        return (f"cannot read the command line at {error.override!r}: {_one_line(error.message)}. "
                f"{_quoting_hint(error.override)}")
    ambiguous = re.match(r"Ambiguous value for argument '(.+?)'\n", str(error))
    if ambiguous:  # a comma in a value: Hydra reads values to sweep over
        override = ambiguous.group(1)
        message = f"{override}: a comma separates values to sweep over, with --multirun"
        if key_kind(override.partition("=")[0].lstrip("+~")) == "str":
            return (f"{message}; for one string with a comma, quote it for Hydra inside the shell's quotes: "
                    f"{hydra_quoted(override)}")
        return f"{message}; a list is written [a,b]"
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


def hydra_quoted(override: str) -> str:
    """`key=value` as it is typed in a shell so that Hydra reads `value` as one string, whatever it holds: Hydra's
    quotes around the value (inside them spaces, commas, brackets, '=' and other letters are plain text), and the
    shell's around the whole, e.g. 'data.path="/data/my copy (2)/cifar10-jpeg.tar.xz"'."""
    key, _, value = override.partition("=")
    quote = "'" if '"' in value and "'" not in value else '"'
    # Inside quotes Hydra reads a backslash as itself, except in a run right before a quote, which it halves: such
    # runs are doubled (the closing quote counts), and a quote of the kind used gets a backslash.
    escaped = re.sub(rf"(\\*)({quote}|$)", lambda run: run[1] * 2 + ("\\" + run[2] if run[2] else ""), value)
    return shlex.quote(f"{key}={quote}{escaped}{quote}")


def _quoting_hint(override: str) -> str:
    """How to write an override Hydra could not read. The shell drops its own quotes, so a string value that holds
    spaces, brackets and the like needs Hydra's quotes inside the shell's: the user's own override so quoted when
    its key holds a string (a path), else the rule with examples (an argument without `=` may be a value the shell
    split at a space)."""
    from bnexp.config.checks import key_kind

    key, equals, _ = override.partition("=")
    if equals and key_kind(key.lstrip("+~")) == "str":
        return ("A string with spaces, brackets, parentheses, commas, '=', quotes or non-ASCII letters needs "
                f"Hydra's quotes inside the shell's: {hydra_quoted(override)}")
    return ("Overrides are key=value; a list is [a,b] in the shell's quotes ('optim.betas=[0.9,0.99]'), and a string "
            "with spaces, brackets, parentheses, commas, '=' or quotes needs Hydra's quotes inside the shell's "
            f"({hydra_quoted('data.path=/path/to/my data (2)/cifar10-jpeg.tar.xz')})")


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
