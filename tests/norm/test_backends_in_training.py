"""The trainer end to end through the Triton layer, against the same runs through the PyTorch layer.

Each case trains the real trainer (config, model, data, steps, evaluation, summary.json) twice from the same seed,
once with variant.backend=triton and once with variant.backend=torch, for every norm variant bnexp's layer has, and
for the settings the trainer uses on CUDA (channels_last, bf16 autocast, torch.compile through the custom ops).
Without a GPU the Triton kernels run in the Triton interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1); with one, the same tests run the compiled kernels on CUDA.

What the two runs are compared on, and why only that. The runs start from the same init and data, so they differ only
in the norm layers' arithmetic: fp32 sums taken in another order, about 1e-6 relative per layer. Anything computed
before the first optimizer step keeps that size, but every step at lr 0.1 amplifies it, by a factor that depends on
the CPU's kernels (after 3 steps, layer 0's running_mean was 7e-6 apart on one x86 CPU and 1.8e-4 on an AVX-512
one), so quantities after several steps are no test of the kernels. The checks are therefore:
- the first step inside the real training run: every norm layer's input and upstream gradient are recorded in the
  Triton run's first step and replayed through a fresh copy of the layer on each backend; output, input, weight and
  bias gradients, and the running buffers after that step must agree to fp32 rounding (nothing compounds);
- the first step's loss of the two runs (one forward of the same net on the same batch: well conditioned);
- the whole run: it ends 'finished', every norm forward of the Triton run went through the kernels and none of the
  PyTorch run's did, every layer counted its 3 batches, and losses and buffers are finite.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import pytest
import torch

from bnexp.norm import BatchNorm2d
from bnexp.train.run import train
from tests.helpers import compose_config

# +preset=tiny: 3 steps of batch 32 on an airbench with 8 channels per layer, then one evaluation of 64 images.
# fp32 and NCHW unless a test asks for the CUDA settings (auto would turn them on with a GPU).
RUN = ["data=synthetic", "+preset=tiny", "train.amp=false", "train.channels_last=false"]
STEPS = 3
LAYERS = 7  # airbench: stem + 3 groups x 2

VARIANTS = {
    "per_channel": ["+variant=correct_bn"],
    "grouped_2": ["+variant=grouped_bn", "variant.stat_groups=2"],
    "grouped_4": ["+variant=grouped_bn", "variant.stat_groups=4"],
    "shared": ["+variant=shared_bn"],
    "grouped_2_affine_per_group": ["+variant=grouped_bn", "variant.stat_groups=2",
                                   "variant.affine_per_channel=false"],
}

# Tolerances. The replayed first step, fp32: both backends get the same input and upstream gradient, so they differ
# only in the order of their fp32 sums (a statistic sums up to 32 * 8 * 32 * 32 values here; random-walk rounding
# of about sqrt(n) * 6e-8). Measured on an AVX-512 x86 CPU, the same with OMP_NUM_THREADS=1 and 2: at most 2.3e-6
# on outputs and input gradients, 8e-7 on the running buffers, and 1.5e-7 on weight and bias gradients measured
# against the sum of their terms' magnitudes (summation_scales). The bound leaves a margin of 40 or more, for other
# CPUs' kernels; a wrong kernel (a term missing from the gradient, a wrong group, a wrong momentum) is off by 1e-2
# or more. On CUDA the kernels and PyTorch reduce in other orders again, but nothing else enters: the same bound.
REPLAY_RTOL = 1e-4
# The first step's loss: one forward of the same net on the same batch (convolutions, ReLUs, pooling: Lipschitz,
# no optimizer step in between) whose norm layers differ by about 1e-6; measured at most 7e-7 relative on the CPU.
# On CUDA, TF32 convolutions and cuDNN's choice of algorithms add their own 1e-4-sized differences.
FIRST_LOSS_RTOL = 1e-3 if torch.cuda.is_available() else 2e-5


@dataclasses.dataclass
class FirstStep:
    """One norm layer in the first training step of a run: how it was built, its state before the step, its input,
    the gradient its output received."""
    options: dict | None = None  # constructor arguments, but the backend
    state: dict | None = None  # state_dict before the step
    x: torch.Tensor | None = None
    upstream: torch.Tensor | None = None

    def build(self, backend: str) -> BatchNorm2d:
        """A fresh copy of the layer as it was before the step, on `backend`."""
        layer = BatchNorm2d(**self.options, backend=backend)
        layer.load_state_dict(self.state)
        return layer


@dataclasses.dataclass
class Run:
    summary: dict
    step_losses: list[float]
    buffers: list[tuple[torch.Tensor, torch.Tensor, int]]  # (running_mean, running_var, num_batches_tracked)
    triton_calls: int  # norm-layer forwards that ran the Triton kernels (training and evaluation)
    first_step: list[FirstStep]  # per layer, when recorded


def record_first_step(layer: BatchNorm2d, records: list[FirstStep]) -> None:
    """Hooks that record the layer's first training forward (its options and state before it, its input) and the
    gradient of that forward's output, then remove themselves."""
    record = FirstStep()
    records.append(record)
    handles = []

    def before(module, inputs):
        if module.training:
            record.options = dict(num_features=module.num_features, eps=module.eps, momentum=module.momentum,
                                  affine=module.affine, track_running_stats=module.track_running_stats,
                                  bias=module.bias is not None, stat_groups=module.stat_groups,
                                  affine_per_channel=module.affine_per_channel, device=module.running_mean.device)
            record.state = {name: value.detach().clone() for name, value in module.state_dict().items()}
            record.x = inputs[0].detach().clone()
            handles.pop().remove()
            handles.append(module.register_forward_hook(after))

    def after(module, inputs, output):
        handles.pop().remove()
        output.register_hook(lambda grad: setattr(record, "upstream", grad.detach().clone()))

    handles.append(layer.register_forward_pre_hook(before))


