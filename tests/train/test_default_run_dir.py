"""The default run dir (conf/train.yaml's hydra.run.dir) is one run's own.

Before, its timestamp had one-second resolution: two runs started in the same second with the same variant, model,
lr and seed (differing in another key) were given the same dir, and the second replaced the first's files.
"""
from __future__ import annotations

from datetime import datetime

import hydra.core.utils
from hydra import compose, initialize_config_dir

import bnexp.config.schema  # noqa: F401  (registers the schemas conf/train.yaml extends, as the CLI does)
from bnexp.config.compose import CONF_DIR


def test_runs_started_in_the_same_second_get_their_own_default_run_dirs(monkeypatch):
    class Clock:
        """Hydra's ${now:...} reads the time here."""
        instant = datetime(2026, 3, 1, 12, 0, 0)

        @classmethod
        def now(cls) -> datetime:
            return cls.instant

    monkeypatch.setattr(hydra.core.utils, "datetime", Clock)
    run_dirs = []
    for microsecond, epochs in ((250_000, 1), (250_001, 2)):  # two runs, the second a microsecond later
        Clock.instant = datetime(2026, 3, 1, 12, 0, 0, microsecond)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["+variant=no_bn", f"train.epochs={epochs}"],
                          return_hydra_config=True)
        run_dirs.append(cfg.hydra.run.dir)
    assert run_dirs[0] != run_dirs[1]
    assert run_dirs[0].startswith("runs/no_bn/airbench/lr0.1_seed0/20260301-120000")
    assert sorted(run_dirs) == run_dirs  # the dirs of one setting still sort by start time
