"""Per-layer L2 norms of gradients, parameters and updates, in a few fused kernels per measurement.

A "layer" is a module that directly owns trainable parameters (e.g. `groups.1.conv2`); its weight and bias are
reported together under the module's name. The norms of all tensors come from one `torch._foreach_norm`, and one
`index_add_` sums their squares per layer, instead of a Python loop of reductions.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn


def tensor_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of every tensor, as one fp32 vector (one fused launch per device and dtype on CUDA)."""
    return torch.stack([norm.float() for norm in torch._foreach_norm(tensors, 2)])


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user module behind torch.compile's wrapper (its `_orig_mod`), so that layer names stay stable."""
    return getattr(model, "_orig_mod", model)


class ParameterLayers:
    """The model's trainable parameters grouped by the module that owns them."""

    def __init__(self, model: nn.Module):
        self.names: list[str] = []
        self.params: list[nn.Parameter] = []
        layer_of_param: list[int] = []
        # named_parameters yields each parameter once (the first module that has it), a module's own together
        trainable = ((name, param) for name, param in model.named_parameters() if param.requires_grad)
        for module_name, owned in itertools.groupby(trainable, key=lambda item: item[0].rpartition(".")[0]):
            for _, param in owned:
                self.params.append(param)
                layer_of_param.append(len(self.names))
            self.names.append(module_name or "model")
        self._layer_of_param = tuple(layer_of_param)
        # per (device, layer ids): a fresh host-to-device copy on each measure step would wait for the GPU
        self._layer_index_cache: dict[tuple, torch.Tensor] = {}
        self._snapshot: list[torch.Tensor] | None = None
        self._snapshot_norms: torch.Tensor | None = None

    def _per_layer(self, tensors: list[torch.Tensor], layer_ids: tuple[int, ...]) -> torch.Tensor:
        """sqrt(sum of squared tensor norms within each layer), as one fp32 vector; `layer_ids`: each tensor's
        layer (an index into `names`)."""
        norms = tensor_norms(tensors)
        key = (norms.device, layer_ids)
        if key not in self._layer_index_cache:
            self._layer_index_cache[key] = torch.tensor(layer_ids, dtype=torch.long, device=norms.device)
        squared = torch.zeros(len(self.names), dtype=torch.float32, device=norms.device)
        return squared.index_add_(0, self._layer_index_cache[key], norms.square()).sqrt()

    def grad_norms(self) -> torch.Tensor | None:
        """Per-layer gradient norms (a layer without gradients counts 0); None before any backward."""
        with_grad = [i for i, p in enumerate(self.params) if p.grad is not None]
        layer_ids = tuple(self._layer_of_param[i] for i in with_grad)
        return self._per_layer([self.params[i].grad for i in with_grad], layer_ids) if with_grad else None

    def global_grad_norm(self) -> torch.Tensor | None:
        """The norm of all gradients together (one fused norm, no per-layer work); None before any backward."""
        grads = [p.grad for p in self.params if p.grad is not None]
        return tensor_norms(grads).square().sum().sqrt() if grads else None

    def param_norms(self, keep_snapshot: bool) -> torch.Tensor:
        """Per-layer parameter norms; with `keep_snapshot`, also a copy of the parameters for `update_ratios`."""
        params = [p.detach() for p in self.params]
        norms = self._per_layer(params, self._layer_of_param)
        if keep_snapshot:
            self._snapshot = list(torch._foreach_mul(params, 1.0))  # a few fused copy kernels
            self._snapshot_norms = norms
        return norms

    def update_ratios(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(per layer, global) ||w_after - w_before|| / ||w_before|| against the snapshot, which it frees; None
        without one."""
        if self._snapshot is None:
            return None
        deltas = torch._foreach_sub([p.detach() for p in self.params], self._snapshot)
        update_norms, weight_norms = self._per_layer(deltas, self._layer_of_param), self._snapshot_norms
        self._snapshot = self._snapshot_norms = None
        # clamp: no 0/0 for zero-initialised layers
        per_layer = update_norms / weight_norms.clamp_min(1e-12)
        overall = update_norms.square().sum().sqrt() / weight_norms.square().sum().sqrt().clamp_min(1e-12)
        return per_layer, overall