def run_trainer(overrides: list[str], run_dir: Path, compile_options: dict | None = None,
                record: bool = False) -> Run:
    """One run of bnexp.train.run.train; the norm layers it builds are recorded on construction, for their buffers
    and (with `record`, eager runs only) their first training step. compile_options: extra torch.compile arguments
    for a train.compile=true run."""
    from bnexp.norm import triton_function

    layers, first_step = [], []
    triton_calls = 0
    build_layer = BatchNorm2d.__init__
    normalize = triton_function._normalize_impl

    def build_and_record(self, *args, **kwargs):
        build_layer(self, *args, **kwargs)
        if not self.running_mean.is_meta:  # the trainer's shape-only model that records each layer's groups
            layers.append(self)
            if record:
                record_first_step(self, first_step)

    def count_and_normalize(*args, **kwargs):
        nonlocal triton_calls
        triton_calls += 1
        return normalize(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BatchNorm2d, "__init__", build_and_record)
        patch.setattr(triton_function, "_normalize_impl", count_and_normalize)
        if compile_options:
            patch.setattr(torch, "compile", functools.partial(torch.compile, **compile_options))
        train(compose_config([*RUN, *overrides]), str(run_dir))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return Run(summary=json.loads((run_dir / "summary.json").read_text()),
               step_losses=[record["train/loss"] for record in records if record["kind"] == "step"],
               buffers=[(layer.running_mean.detach().clone(), layer.running_var.detach().clone(),
                         int(layer.num_batches_tracked)) for layer in layers],
               triton_calls=triton_calls, first_step=first_step)


