"""Training-stability instrumentation, one job per module:

- `probe.py`: StabilityProbe, the cadence (which steps are measured) and the measurements' trip to the host;
- `layers.py`: gradient, parameter and update norms per layer;
- `hooks.py`: activation statistics from forward hooks (norm-layer inputs, output RMS, the spread of channel scales
  after each norm layer, dead units after each activation), one list to extend;
- `history.py`: the host-side gradient-norm and mechanism history and the summary fields derived from it;
- `loss.py`: loss spikes and the loss AUC, from the losses the trainer reads back;
- `sharpness.py`: the top eigenvalue of the loss's Hessian (Lanczos on Hessian-vector products, on a fixed batch)
  and the optimizer's stability threshold, every `instrument.sharpness_every` steps.

bnexp/train/step.py is the caller: TrainStep runs the probe around each step, LogWindow reads its measurements back.
"""
from bnexp.config.compose import default_instrument_cfg
from bnexp.instrument.history import steps_to_accuracy
from bnexp.instrument.hooks import ForwardHooks, ForwardStat
from bnexp.instrument.loss import LossCurve
from bnexp.instrument.probe import StabilityProbe, to_host
from bnexp.instrument.sharpness import SharpnessProbe, stability_threshold

__all__ = ["ForwardHooks", "ForwardStat", "LossCurve", "SharpnessProbe", "StabilityProbe", "default_instrument_cfg",
           "stability_threshold", "steps_to_accuracy", "to_host"]
