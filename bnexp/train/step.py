"""The training step and the log window: what the trainer runs every step, and what it reads back every few.

`TrainStep` is forward, loss, backward and optimiser step, plus the probe's device-side measurements: no host
sync. `LogWindow` holds the device losses of the steps since the last log record; `close()` copies them to the host
together with the probe's measurements in one transfer, and hands back the records and whether the run diverged.
scripts/bench_train.py times these same two objects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bnexp.data.batches import normalize
from bnexp.instrument import LossCurve, StabilityProbe, to_host


def model_logits(model: nn.Module, images: torch.Tensor, amp: bool,
                 memory_format: torch.memory_format) -> torch.Tensor:
    """The model's logits for a uint8 batch, in training and evaluation alike."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        # the layout copy on uint8 moves a quarter of the bytes of a float copy
        return model(normalize(images.contiguous(memory_format=memory_format)))


def training_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """The loss a training step minimises; the sharpness measurement differentiates this same function twice."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def fixed_batch_loss(images: torch.Tensor, labels: torch.Tensor, *, memory_format: torch.memory_format,
                     label_smoothing: float):
    """forward -> the training loss of this uint8 batch through that forward, in fp32 without autocast: the
    function whose Hessian the sharpness measurement takes (bnexp/instrument/sharpness.py)."""
    return lambda forward: training_loss(model_logits(forward, images, False, memory_format), labels, label_smoothing)


@dataclass
class TrainStep:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    probe: StabilityProbe | None = None
    compiled_model: nn.Module | None = None  # torch.compile(model); None runs `model` itself
    amp: bool = False  # bf16 autocast; the norm layer keeps its statistics in fp32 regardless
    memory_format: torch.memory_format = torch.contiguous_format
    label_smoothing: float = 0.0

    def __call__(self, step: int, images: torch.Tensor, labels: torch.Tensor,
                 global_grad_norm: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on a uint8 batch. Returns the detached loss and the number of correct
        predictions, both still on the device. `global_grad_norm`: the probe records grad_norm/global here."""
        probe = self.probe
        if probe is not None:
            probe.before_forward(step)
        # torch.compile does not follow per-step hooks: steps that measure activations run the eager module
        eager = self.compiled_model is None or (probe is not None and probe.measures_activations(step))
        logits = model_logits(self.model if eager else self.compiled_model, images, self.amp, self.memory_format)
        loss = training_loss(logits, labels, self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if probe is not None:
            probe.after_backward(step, global_grad_norm)
        self.optimizer.step()
        if probe is not None:
            probe.after_optimizer_step(step)
        return loss.detach(), (logits.argmax(1) == labels).sum()


class WindowReadback(NamedTuple):
    records: list[dict]  # the window's own record (train/loss, ...) and the probe's, in step order
    loss: float  # the window's mean loss
    diverged_step: int | None
    divergence: str | None  # what diverged, for the console


class LogWindow:
    """Consecutive steps' losses on the device, read back (and checked for divergence) at `close()`.

    A loss diverges when it is not finite or exceeds `loss_factor` x the run's first loss."""

    def __init__(self, size: int, device: torch.device, steps_per_epoch: int, loss_factor: float,
                 loss_curve: LossCurve, probe: StabilityProbe | None = None):
        self.losses = torch.zeros(size, device=device)
        self.steps_per_epoch, self.loss_factor = steps_per_epoch, loss_factor
        self.loss_curve, self.probe = loss_curve, probe
        self.count, self.first_step, self.lr = 0, 0, math.nan
        self.initial_loss: float | None = None

    @property
    def empty(self) -> bool:
        return self.count == 0

    @property
    def full(self) -> bool:
        return self.count == len(self.losses)

    def add(self, step: int, loss: torch.Tensor, lr: float) -> None:
        """One step's device loss (a copy on the device); the window's record reports its first step's lr."""
        if self.empty:
            self.first_step, self.lr = step, lr
        self.losses[self.count] = loss
        self.count += 1

    def close(self) -> WindowReadback:
        measurements = self.probe.take_measurements() if self.probe is not None else []
        # the window's one device-to-host transfer: its losses and the probe's measurements
        losses, *measured = to_host([self.losses[:self.count], *(m.values for m in measurements)])
        probe_records = self.probe.receive(measurements, measured) if self.probe is not None else []
        self.count = 0
        self.loss_curve.extend(self.first_step, losses)
        self.initial_loss = losses[0] if self.initial_loss is None else self.initial_loss

        window_loss = sum(losses) / len(losses)
        record = {"step": self.first_step, "epoch": self.first_step / self.steps_per_epoch, "train/loss": window_loss,
                  "train/lr": self.lr, "train/loss_spikes": self.loss_curve.spikes}
        by_step = {self.first_step: record}  # the window's first step joins its record; others get their own
        for probe_record in probe_records:
            step = probe_record["step"]
            by_step.setdefault(step, {"epoch": step / self.steps_per_epoch}).update(probe_record)
        records = [by_step[step] for step in sorted(by_step)]

        bad = [(step, loss) for step, loss in enumerate(losses, start=self.first_step)
               if not math.isfinite(loss) or loss > self.loss_factor * self.initial_loss]
        if not bad:
            return WindowReadback(records, window_loss, None, None)
        worst = max((loss for _, loss in bad), key=lambda loss: math.inf if math.isnan(loss) else loss)
        return WindowReadback(records, window_loss, bad[0][0], f"diverged at step {bad[0][0]}: loss {worst:.4g} "
                              f"(initial {self.initial_loss:.4g}, limit x{self.loss_factor})")