def assert_runs_complete(triton_run: Run, torch_run: Run) -> None:
    """Both runs finished all their steps; every norm forward of the Triton run (3 steps and 1 eval batch) went
    through the kernels, none of the PyTorch run's; every layer counted 3 batches; nothing is non-finite."""
    for run in (triton_run, torch_run):
        assert run.summary["status"] == "finished", run.summary["error"]
        assert run.summary["steps_done"] == STEPS and len(run.step_losses) == STEPS
        assert len(run.buffers) == LAYERS
        assert all(math.isfinite(loss) for loss in run.step_losses)
        for layer, (running_mean, running_var, num_batches_tracked) in enumerate(run.buffers):
            assert num_batches_tracked == STEPS, f"layer {layer}: num_batches_tracked"
            assert torch.isfinite(running_mean).all() and torch.isfinite(running_var).all(), f"layer {layer}"
    assert triton_run.triton_calls == LAYERS * (STEPS + 1) and torch_run.triton_calls == 0


def replay_first_step(step: FirstStep, backend: str) -> dict[str, torch.Tensor]:
    layer = step.build(backend).train()
    x = step.x.clone().requires_grad_()
    y = layer(x)
    y.backward(step.upstream)
    return {"output": y, "input grad": x.grad, "weight grad": layer.weight.grad, "bias grad": layer.bias.grad,
            "running_mean": layer.running_mean, "running_var": layer.running_var}


def summation_scales(step: FirstStep) -> dict[str, torch.Tensor]:
    """The scale of the fp32 rounding in the weight and bias gradients: each is a sum over all positions of a group
    (sum of upstream * xhat, sum of upstream), which can cancel to far below its terms (one gamma for a whole
    layer in `shared` sums 262144 of them), so its error is measured against the sum of the terms' magnitudes."""
    layer = step.build("torch")
    x, upstream = step.x.double(), step.upstream.double()
    grouped = x.reshape(x.shape[0], layer.stat_groups, -1)
    var, mean = torch.var_mean(grouped, dim=(0, 2), correction=0, keepdim=True)
    xhat = ((grouped - mean) / torch.sqrt(var + layer.eps)).reshape(x.shape)
    per_channel = {"weight grad": (upstream * xhat).abs().sum(dim=(0, 2, 3)),
                   "bias grad": upstream.abs().sum(dim=(0, 2, 3))}
    # one gamma / beta per group (affine_per_channel=False) gathers its channels' terms
    return {name: scale.view(layer.weight.shape[0], -1).sum(dim=1) for name, scale in per_channel.items()}


def assert_first_steps_agree(triton_run: Run, rtol: float) -> None:
    """Every norm layer's first training step, replayed on both backends from the input and upstream gradient it
    had in the run: the Triton kernels compute what the PyTorch path computes, to fp32 rounding. Errors are
    relative over the whole tensor (an element near 0 does not make rounding look large)."""
    assert len(triton_run.first_step) == LAYERS
    for index, step in enumerate(triton_run.first_step):
        assert step.x is not None and step.upstream is not None, f"layer {index}: first step not recorded"
        ours, reference = replay_first_step(step, "triton"), replay_first_step(step, "torch")
        scales = summation_scales(step)
        for name, expected in reference.items():
            difference = (ours[name].detach().double() - expected.detach().double()).norm()
            error = (difference / scales.get(name, expected.detach().double()).norm().clamp_min(1e-12)).item()
            assert error < rtol, f"layer {index} {name}: relative error {error:.2e}"


def assert_backends_agree(triton_run: Run, torch_run: Run, replay_rtol: float = REPLAY_RTOL,
                          first_loss_rtol: float = FIRST_LOSS_RTOL) -> None:
    assert_runs_complete(triton_run, torch_run)
    assert triton_run.step_losses[0] == pytest.approx(torch_run.step_losses[0], rel=first_loss_rtol)
    if triton_run.first_step:
        assert_first_steps_agree(triton_run, replay_rtol)


