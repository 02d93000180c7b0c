"""`BatchNorm2d` with a choice of statistic grouping, API-compatible with `torch.nn.BatchNorm2d`.

- stat_groups=None (or C): per-channel statistics, the correct BatchNorm.
- stat_groups=1: one mean/variance over N*C*H*W, the "shared" mistake.
- anything in between pools contiguous groups of C/stat_groups channels.

Interventions that take the pooling apart (for causal tests of channel mixing): `pooled` pools only the mean or
only the variance over each group, the other statistic per channel; `freeze_weight` keeps gamma at 1.

Buffers and parameter names match `nn.BatchNorm2d` (weight, bias, running_mean,
running_var, num_batches_tracked), so a per-channel checkpoint loads into the
stock layer and back. The computation goes to the PyTorch path or the Triton
kernels, chosen by `backend`.
"""
from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor, nn

from bnexp.norm.functional import POOLED, check_eps, torch_grouped_batch_norm

BACKENDS = ("auto", "torch", "triton")
_warned_fallback = False


@functools.lru_cache(maxsize=1)
def _cached_triton_status() -> tuple[bool, str]:
    try:
        from bnexp.norm.triton_function import triton_status
    except Exception as error:  # an ImportError, or a broken Triton install
        return False, f"bnexp.norm.triton_function failed to import: {error!r}"
    return triton_status()


@functools.lru_cache(maxsize=1)
def _cached_triton_interpreting() -> bool:
    try:
        from bnexp.norm.triton_function import kernels_interpreted
    except Exception:
        return False
    return kernels_interpreted()


# Both answers hold for the whole process (Triton fixes interpreter or compiled kernels at import) and are asked
# on every forward of every layer: cached, and constants to torch.compile, which then neither traces nor guards them.
@torch.compiler.assume_constant_result
def _triton_status() -> tuple[bool, str]:
    return _cached_triton_status()


@torch.compiler.assume_constant_result
def _triton_interpreting() -> bool:
    return _cached_triton_interpreting()


def resolve_backend(requested: str, x: Tensor) -> str:
    """Pick 'torch' or 'triton' for this input: Triton runs CUDA tensors, and CPU tensors in the interpreter
    (TRITON_INTERPRET=1), which only backend='triton' asks for ('auto' keeps the fast PyTorch path on the CPU)."""
    global _warned_fallback
    if requested == "torch" or (requested == "auto" and not x.is_cuda):
        return "torch"
    if not x.is_cuda:  # backend='triton' on a CPU tensor
        if x.device.type == "cpu" and _triton_interpreting():
            return "triton"
        raise ValueError(
            f"backend='triton' needs a CUDA tensor, got one on {x.device}. CPU tensors run the Triton kernels "
            "only in Triton's interpreter: set TRITON_INTERPRET=1 in the environment before Python starts. "
            "Or use backend='auto' (Triton on CUDA, PyTorch elsewhere) or backend='torch'.")
    usable, reason = _triton_status()
    if usable:
        return "triton"
    if requested == "triton":
        raise RuntimeError(f"backend='triton' was requested but Triton is not usable: {reason}. "
                           "Install a working triton, or use backend='auto' or 'torch'.")
    if not _warned_fallback:
        warnings.warn(f"bnexp BatchNorm2d: Triton is not usable ({reason}); falling back to the "
                      "PyTorch path, which is much slower for grouped/shared statistics.", stacklevel=3)
        _warned_fallback = True
    return "torch"


