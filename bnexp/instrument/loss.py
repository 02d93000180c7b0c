"""Loss spikes and the loss AUC, from the per-step losses the trainer reads back at each log window."""
from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

from bnexp.config.compose import instrument_setting


class LossCurve:
    """A step's loss is a spike when it exceeds `loss_spike_factor` x the median of the (up to) `loss_window`
    losses before it; NaN losses are left out of that median."""

    def __init__(self, instrument_cfg: Any = None):
        self.spike_factor = float(instrument_setting(instrument_cfg, "loss_spike_factor"))
        self.recent = deque(maxlen=max(1, int(instrument_setting(instrument_cfg, "loss_window"))))
        self.steps = 0
        self.loss_sum = 0.0
        self.spikes = 0
        self.first_spike_step: int | None = None

    def extend(self, first_step: int, losses: list[float]) -> None:
        """The losses of consecutive steps from `first_step` on."""
        for step, loss in enumerate(losses, start=first_step):
            reference = [value for value in self.recent if not math.isnan(value)]
            if reference and loss > self.spike_factor * statistics.median(reference):
                self.spikes += 1
                self.first_spike_step = step if self.first_spike_step is None else self.first_spike_step
            self.recent.append(loss)
            self.steps += 1
            self.loss_sum += loss

    def summary(self) -> dict:
        # mean per-step train loss = area under the loss curve, with x = the fraction of training done
        mean_loss = self.loss_sum / self.steps if self.steps else math.nan
        return {"train_loss_auc": mean_loss if math.isfinite(mean_loss) else None,
                "loss_spikes": self.spikes, "first_loss_spike_step": self.first_spike_step}