def run_both_backends(overrides: list[str], tmp_path: Path, compile_options: dict | None = None) -> tuple[Run, Run]:
    """The Triton run (recording its first step, when eager) and the PyTorch run of the same config; the PyTorch
    one is always eager."""
    triton_run = run_trainer([*overrides, "variant.backend=triton"], tmp_path / "triton", compile_options,
                             record=compile_options is None)
    torch_overrides = [override for override in overrides if not override.startswith("train.compile=")]
    return triton_run, run_trainer([*torch_overrides, "variant.backend=torch"], tmp_path / "torch")


# Every variant of the layer runs once with each backend: three in NCHW fp32 eager here, the others below with
# the CUDA settings (grouped_4 with channels_last, grouped_2_affine_per_group compiled, shared again with bf16).
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["per_channel", "grouped_2", "shared"])
def test_triton_and_torch_backends_train_alike(variant, tmp_path):
    assert_backends_agree(*run_both_backends(VARIANTS[variant], tmp_path))


@pytest.mark.slow
def test_channels_last_trains_alike(tmp_path):
    """train.channels_last=true: the kernels read NHWC activations through their strides."""
    triton_run, torch_run = run_both_backends([*VARIANTS["grouped_4"], "train.channels_last=true"], tmp_path)
    assert all(step.x.is_contiguous(memory_format=torch.channels_last) for step in triton_run.first_step)
    assert_backends_agree(triton_run, torch_run)


CUDA_PATH = ["train.amp=true", "train.channels_last=true"]  # what train.amp / channels_last=auto pick on CUDA
# bf16 outputs and input gradients carry one bf16 rounding of each element (2^-9 to 2^-8 relative). The Triton
# interpreter converts fp32 to bf16 by truncation where CUDA and PyTorch round to nearest even, which puts about
# half the elements one ulp apart: measured 4.4e-3 over a whole tensor in the interpreter. Weight and bias
# gradients and the buffers stay fp32 sums of the same bf16 values (measured at most 2.6e-5).
BF16_REPLAY_RTOL = 2e-2
# the first loss sees the bf16 rounding of 7 layers' outputs (measured 1.8e-3 relative in the interpreter)
BF16_FIRST_LOSS_RTOL = 1e-2


@pytest.mark.slow
def test_bf16_autocast_with_channels_last_trains_alike(tmp_path):
    """The trainer's CUDA settings: bf16 activations in NHWC reach the kernels, statistics stay fp32."""
    triton_run, torch_run = run_both_backends([*VARIANTS["shared"], *CUDA_PATH], tmp_path)
    assert all(step.x.dtype == torch.bfloat16 for step in triton_run.first_step)
    assert_backends_agree(triton_run, torch_run, replay_rtol=BF16_REPLAY_RTOL, first_loss_rtol=BF16_FIRST_LOSS_RTOL)


# On the CPU the compiled run uses the aot_eager backend: dynamo and AOT autograd trace the model, the layer through
# its custom ops and their fake impls, into the same graphs inductor would get, which then run eagerly. Inductor's
# C++ code generation for the rest of the net would add about two minutes of CPU to every cold test run; it is
# covered for the PyTorch path by tests/train/test_train.py, and for this one on CUDA, where this test uses inductor.
COMPILE_BACKEND = "inductor" if torch.cuda.is_available() else "aot_eager"


@pytest.mark.slow
def test_compiled_trains_like_eager_torch(tmp_path):
    """train.compile=true (with channels_last, as on CUDA): torch.compile reaches the kernels through the bnexp::
    custom ops, with no graph break (fullgraph=True turns one into an error). Compared with the eager PyTorch path
    on the first step's loss (the layer's compiled forward and backward against its eager ones are compared in
    tests/norm/test_triton_kernels.py)."""
    overrides = [*VARIANTS["grouped_2_affine_per_group"], "train.channels_last=true", "train.compile=true"]
    triton_run, torch_run = run_both_backends(overrides, tmp_path,
                                              compile_options=dict(backend=COMPILE_BACKEND, fullgraph=True))
    assert not triton_run.first_step
    assert_backends_agree(triton_run, torch_run)
