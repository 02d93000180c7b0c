"""Paths as a committed report shows them: relative to the current dir, so that a report read on another machine
does not name folders of the machine it was made on."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def shown_path(path: Path) -> str:
    """A run dir as the report shows it: relative to the current dir when it lies below it (a report is read on
    other machines, where this one's absolute paths mean nothing), else as found."""
    try:
        return str(Path(path).relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def portable_config(config: Any) -> Any:
    """The run's config with every absolute path in it (data.path, data.data_dir, ...) written relative to the
    current dir (`../data/x.tar.xz`), so a committed report names where files lie beside the checkout, not
    folders of the machine it ran on."""
    if isinstance(config, dict):
        return {key: portable_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [portable_config(value) for value in config]
    return os.path.relpath(config) if isinstance(config, str) and os.path.isabs(config) else config
