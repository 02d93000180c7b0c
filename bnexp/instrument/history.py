"""Host-side history of what the probe read back so far, and the summary.json fields derived from it: gradient
norms (GradNormHistory) and the last channel-mixing / dead-unit measurements (MechanismHistory)."""
from __future__ import annotations

import math
from typing import Iterable, Mapping


class GradNormHistory:
    def __init__(self, layer_names: list[str]):
        self.layer_names = layer_names
        self.init_layer_norms: dict[str, float] = {}  # at the first measured step (step 0 in a run)
        self.latest_layer_norms: dict[str, float] = {}
        # the largest finite norms so far: (value, step) of the global norm, (value, layer, step) per layer
        self.max_global_norm: tuple[float, int | None] = (-math.inf, None)
        self.max_layer_norm: tuple[float, str | None, int | None] = (-math.inf, None, None)

    def add(self, record: Mapping[str, float]) -> None:
        step = int(record["step"])
        global_norm = float(record.get("grad_norm/global", math.nan))
        if math.isfinite(global_norm) and global_norm > self.max_global_norm[0]:
            self.max_global_norm = (global_norm, step)
        layer_norms = {name: float(record[f"grad_norm/{name}"]) for name in self.layer_names
                       if f"grad_norm/{name}" in record}
        if not layer_norms:
            return
        self.init_layer_norms = self.init_layer_norms or layer_norms
        self.latest_layer_norms = layer_norms
        for name, value in layer_norms.items():
            if math.isfinite(value) and value > self.max_layer_norm[0]:
                self.max_layer_norm = (value, name, step)

    def summary(self) -> dict:
        max_global_norm, max_global_step = self.max_global_norm
        max_layer_norm, max_layer, max_layer_step = self.max_layer_norm
        return {
            # the largest per-layer gradient norm, the layer it came from and when
            "max_grad_norm": max_layer_norm if max_layer is not None else None,
            "max_grad_norm_layer": max_layer,
            "max_grad_norm_step": max_layer_step,
            "max_global_grad_norm": max_global_norm if max_global_step is not None else None,
            "max_global_grad_norm_step": max_global_step,
            "grad_norm_ratio_first_last": self.first_over_last_layer(),
            "init_grad_norms": dict(self.init_layer_norms),
        }

    def first_over_last_layer(self) -> float | None:
        """First layer's over last layer's (model order) gradient norm at the last measured step: how much the
        gradient grows or shrinks through the depth of the network by the end of training."""
        if not self.layer_names:
            return None
        first = self.latest_layer_norms.get(self.layer_names[0], math.nan)
        last = self.latest_layer_norms.get(self.layer_names[-1], math.nan)
        return first / last if math.isfinite(first) and math.isfinite(last) and last > 0 else None


class MechanismHistory:
    """The last measured `act/<act>/dead_frac`, `bn/<norm>/{xhat,out}_std_ratio`, `bn/<norm>/xhat_offset_max`,
    `bn/<norm>/gamma_ratio` and `act/<linear>/in_zero_frac` values, summarised over layers for summary.json
    (non-finite values, e.g. of a diverging step, are left out)."""

    # summary.json field: the prefix and suffix of the keys it summarises, and how (over layers)
    FIELDS = {"final_dead_frac": ("act/", "/dead_frac", lambda values: sum(values) / len(values)),
              "final_dead_frac_max": ("act/", "/dead_frac", max),
              "final_out_std_ratio": ("bn/", "/out_std_ratio", max),
              "final_gamma_ratio": ("bn/", "/gamma_ratio", max),
              "final_xhat_std_ratio": ("bn/", "/xhat_std_ratio", max),
              "final_xhat_offset_max": ("bn/", "/xhat_offset_max", max),
              "final_zero_input_frac": ("act/", "/in_zero_frac", max)}

    def __init__(self):
        self.latest: dict[str, list[float]] = {}  # summary field -> the values it summarises
        self.step: int | None = None

    def add(self, record: Mapping[str, float]) -> None:
        found = {field: [float(value) for key, value in record.items()
                         if key.startswith(prefix) and key.endswith(suffix) and math.isfinite(float(value))]
                 for field, (prefix, suffix, _) in self.FIELDS.items()}
        if any(found.values()):
            self.latest, self.step = found, int(record["step"])

    def summary(self) -> dict:
        return {**{field: how(self.latest[field]) if self.latest.get(field) else None
                   for field, (_, _, how) in self.FIELDS.items()},
                "final_mechanism_step": self.step}


def steps_to_accuracy(test_acc_by_step: Mapping[int, float] | Iterable[tuple[int, float]] | None,
                      targets: Iterable[float]) -> dict[str, int | None]:
    """First step at which test accuracy reached each target; None if never. Keys are str(target)."""
    items = test_acc_by_step.items() if isinstance(test_acc_by_step, Mapping) else (test_acc_by_step or [])
    items = sorted((int(step), float(acc)) for step, acc in items)
    return {str(float(target)): next((step for step, acc in items if acc >= target), None) for target in targets}
