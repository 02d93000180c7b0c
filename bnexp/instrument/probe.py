"""StabilityProbe: when to measure, and the measurements' trip from the device to the history.

Every `every` steps (step 0 always) a measure step records gradient, parameter and update norms per layer
(`layers.py`) and activation statistics (`hooks.py`). The one rule for `grad_norm/global`: every measure step, and
every step whose caller asks for it (the trainer asks at the first step of each log window). With a SharpnessProbe
(`sharpness.py`), every `instrument.sharpness_every` steps also measure the top Hessian eigenvalue, between backward
and the optimiser step; those steps alone synchronise with the device.

Measurements stay device tensors until the caller takes them (`take_measurements`) and copies them to the host in
one transfer with its own values (`to_host`); `receive` turns the host values into records and adds them to the
history (`history.py`). Nothing here synchronises with the device, so the GPU queue never drains for it.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable, Mapping, NamedTuple

import torch
from torch import nn

from bnexp.config.compose import instrument_setting
from bnexp.instrument.history import GradNormHistory, MechanismHistory, steps_to_accuracy
from bnexp.instrument.hooks import ForwardHooks
from bnexp.instrument.layers import ParameterLayers, unwrap_model
from bnexp.instrument.sharpness import SharpnessProbe


class Measurement(NamedTuple):
    step: int
    keys: list[str]
    values: torch.Tensor  # 1-D, on the device, one value per key


def to_host(tensors: list[torch.Tensor]) -> list[list[float]]:
    """Each tensor's values as host floats, in one device-to-host transfer for all of them."""
    if not tensors:
        return []
    values = iter(torch.cat([tensor.reshape(-1).float() for tensor in tensors]).tolist())
    return [list(itertools.islice(values, tensor.numel())) for tensor in tensors]


class StabilityProbe:
    """Called around each optimisation step: before_forward, after_backward, after_optimizer_step."""

    def __init__(self, model: nn.Module, instrument_cfg: Any = None, sharpness: SharpnessProbe | None = None):
        model = unwrap_model(model)
        self.sharpness = sharpness
        self.every = int(instrument_setting(instrument_cfg, "every"))
        self.acc_targets = [float(target) for target in instrument_setting(instrument_cfg, "acc_targets")]
        self.record_update_ratio = bool(instrument_setting(instrument_cfg, "update_ratio"))
        self.layers = ParameterLayers(model)
        self.layer_names = self.layers.names
        self.hooks = ForwardHooks(model, self._add) if instrument_setting(instrument_cfg, "activations") else None
        self.history = GradNormHistory(self.layer_names)
        self.mechanism = MechanismHistory()
        self._step: int | None = None  # the step being measured, and its values so far
        self._keys: list[str] = []
        self._values: list[torch.Tensor] = []
        self._measurements: list[Measurement] = []

    def is_measure_step(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def measures_activations(self, step: int) -> bool:
        """True when this step's forward must run the eager module: torch.compile traces forward hooks once and
        guards only on their number, so hooks armed per step are not reliably called in a compiled graph."""
        return self.hooks is not None and self.is_measure_step(step)

    # ------------------------------------------------------------------ the step protocol
    def before_forward(self, step: int) -> None:
        self._close_step()
        if self.hooks is not None:
            self.hooks.disarm()  # a forward that raised may have left them armed
        if self.measures_activations(step):
            self._step = step
            self.hooks.arm()

    def after_backward(self, step: int, global_grad_norm: bool = False) -> None:
        """`global_grad_norm`: record grad_norm/global at this step even if it is not a measure step."""
        if self.hooks is not None:
            self.hooks.disarm()  # the forward is over: eval and later steps must not pay for hooks
        if not self.layers.params:
            return
        with torch.no_grad():
            if self.is_measure_step(step):
                self._step = step
                if (grad_norms := self.layers.grad_norms()) is not None:
                    self._add_per_layer("grad_norm", grad_norms)
                self._add_per_layer("param_norm", self.layers.param_norms(keep_snapshot=self.record_update_ratio))
            elif global_grad_norm and (norm := self.layers.global_grad_norm()) is not None:
                self._step = step
                self._add(["grad_norm/global"], norm)
        if self.sharpness is not None and self.sharpness.is_measure_step(step):
            self._step = step
            if values := self.sharpness.measure():
                self._add(list(values), torch.stack([value.float() for value in values.values()]))

    def after_optimizer_step(self, step: int) -> None:
        ratios = self.layers.update_ratios()  # frees the snapshot in any case
        if ratios is not None and self._step == step:
            self._add_per_layer("update_ratio", *ratios)
        self._close_step()

    def _add(self, keys: list[str], values: torch.Tensor) -> None:
        if self._step is not None:
            self._keys.extend(keys)
            self._values.append(values.detach().float().reshape(-1))

    def _add_per_layer(self, kind: str, per_layer: torch.Tensor, overall: torch.Tensor | None = None) -> None:
        """`<kind>/global` (by default the norm of the per-layer values) and `<kind>/<layer>` for every layer."""
        self._add([f"{kind}/global"], per_layer.square().sum().sqrt() if overall is None else overall)
        self._add([f"{kind}/{name}" for name in self.layer_names], per_layer)

    def _close_step(self) -> None:
        """The measured step's values become one device vector, waiting to be taken."""
        if self._step is not None and self._values:
            self._measurements.append(Measurement(self._step, self._keys, torch.cat(self._values)))
        self._step, self._keys, self._values = None, [], []

    # ------------------------------------------------------------------ to the host
    def take_measurements(self) -> list[Measurement]:
        """Hand over every measurement not taken yet (still on the device)."""
        self._close_step()
        measurements, self._measurements = self._measurements, []
        return measurements

    def receive(self, measurements: list[Measurement], host_values: list[list[float]]) -> list[dict]:
        """One record per measured step from the measurements' host values; the history learns them too."""
        records = [{"step": measurement.step, **dict(zip(measurement.keys, values))}
                   for measurement, values in zip(measurements, host_values)]
        for record in records:
            self.history.add(record)
            self.mechanism.add(record)
        return records

    def readback(self) -> list[dict]:
        """take_measurements + to_host + receive, for a caller with no values of its own to copy along."""
        measurements = self.take_measurements()
        return self.receive(measurements, to_host([measurement.values for measurement in measurements]))

    def summary(self, test_acc_by_step: Mapping[int, float] | Iterable[tuple[int, float]] | None = None) -> dict:
        """The probe's summary.json fields, from what has been read back (the host history)."""
        return {**self.history.summary(), **self.mechanism.summary(),
                "steps_to_acc": steps_to_accuracy(test_acc_by_step, self.acc_targets),
                "instrument_every": self.every}
