"""Training-stability instrumentation: gradient, parameter, update and activation statistics.

`StabilityProbe` is called by the trainer around every optimisation step:

    probe.before_forward(step)          # arms activation hooks on measure steps
    net = model if probe.measures_activations(step) else compiled_model   # hooks need eager mode
    loss = net(x) ...; loss.backward()
    probe.after_backward(step)          # grad norms, param norms, parameter snapshot
    optimizer.step()
    probe.after_optimizer_step(step)    # update-to-weight ratios
    probe.record_loss(step, loss.detach())
    ...
    records = probe.readback()          # every log interval: ONE host sync for everything pending
    summary = probe.summary(test_acc_by_step)

Design rules (why the code looks the way it does):
- Every measurement stays a device tensor until `readback()` (or `readback_with(*values)`, which adds the
  caller's own device values, e.g. the trainer's window losses), which concatenates all pending
  values and copies them to the host with a single `.tolist()`; nothing else synchronises, so the
  GPU queue never drains because of instrumentation.
- Off measure steps the probe costs one tiny copy per step (the loss into a device buffer; spike and
  AUC bookkeeping runs on a chunk of losses every few steps) and nothing else: activation hooks are
  only registered for the forward pass of a measure step and removed afterwards.
- Per-layer quantities are computed with one `torch._foreach_norm` over all parameters followed by one
  `index_add_` that sums squared norms per layer, instead of a Python loop of reductions.
- A "layer" is a module that directly owns trainable parameters (e.g. `layers.3.conv1`); its weight and
  bias are reported together under the module's name.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from bnexp.config import config_value

_NO_SPIKE = 2**62  # "no spike yet" marker for the device-side first-spike step (a min() reduction)

DEFAULT_INSTRUMENT_CFG = {
    "every": 50,  # measure every N optimiser steps (step 0 always); 0 disables measurements
    "loss_spike_factor": 3.0,  # a step's loss is a spike if > factor x running median of recent losses
    "loss_window": 64,  # number of recent losses the running median is taken over
    "acc_targets": [0.5, 0.7, 0.8],  # test accuracies for summary.json steps_to_acc
    "activations": True,  # record bn/ and act/ statistics with forward hooks on measure steps
    "update_ratio": True,  # snapshot parameters to measure ||dw|| / ||w|| on measure steps
}


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the user module behind torch.compile / DataParallel wrappers, so layer names stay stable."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def is_norm_layer(module: nn.Module) -> bool:
    """Batch-norm-like layers: torch's _BatchNorm family and bnexp's BatchNorm2d (has `stat_groups`)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or hasattr(module, "stat_groups")


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of every tensor in the list, as one fp32 vector (one fused launch per device/dtype on CUDA)."""
    if hasattr(torch, "_foreach_norm"):
        norms = torch._foreach_norm(tensors, 2)
    else:  # very old torch
        norms = [torch.linalg.vector_norm(t) for t in tensors]
    return torch.stack([n.float() for n in norms])


class StabilityProbe:
    """Collects stability statistics of one model; see the module docstring for the call protocol."""

    def __init__(self, model: nn.Module, instrument_cfg: Any = None, global_grad_norm_every: int = 0):
        """`global_grad_norm_every`: also record just `grad_norm/global` (one fused norm, no per-layer work)
        every that many steps, e.g. at each log step of the trainer; 0 turns this off."""
        self.model = unwrap_model(model)
        self.every = int(config_value(instrument_cfg, "every", DEFAULT_INSTRUMENT_CFG["every"]))
        self.global_grad_norm_every = max(0, int(global_grad_norm_every or 0))
        self.loss_spike_factor = float(
            config_value(instrument_cfg, "loss_spike_factor", DEFAULT_INSTRUMENT_CFG["loss_spike_factor"])
        )
        self.loss_window = max(1, int(config_value(instrument_cfg, "loss_window", DEFAULT_INSTRUMENT_CFG["loss_window"])))
        self.acc_targets = [
            float(t) for t in config_value(instrument_cfg, "acc_targets", DEFAULT_INSTRUMENT_CFG["acc_targets"])
        ]
        self.record_activations = bool(
            config_value(instrument_cfg, "activations", DEFAULT_INSTRUMENT_CFG["activations"])
        )
        self.record_update_ratio = bool(
            config_value(instrument_cfg, "update_ratio", DEFAULT_INSTRUMENT_CFG["update_ratio"])
        )

        self._collect_layers()

        # Per measure step: (step, [keys], [1-D device tensors]); finalised into one tensor per step.
        self._current_step: int | None = None
        self._current_keys: list[str] = []
        self._current_values: list[torch.Tensor] = []
        self._pending: list[tuple[int, list[str], torch.Tensor]] = []
        self._hook_handles: list[Any] = []
        self._hooked_layers_seen: set[str] = set()
        self._param_snapshot: list[torch.Tensor] | None = None
        self._param_norms_by_layer: torch.Tensor | None = None

        # Loss tracking lives on the loss's device, allocated at the first record_loss call. Losses are
        # buffered per step and examined a chunk at a time, so a normal step launches one copy kernel.
        self._loss_chunk_size = min(16, self.loss_window)
        self._losses_recorded = 0
        self._loss_chunk: torch.Tensor | None = None
        self._loss_chunk_count = 0
        self._loss_chunk_first_step = 0
        self._loss_window_values: torch.Tensor | None = None
        self._loss_spike_threshold: torch.Tensor | None = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_spike_count: torch.Tensor | None = None
        self._first_loss_spike_step: torch.Tensor | None = None

        # Host-side history, filled by readback(); the summary is derived from it.
        self._global_grad_norm_by_step: dict[int, float] = {}
        self._init_grad_norms: dict[str, float] | None = None
        self._max_layer_grad_norm: tuple[float, str | None, int | None] = (-math.inf, None, None)
        self._latest_layer_grad_norms: dict[str, float] = {}

    # ------------------------------------------------------------------ layer discovery
    def _collect_layers(self) -> None:
        """Group trainable parameters by the module that owns them (weight + bias of one layer together)."""
        seen_param_ids: set[int] = set()
        self.layer_names: list[str] = []
        self.params: list[nn.Parameter] = []
        layer_index_of_param: list[int] = []
        for module_name, module in self.model.named_modules():
            own_params = [
                p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in seen_param_ids
            ]
            if not own_params:
                continue
            layer_id = len(self.layer_names)
            self.layer_names.append(module_name or "model")
            for param in own_params:
                seen_param_ids.add(id(param))
                self.params.append(param)
                layer_index_of_param.append(layer_id)
        self._layer_index_of_param = layer_index_of_param
        self._layer_index_tensors: dict[tuple, torch.Tensor] = {}

        self.grad_norm_keys = [f"grad_norm/{name}" for name in self.layer_names]
        self.param_norm_keys = [f"param_norm/{name}" for name in self.layer_names]
        self.update_ratio_keys = [f"update_ratio/{name}" for name in self.layer_names]

        # Modules whose activations we watch: norm layers get input statistics (bn/) and output RMS (act/),
        # conv/linear layers get output RMS (act/).
        self.norm_layers: dict[str, nn.Module] = {}
        self.activation_layers: dict[str, nn.Module] = {}
        for module_name, module in self.model.named_modules():
            if is_norm_layer(module):
                self.norm_layers[module_name] = module
                self.activation_layers[module_name] = module
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                self.activation_layers[module_name] = module

    def _layer_index(self, device: torch.device, param_indices: list[int] | None = None) -> torch.Tensor:
        """Device tensor mapping each (selected) parameter to its layer id, cached per device and selection: a
        fresh host-to-device copy on each measure step would wait for the GPU queue."""
        selection = None if param_indices is None else tuple(param_indices)
        key = (device, selection)
        if key not in self._layer_index_tensors:
            layer_ids = self._layer_index_of_param if selection is None else \
                [self._layer_index_of_param[i] for i in selection]
            self._layer_index_tensors[key] = torch.tensor(layer_ids, dtype=torch.long, device=device)
        return self._layer_index_tensors[key]

    def _per_layer_norms(self, tensor_norms: torch.Tensor, param_indices: list[int] | None) -> torch.Tensor:
        """Combine per-tensor L2 norms into per-layer L2 norms: sqrt(sum of squares within each layer)."""
        index = self._layer_index(tensor_norms.device, param_indices)
        squared = torch.zeros(len(self.layer_names), dtype=torch.float32, device=tensor_norms.device)
        squared.index_add_(0, index, tensor_norms.square())
        return squared.sqrt()

    # ------------------------------------------------------------------ step protocol
    def is_measure_step(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def measures_activations(self, step: int) -> bool:
        """True when this step's forward should run eagerly: torch.compile traces forward hooks into its
        graph once and guards only on their number, so hooks added per step are not reliably called.
        A trainer using torch.compile runs the uncompiled module on these steps (same maths, 1 in `every`)."""
        return self.record_activations and self.is_measure_step(step)

    def before_forward(self, step: int) -> None:
        self._finalize_current_step()
        self._remove_hooks()  # a forward that raised may have left hooks behind
        if not self.is_measure_step(step):
            return
        self._current_step = step
        if self.record_activations:
            self._install_hooks()

    def after_backward(self, step: int, record_global_grad_norm: bool | None = None) -> None:
        """`record_global_grad_norm`: whether a step that is not a measure step records `grad_norm/global` (the
        trainer passes True at the first step of each log window); None follows `global_grad_norm_every`."""
        # The forward pass is over: later forwards (eval, next step) must not pay for hooks.
        self._remove_hooks()
        if not self.params:
            return
        if not self.is_measure_step(step):
            if record_global_grad_norm is None:
                record_global_grad_norm = bool(self.global_grad_norm_every) and step % self.global_grad_norm_every == 0
            if record_global_grad_norm:
                self._record_global_grad_norm_only(step)
            return
        self._current_step = step

        with torch.no_grad():
            grad_param_indices = [i for i, p in enumerate(self.params) if p.grad is not None]
            if grad_param_indices:
                all_have_grads = len(grad_param_indices) == len(self.params)
                index_arg = None if all_have_grads else grad_param_indices
                grads = [self.params[i].grad for i in grad_param_indices]
                grad_norms_by_layer = self._per_layer_norms(_norms(grads), index_arg)
                global_grad_norm = grad_norms_by_layer.square().sum().sqrt()
                self._add_values(["grad_norm/global"], global_grad_norm.reshape(1))
                self._add_values(self.grad_norm_keys, grad_norms_by_layer)

            params = [p.detach() for p in self.params]
            param_norms_by_layer = self._per_layer_norms(_norms(params), None)
            self._add_values(["param_norm/global"], param_norms_by_layer.square().sum().sqrt().reshape(1))
            self._add_values(self.param_norm_keys, param_norms_by_layer)

            if self.record_update_ratio:
                # Only a measure step pays for this copy; it is freed after the optimiser step.
                self._param_snapshot = (
                    list(torch._foreach_mul(params, 1.0)) if hasattr(torch, "_foreach_mul") else [p.clone() for p in params]
                )  # foreach: a few fused copy kernels instead of one per parameter
                self._param_norms_by_layer = param_norms_by_layer

    def _record_global_grad_norm_only(self, step: int) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            with torch.no_grad():
                self._current_step = step
                self._add_values(["grad_norm/global"], _norms(grads).square().sum().sqrt().reshape(1))

    def after_optimizer_step(self, step: int) -> None:
        if self._param_snapshot is not None and self._current_step == step:
            with torch.no_grad():
                current = [p.detach() for p in self.params]
                if hasattr(torch, "_foreach_sub"):
                    deltas = torch._foreach_sub(current, self._param_snapshot)
                else:
                    deltas = [c - s for c, s in zip(current, self._param_snapshot)]
                update_norms_by_layer = self._per_layer_norms(_norms(deltas), None)
                weight_norms = self._param_norms_by_layer
                # ||dw|| / ||w|| with w before the update; clamp avoids 0/0 for zero-initialised layers.
                ratios = update_norms_by_layer / weight_norms.clamp_min(1e-12)
                global_ratio = update_norms_by_layer.square().sum().sqrt() / weight_norms.square().sum().sqrt().clamp_min(
                    1e-12
                )
                self._add_values(["update_ratio/global"], global_ratio.reshape(1))
                self._add_values(self.update_ratio_keys, ratios)
        self._param_snapshot = None
        self._param_norms_by_layer = None
        self._finalize_current_step()

    def record_loss(self, step: int, loss: torch.Tensor) -> None:
        """Called every step with the detached loss: one device copy, never a host sync."""
        loss = loss.detach().reshape(())
        if self._loss_chunk is None:
            self._allocate_loss_buffers(loss.device)
        if self._loss_chunk_count == 0:
            self._loss_chunk_first_step = step  # steps within a chunk are consecutive (one call per step)
        self._loss_chunk[self._loss_chunk_count] = loss
        self._loss_chunk_count += 1
        self._losses_recorded += 1
        if self._loss_chunk_count == self._loss_chunk_size:
            self._process_loss_chunk()

    def _allocate_loss_buffers(self, device: torch.device) -> None:
        self._loss_chunk = torch.zeros(self._loss_chunk_size, device=device)
        self._loss_chunk_offsets = torch.arange(self._loss_chunk_size, device=device)
        self._loss_window_values = torch.full((self.loss_window,), math.nan, device=device)
        self._loss_window_position = 0
        self._loss_window_filled = 0
        self._loss_spike_threshold = torch.full((), math.inf, device=device)  # no spike before a reference exists
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # fp64: exact over long runs
        self._loss_spike_count = torch.zeros((), dtype=torch.long, device=device)
        self._first_loss_spike_step = torch.full((), _NO_SPIKE, dtype=torch.long, device=device)

    def _process_loss_chunk(self) -> None:
        """Spike count, first spike step, loss sum and running median for the buffered losses (device ops only).

        A loss is a spike when it exceeds loss_spike_factor x the median of the `loss_window` losses before
        its chunk; the first chunk has no reference yet, so spikes are detected from step `chunk size` on."""
        count = self._loss_chunk_count
        if count == 0 or self._loss_chunk is None:
            return
        losses = self._loss_chunk[:count]
        is_spike = losses > self._loss_spike_threshold
        self._loss_spike_count += is_spike.sum()
        spike_steps = (self._loss_chunk_offsets[:count] + self._loss_chunk_first_step).masked_fill_(~is_spike, _NO_SPIKE)
        self._first_loss_spike_step = torch.minimum(self._first_loss_spike_step, spike_steps.min())
        self._loss_sum += losses.sum(dtype=torch.float64)

        # Ring buffer of recent losses (one or two slice copies), then the new spike threshold.
        written = 0
        while written < count:
            length = min(count - written, self.loss_window - self._loss_window_position)
            self._loss_window_values[self._loss_window_position : self._loss_window_position + length] = losses[
                written : written + length
            ]
            self._loss_window_position = (self._loss_window_position + length) % self.loss_window
            written += length
        self._loss_window_filled = min(self.loss_window, self._loss_window_filled + count)
        recent = self._loss_window_values[: self._loss_window_filled]
        self._loss_spike_threshold = recent.nanmedian() * self.loss_spike_factor
        self._loss_chunk_count = 0

    # ------------------------------------------------------------------ activation hooks
    def _install_hooks(self) -> None:
        self._hooked_layers_seen = set()
        for name, module in self.norm_layers.items():
            self._hook_handles.append(module.register_forward_pre_hook(self._make_norm_input_hook(name, module)))
        for name, module in self.activation_layers.items():
            self._hook_handles.append(module.register_forward_hook(self._make_output_hook(name)))

    def _remove_hooks(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

    def _first_call(self, key: str) -> bool:
        """Record each layer once per step, even if the module is called again (weight sharing, checkpointing)."""
        if key in self._hooked_layers_seen:
            return False
        self._hooked_layers_seen.add(key)
        return True

    def _make_norm_input_hook(self, name: str, module: nn.Module):
        keys = [
            f"bn/{name}/{stat}"
            for stat in ("mean_mean", "mean_min", "mean_max", "var_mean", "var_min", "var_max")
        ]
        gap_keys = [f"bn/{name}/running_mean_gap", f"bn/{name}/running_var_logratio"]

        def norm_input_hook(_module, inputs):
            if not inputs or not torch.is_tensor(inputs[0]) or inputs[0].dim() < 2:
                return
            if not self._first_call("bn/" + name):
                return
            with torch.no_grad():
                x = inputs[0].detach()
                x = x if x.dtype == torch.float32 else x.float()  # fp32 statistics under autocast
                reduce_dims = [d for d in range(x.dim()) if d != 1]
                channel_var, channel_mean = torch.var_mean(x, dim=reduce_dims, unbiased=False)
                mean_min, mean_max = torch.aminmax(channel_mean)
                var_min, var_max = torch.aminmax(channel_var)
                stats = torch.stack([channel_mean.mean(), mean_min, mean_max, channel_var.mean(), var_min, var_max])
                self._add_values(keys, stats)

                # Gap between the running statistics (read BEFORE this batch updates them, i.e. what eval
                # mode would use now) and this batch's statistics, at the layer's statistic granularity.
                running_mean = getattr(module, "running_mean", None)
                running_var = getattr(module, "running_var", None)
                if torch.is_tensor(running_mean) and torch.is_tensor(running_var):
                    num_groups = running_mean.numel()
                    channels = channel_mean.numel()
                    if num_groups > 0 and channels % num_groups == 0:
                        group_mean = channel_mean.view(num_groups, -1).mean(1)
                        # E[x^2] per group from per-channel (var + mean^2); equal counts per channel.
                        group_var = (channel_var + channel_mean.square()).view(num_groups, -1).mean(1) - group_mean.square()
                        group_var = group_var.clamp_min(0)
                        eps = float(getattr(module, "eps", 1e-5))
                        mean_gap = ((running_mean.float() - group_mean).abs() / (group_var + eps).sqrt()).mean()
                        var_logratio = ((running_var.float() + eps) / (group_var + eps)).log().abs().mean()
                        self._add_values(gap_keys, torch.stack([mean_gap, var_logratio]))

        return norm_input_hook

    def _make_output_hook(self, name: str):
        key = f"act/{name}/rms"

        def output_hook(_module, _inputs, output):
            if not torch.is_tensor(output) or not self._first_call(key):
                return
            with torch.no_grad():
                # vector_norm accumulates in fp32 without materialising a squared (or upcast) copy.
                norm = torch.linalg.vector_norm(output.detach(), dtype=torch.float32)
                self._add_values([key], (norm / math.sqrt(max(output.numel(), 1))).reshape(1))

        return output_hook

    # ------------------------------------------------------------------ buffering and readback
    def _add_values(self, keys: list[str], values: torch.Tensor) -> None:
        self._current_keys.extend(keys)
        self._current_values.append(values.detach().float().reshape(-1))

    def _finalize_current_step(self) -> None:
        """Concatenate this measure step's values into one device vector awaiting readback."""
        if self._current_step is not None and self._current_values:
            device = self._current_values[0].device
            values = torch.cat([v.to(device) for v in self._current_values])
            self._pending.append((self._current_step, self._current_keys, values))
        self._current_step = None
        self._current_keys = []
        self._current_values = []

    def loss_spikes_so_far(self) -> torch.Tensor | None:
        """Device scalar: loss spikes counted so far (losses are checked 16 at a time, so it lags a little)."""
        return self._loss_spike_count

    def readback(self) -> list[dict]:
        """Copy every pending measurement to the host (one device->host transfer) and return one dict per step."""
        return self.readback_with()[0]

    def readback_with(self, *extras: torch.Tensor) -> tuple[list[dict], list[float]]:
        """readback(), plus the caller's own device values (e.g. a log window's losses and the spike count) in
        the same transfer: (one dict per measured step, the extras flattened, in order, as host floats)."""
        self._finalize_current_step()
        pending, self._pending = self._pending, []
        extra_chunks = [extra.reshape(-1) for extra in extras]
        chunks = [values for _, _, values in pending] + extra_chunks
        if not chunks:
            return [], []
        device = chunks[0].device
        flat_values = torch.cat([chunk.to(device) for chunk in chunks]).tolist()
        extra_values = flat_values[len(flat_values) - sum(chunk.numel() for chunk in extra_chunks):]

        records = []
        offset = 0
        for step, keys, values in pending:
            record: dict[str, float | int] = {"step": step}
            record.update(zip(keys, flat_values[offset : offset + len(keys)]))
            offset += len(keys)
            records.append(record)
            self._update_history(record)
        return records, extra_values

    def _update_history(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        if "grad_norm/global" in record:
            self._global_grad_norm_by_step[step] = float(record["grad_norm/global"])
        layer_norms = {
            name: float(record[key]) for name, key in zip(self.layer_names, self.grad_norm_keys) if key in record
        }
        if layer_norms and self._init_grad_norms is None:
            self._init_grad_norms = layer_norms
        if layer_norms:
            self._latest_layer_grad_norms = layer_norms
        for name, value in layer_norms.items():
            if math.isfinite(value) and value > self._max_layer_grad_norm[0]:
                self._max_layer_grad_norm = (value, name, step)

    # ------------------------------------------------------------------ summary
    def summary(self, test_acc_by_step: Mapping[int, float] | Iterable[tuple[int, float]] | None = None) -> dict:
        """Instrumentation fields for summary.json (flushes any measurement not read back yet)."""
        self._finalize_current_step()
        if self._pending:
            self.readback()

        finite_global = {s: v for s, v in self._global_grad_norm_by_step.items() if math.isfinite(v)}
        if finite_global:
            max_step = max(finite_global, key=finite_global.get)
            max_global_grad_norm, max_global_grad_norm_step = finite_global[max_step], max_step
        else:
            max_global_grad_norm, max_global_grad_norm_step = None, None
        max_layer_norm, max_layer, max_layer_step = self._max_layer_grad_norm

        # First layer over last layer (in model order) at the last measured step: how much the gradient
        # grows or shrinks through the depth of the network by the end of training.
        grad_norm_ratio = None
        latest = self._latest_layer_grad_norms
        if self.layer_names and self.layer_names[0] in latest and self.layer_names[-1] in latest:
            first_layer, last_layer = latest[self.layer_names[0]], latest[self.layer_names[-1]]
            if math.isfinite(first_layer) and math.isfinite(last_layer) and last_layer > 0:
                grad_norm_ratio = first_layer / last_layer

        loss_auc, loss_spikes, first_spike_step = None, 0, None
        self._process_loss_chunk()  # the losses since the last full chunk
        if self._loss_sum is not None and self._losses_recorded > 0:
            loss_sum, spikes, first_spike = torch.stack(
                [self._loss_sum, self._loss_spike_count.double(), self._first_loss_spike_step.double()]
            ).tolist()
            mean_loss = loss_sum / self._losses_recorded
            loss_auc = mean_loss if math.isfinite(mean_loss) else None
            loss_spikes = int(spikes)
            first_spike_step = int(first_spike) if first_spike != _NO_SPIKE else None

        return {
            # The largest per-layer gradient norm, the layer it came from and when.
            "max_grad_norm": max_layer_norm if max_layer is not None else None,
            "max_grad_norm_layer": max_layer,
            "max_grad_norm_step": max_layer_step,
            "max_global_grad_norm": max_global_grad_norm,
            "max_global_grad_norm_step": max_global_grad_norm_step,
            "steps_to_acc": steps_to_accuracy(test_acc_by_step, self.acc_targets),
            # Mean per-step train loss = area under the loss curve with x = fraction of training done.
            "train_loss_auc": loss_auc,
            "grad_norm_ratio_first_last": grad_norm_ratio,
            "init_grad_norms": dict(self._init_grad_norms or {}),
            "loss_spikes": loss_spikes,
            "first_loss_spike_step": first_spike_step,
            "instrument_every": self.every,
        }


def steps_to_accuracy(
    test_acc_by_step: Mapping[int, float] | Iterable[tuple[int, float]] | None, targets: Iterable[float]
) -> dict[str, int | None]:
    """First step at which test accuracy reached each target; None if never. Keys are str(target)."""
    if test_acc_by_step is None:
        items: list[tuple[int, float]] = []
    elif isinstance(test_acc_by_step, Mapping):
        items = list(test_acc_by_step.items())
    else:
        items = list(test_acc_by_step)
    items = sorted((int(step), float(acc)) for step, acc in items)
    result: dict[str, int | None] = {}
    for target in targets:
        result[str(float(target))] = next((step for step, acc in items if acc >= target), None)
    return result
