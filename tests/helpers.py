"""Shared test helpers: composing the real Hydra configs, and tiny training overrides."""
from __future__ import annotations

from bnexp.config import compose_train_config

# The smallest run that still exercises every part of the loop: 4 steps on a narrow net.
TINY_RUN = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=0.125",
            "train.epochs=1", "train.batch_size=64", "train.eval_batch_size=64", "train.log_every=2"]


def compose_config(overrides: list[str]):
    return compose_train_config(overrides)