class BatchNorm2d(nn.Module):
    """BatchNorm over (N, C, H, W) with statistics pooled over `stat_groups` channel groups.

    `bias=False` (keyword-only, as in nn.BatchNorm2d since torch 2.14, and accepted here on any torch version) keeps
    the scale but drops the shift.

    Extra arguments beyond `nn.BatchNorm2d`:
      stat_groups: number of statistic groups (divides num_features); None means per-channel.
      affine_per_channel: if False, one gamma/beta per statistic group instead of per channel.
      backend: 'auto' (Triton for CUDA tensors, PyTorch otherwise), 'torch' or 'triton' (CUDA tensors, or CPU
               tensors in the Triton interpreter).
      pooled: which statistic a group shares; the other is per channel.
        'both' (default): mean and variance, y_c = (x_c - mean_g) / sqrt(var_g + eps), var_g about mean_g.
        'mean': y_c = (x_c - mean_g) / sqrt(var_c + eps), var_c the channel's variance about its own mean: every
                channel leaves with std 1, as with per-channel statistics, and keeps only an offset
                (mean_c - mean_g) / sqrt(var_c + eps). (About mean_g instead, var_c would include that offset
                squared, and channels far from the group's mean would leave with std below 1: scales not equal.)
        'var':  y_c = (x_c - mean_c) / sqrt(var_g + eps), var_g the mean over the group's channels of each
                channel's variance about its own mean (the pooled within-channel variance): every channel is
                centred and keeps its scale relative to the group, std_c / sqrt(var_g).
        With stat_groups=C all three are per-channel BatchNorm. running_mean / running_var have the shape of what
        they hold: (stat_groups,) when pooled, (C,) when per channel. The running variance is unbiased as torch
        makes it: n / (n - 1), n = N*H*W for a per-channel and for the pooled within-channel variance (each of
        the k channels of a group loses one degree of freedom to its own mean: k*(n - 1) in all), N*C/G*H*W for
        'both'. 'mean' and 'var' run on the PyTorch path only: backend='triton' refuses them, and 'auto' sends
        them to the PyTorch path on every device (no kernels, no speed claim).
      freeze_weight: gamma fixed at 1 (beta still learned; needs affine=True). `weight` is then a buffer of ones,
        not a parameter, so no optimizer can train it, and the state_dict keeps nn.BatchNorm2d's keys: a
        per-channel layer's checkpoint loads into the stock layer, and a checkpoint whose weight is not all ones
        is refused on load. Works on both backends.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                 *, bias: bool = True, stat_groups: int | None = None, affine_per_channel: bool = True,
                 backend: str = "auto", layer_name: str | None = None, pooled: str = "both",
                 freeze_weight: bool = False):
        super().__init__()
        if stat_groups is not None and not float(stat_groups).is_integer():
            raise ValueError(
                f"stat_groups={stat_groups!r} is not a whole number of groups; pass an integer that divides "
                f"num_features={num_features}, e.g. 1 (shared) or {num_features} (per-channel).")
        stat_groups = num_features if stat_groups is None else int(stat_groups)
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if stat_groups < 1 or num_features % stat_groups:
            raise ValueError(
                f"stat_groups={stat_groups} must divide num_features={num_features} "
                f"(each group pools num_features/stat_groups contiguous channels); "
                f"pick a divisor of {num_features}, e.g. 1 (shared) or {num_features} (per-channel).")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
        if pooled not in POOLED:
            raise ValueError(f"pooled={pooled!r} is not one of {POOLED}: 'both' pools mean and variance over each "
                             "group, 'mean' only the mean, 'var' only the variance (the other per channel)")
        if pooled != "both" and backend == "triton":
            raise ValueError(f"pooled={pooled!r} has no Triton kernels; use backend='torch' (or 'auto', which runs "
                             "it on the PyTorch path on every device)")
        if freeze_weight and not affine:
            raise ValueError("freeze_weight=True keeps gamma at 1, but affine=False has no gamma or beta at all; "
                             "use affine=True to learn beta with gamma frozen, or freeze_weight=False")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.stat_groups = stat_groups
        self.affine_per_channel = affine_per_channel
        self.backend = backend
        self.pooled = pooled
        self.freeze_weight = bool(freeze_weight)
        # Set by the model builder, so errors can say which layer failed.
        self.layer_name = layer_name
        factory = {"device": device, "dtype": dtype}
        affine_size = num_features if affine_per_channel else stat_groups
        if freeze_weight:  # a buffer: in the state_dict as nn.BatchNorm2d's weight, never among the parameters
            self.register_buffer("weight", torch.ones(affine_size, **factory))
        else:
            self.register_parameter("weight", nn.Parameter(torch.ones(affine_size, **factory)) if affine else None)
        self.register_parameter("bias", nn.Parameter(torch.zeros(affine_size, **factory)) if affine and bias else None)
        if track_running_stats:
            buffers = {"device": device, "dtype": dtype or torch.float32}
            self.register_buffer("running_mean", torch.zeros(stat_groups if pooled != "var" else num_features,
                                                             **buffers))
            self.register_buffer("running_var", torch.ones(stat_groups if pooled != "mean" else num_features,
                                                           **buffers))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    # state_dict version, as nn.BatchNorm2d's: version 2 added num_batches_tracked
    _version = 2

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A checkpoint from before num_batches_tracked existed (version < 2), or a state dict without metadata (a
        # dict built by hand), may lack it: nn.BatchNorm2d then keeps the layer's current count (0 on a new layer,
        # or on the meta device where there is no count to keep), and so does this layer.
        version = local_metadata.get("version")
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            current = self.num_batches_tracked
            state_dict[key] = (current if current is not None and not current.is_meta
                               else torch.tensor(0, dtype=torch.long))
        weight = state_dict.get(prefix + "weight")
        if self.freeze_weight and torch.is_tensor(weight) and not weight.is_meta and not bool((weight == 1).all()):
            error_msgs.append(f"{self._describe()} has freeze_weight=True (gamma fixed at 1), but the checkpoint's "
                              f"{prefix}weight is not all ones; load it into a layer with freeze_weight=False")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}, "
                f"stat_groups={self.stat_groups}, affine_per_channel={self.affine_per_channel}, "
                f"backend={self.backend!r}, pooled={self.pooled!r}, freeze_weight={self.freeze_weight}")

    def _describe(self) -> str:
        return f"BatchNorm2d layer '{self.layer_name}'" if self.layer_name else "BatchNorm2d layer"

    def _check_input(self, x: Tensor, use_batch_stats: bool) -> None:
        # nn.BatchNorm2d's checks and in its order (shape, batch size, then eps), with messages that name the layer
        if not x.is_floating_point():
            raise TypeError(f"{self._describe()} expects a floating-point input, got {x.dtype}. Convert the input "
                            "with .float() (or normalise it before it becomes an integer tensor).")
        if x.dim() != 4:
            raise ValueError(f"{self._describe()} expects 4-D input (N, C, H, W), got {x.dim()}-D "
                             f"shape {tuple(x.shape)}. Use it after a Conv2d, or reshape the input.")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{self._describe()} was built for {self.num_features} channels but got input with "
                f"{x.shape[1]} channels (shape {tuple(x.shape)}). Build it with "
                f"num_features={x.shape[1]}, the out_channels of the layer before it.")
        if use_batch_stats and x.numel() // self.stat_groups == 1:  # (an empty batch is fine: an empty output)
            raise ValueError(
                f"{self._describe()} got one value per statistic in training (input shape "
                f"{tuple(x.shape)}, stat_groups={self.stat_groups}), so the batch variance is undefined. "
                "Use a batch size above 1, or call .eval() to use the running statistics.")
        if use_batch_stats and self.pooled != "both" and x.numel() // self.num_features == 1:
            raise ValueError(
                f"{self._describe()} got one value per channel in training (input shape {tuple(x.shape)}), but "
                f"pooled={self.pooled!r} takes each channel's variance about its own mean, which is then "
                "undefined. Use a batch size above 1, or call .eval() to use the running statistics.")
        check_eps(self.eps, use_batch_stats, self._describe())

    def _per_channel_affine(self) -> tuple[Tensor | None, Tensor | None]:
        # a frozen gamma is exactly 1: no weight at all is the same function, one multiply fewer; but per channel,
        # where F.batch_norm fuses the scale anyway, its buffer of ones goes in (torch's double backward needs a
        # weight beside a bias)
        weight = None if self.freeze_weight and self.stat_groups != self.num_features else self.weight
        if not self.affine or self.affine_per_channel:
            return weight, self.bias
        channels_per_group = self.num_features // self.stat_groups
        return tuple(None if parameter is None else parameter.repeat_interleave(channels_per_group)
                     for parameter in (weight, self.bias))

    def forward(self, x: Tensor) -> Tensor:
        # nn.BatchNorm2d's rule, also for tracking switched off on a built layer (test-time adaptation): training
        # updates the running buffers only with tracking on; evaluation reads them whenever they exist.
        use_batch_stats = self.training or self.running_mean is None
        self._check_input(x, use_batch_stats)
        updates_running = self.training and self.track_running_stats
        if updates_running:
            self.num_batches_tracked.add_(1)  # in place on the device: no host sync
        passes_buffers = updates_running or not self.training
        running_mean, running_var = (self.running_mean, self.running_var) if passes_buffers else (None, None)
        weight, bias = self._per_channel_affine()
        num_batches_tracked = self.num_batches_tracked if updates_running else None
        if self.pooled != "both":
            if self.backend == "triton":  # the attribute may have been set after construction
                raise ValueError(f"{self._describe()}: pooled={self.pooled!r} has no Triton kernels; use "
                                 "backend='torch' (or 'auto', which runs it on the PyTorch path on every device)")
            return torch_grouped_batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked,
                                            use_batch_stats=use_batch_stats, momentum=self.momentum, eps=self.eps,
                                            stat_groups=self.stat_groups, pooled=self.pooled)
        if resolve_backend(self.backend, x) == "triton":
            from bnexp.norm.triton_function import triton_grouped_batch_norm as grouped_batch_norm
        else:
            grouped_batch_norm = torch_grouped_batch_norm
        return grouped_batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked,
                                  use_batch_stats=use_batch_stats, momentum=self.momentum, eps=self.eps,
                                  stat_groups=self.stat_groups)
