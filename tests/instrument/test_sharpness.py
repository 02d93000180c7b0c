"""The sharpness measurement: its top eigenvalue against the full Hessian in float64 (train mode, batch statistics,
label smoothing), no side effects on buffers or gradients, the warm start, the thresholds against the optimizer
itself, and a run that logs both keys."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bnexp.instrument import SharpnessProbe, StabilityProbe, stability_threshold
from bnexp.instrument.sharpness import HessianOperator, lanczos_top_eigenpair
from bnexp.norm import BatchNorm2d

LABEL_SMOOTHING = 0.1


def make_norm(kind: str, channels: int) -> nn.Module:
    return {"per_channel": lambda: BatchNorm2d(channels, backend="torch"),
            "grouped": lambda: BatchNorm2d(channels, stat_groups=2, backend="torch"),
            "shared": lambda: BatchNorm2d(channels, stat_groups=1, backend="torch"),
            "torch": lambda: nn.BatchNorm2d(channels),
            "none": nn.Identity}[kind]()


class TinyConvNet(nn.Module):
    """conv -> norm -> GELU -> conv -> norm -> GELU -> mean -> linear: a few hundred parameters, so the full
    Hessian is cheap."""

    def __init__(self, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=norm == "none")
        self.norm1 = make_norm(norm, 4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=norm == "none")
        self.norm2 = make_norm(norm, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = F.gelu(self.norm1(self.conv1(x)))
        x = F.gelu(self.norm2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def tiny_problem(norm: str, seed: int = 0):
    """A float64 TinyConvNet in train mode, a batch whose statistics are far from the fresh running ones (mean 0,
    var 1), and the loss closure the measurement takes."""
    torch.manual_seed(seed)
    model = TinyConvNet(norm).double().train()
    generator = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(6, 3, 5, 5, generator=generator, dtype=torch.float64) * 2 + 0.5
    labels = torch.randint(0, 3, (6,), generator=generator)

    def loss_of_forward(forward):
        return F.cross_entropy(forward(images), labels, label_smoothing=LABEL_SMOOTHING)

    return model, images, labels, loss_of_forward


def full_hessian(model: nn.Module, loss_of_forward, train_mode: bool = True) -> torch.Tensor:
    """The oracle: torch.autograd.functional.hessian of the loss as a function of all parameters, flattened in
    model.parameters() order. It runs on a copy: in train mode without running statistics (a norm layer then
    normalises with the batch's, as in train mode with them, and updates nothing), in eval mode with them."""
    model = copy.deepcopy(model).train(train_mode)
    if train_mode:
        for module in model.modules():
            if getattr(module, "running_mean", None) is not None:
                module.track_running_stats = False
                module.running_mean = module.running_var = module.num_batches_tracked = None
    names = [name for name, _ in model.named_parameters()]
    shapes = [param.shape for param in model.parameters()]

    def loss(flat_params):
        pieces = flat_params.split([shape.numel() for shape in shapes])
        params = {name: piece.view(shape) for name, piece, shape in zip(names, pieces, shapes)}
        return loss_of_forward(lambda inputs: functional_call(model, params, (inputs,)))

    flat = torch.cat([param.detach().reshape(-1) for param in model.parameters()])
    return torch.autograd.functional.hessian(loss, flat, vectorize=True)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["per_channel", "grouped", "shared", "torch", "none"])
def test_top_eigenvalue_matches_the_full_hessian_in_float64(norm):
    model, _, _, loss_of_forward = tiny_problem(norm)
    hessian = full_hessian(model, loss_of_forward)
    eigenvalues = torch.linalg.eigvalsh(hessian)

    operator = HessianOperator(model, loss_of_forward)
    assert operator.size == hessian.shape[0]
    vector = torch.randn(operator.size, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(operator.matvec(vector), hessian @ vector, rtol=1e-10, atol=1e-12)

    probe = SharpnessProbe(model, loss_of_forward, optimizer=None, every=1, lanczos_steps=40)
    values = probe.measure()
    top = values["sharpness/top_eig"].item()
    assert top == pytest.approx(eigenvalues[-1].item(), rel=1e-9)
    assert values["sharpness/residual"].item() < 1e-6
    assert values["sharpness/batch_loss"].item() == pytest.approx(loss_of_forward(model).item(), rel=1e-12)
    assert "sharpness/threshold" not in values  # no optimizer given
    if norm == "per_channel":
        # the test can tell batch statistics from running ones: the eval-mode Hessian's top is far from it
        eval_top = torch.linalg.eigvalsh(full_hessian(model, loss_of_forward, train_mode=False))[-1].item()
        assert abs(eval_top - top) > 0.05 * abs(top)


@pytest.mark.parametrize("norm", ["per_channel", "grouped", "shared"])
def test_hessian_products_through_the_triton_layer_match_the_pytorch_layer(norm):
    """The Triton path's double backward carries every layer's second-order terms: its Hessian-vector products equal
    the PyTorch path's (float64, where both are exact to rounding)."""
    from bnexp.norm.triton_function import kernels_interpreted

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not kernels_interpreted():
        pytest.skip("the Triton kernels run on CPU tensors only in the interpreter (TRITON_INTERPRET=1)")
    model, images, labels, _ = tiny_problem(norm)
    model = model.to(device)
    images, labels = images.to(device), labels.to(device)

    def loss_of_forward(forward):
        return F.cross_entropy(forward(images), labels, label_smoothing=LABEL_SMOOTHING)

    vector = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(7),
                         dtype=torch.float64).to(device)
    products = {}
    for backend in ("torch", "triton"):
        for module in model.modules():
            if isinstance(module, BatchNorm2d):
                module.backend = backend
        products[backend] = HessianOperator(model, loss_of_forward).matvec(vector)
    torch.testing.assert_close(products["triton"], products["torch"], rtol=1e-9, atol=1e-11)


@pytest.mark.slow
def test_the_tolerance_stops_early_and_bounds_the_error():
    """Lanczos' residual estimate r stops the loop; the Ritz value's error is then far below r (about r^2 / gap)."""
    model, _, _, loss_of_forward = tiny_problem("grouped")
    true_top = torch.linalg.eigvalsh(full_hessian(model, loss_of_forward))[-1].item()
    values = SharpnessProbe(model, loss_of_forward, None, every=1, lanczos_steps=60, tolerance=1e-3).measure()
    assert values["sharpness/lanczos_steps"].item() < 30
    assert values["sharpness/residual"].item() < 2e-3  # the true residual of the returned pair
    assert values["sharpness/top_eig"].item() == pytest.approx(true_top, rel=1e-4)
    assert values["sharpness/top_eig"].item() <= true_top * (1 + 1e-12)  # a Ritz value is never above the top


@pytest.mark.slow
def test_fp32_measurement_agrees_with_the_float64_oracle():
    """Training runs in fp32: the same measurement on an fp32 copy of the model is within fp32 noise of the
    float64 top eigenvalue."""
    model, images, labels, loss_of_forward = tiny_problem("per_channel")
    true_top = torch.linalg.eigvalsh(full_hessian(model, loss_of_forward))[-1].item()
    images32 = images.float()
    values = SharpnessProbe(copy.deepcopy(model).float(), lambda forward: F.cross_entropy(
        forward(images32), labels, label_smoothing=LABEL_SMOOTHING), None, every=1, lanczos_steps=40).measure()
    assert values["sharpness/top_eig"].dtype == torch.float32
    assert values["sharpness/top_eig"].item() == pytest.approx(true_top, rel=1e-4)


def test_a_measurement_leaves_buffers_gradients_and_random_state_alone():
    model, _, _, loss_of_forward = tiny_problem("grouped")
    loss_of_forward(model).backward()  # the step's own gradients, as between backward and the optimizer step
    model.head.bias.grad = None  # a parameter without a gradient must stay without one
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    grads = {name: (param.grad, None if param.grad is None else param.grad.clone())
             for name, param in model.named_parameters()}
    random_state = torch.get_rng_state()

    SharpnessProbe(model, loss_of_forward, optimizer=None, every=1, lanczos_steps=5).measure()

    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name  # running stats and num_batches_tracked
    for name, param in model.named_parameters():
        same_object, values = grads[name]
        assert param.grad is same_object, name
        assert values is None or torch.equal(param.grad, values), name
    assert torch.equal(torch.get_rng_state(), random_state)
    assert model.training


@pytest.mark.slow
def test_the_warm_start_converges_in_two_steps_where_a_cold_start_does_not():
    model, _, _, loss_of_forward = tiny_problem("per_channel")
    true_top = torch.linalg.eigvalsh(full_hessian(model, loss_of_forward))[-1].item()
    probe = SharpnessProbe(model, loss_of_forward, optimizer=None, every=1, lanczos_steps=40)
    probe.measure()
    probe.lanczos_steps = 2
    assert probe.measure()["sharpness/top_eig"].item() == pytest.approx(true_top, rel=1e-9)
    cold = SharpnessProbe(model, loss_of_forward, optimizer=None, every=1, lanczos_steps=2)
    assert cold.measure()["sharpness/top_eig"].item() < 0.99 * true_top


def test_lanczos_finds_the_largest_eigenvalue_not_the_largest_in_magnitude():
    """Power iteration would return -10 here; the stability threshold is about the largest, +4."""
    eigenvalues = torch.tensor([-10.0, -3.0, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    matrix = rotation @ torch.diag(eigenvalues) @ rotation.T
    top, vector, _ = lanczos_top_eigenpair(lambda v: matrix @ v, torch.ones(6, dtype=torch.float64), steps=6)
    assert top == pytest.approx(4.0, rel=1e-12)
    torch.testing.assert_close(matrix @ vector, 4.0 * vector)


def test_lanczos_survives_an_invariant_start_and_a_non_finite_operator():
    diagonal = torch.arange(1.0, 6.0, dtype=torch.float64)
    start = torch.zeros(5, dtype=torch.float64)
    start[2] = 1.0  # an eigenvector: the Krylov space is invariant after one step (an exact breakdown)
    for tolerance in (0.0, 1e-3):
        top, vector, taken = lanczos_top_eigenpair(lambda v: diagonal * v, start, steps=5, tolerance=tolerance)
        assert top == 3.0 and torch.equal(vector, start)
        assert taken == (5 if tolerance == 0 else 1)  # the tolerance sees the breakdown: a zero residual
        nan_top, returned, _ = lanczos_top_eigenpair(lambda v: v * math.nan, start, steps=3, tolerance=tolerance)
        assert math.isnan(nan_top) and returned is start


def test_measurement_without_double_backward_names_the_fix():
    """A @once_differentiable backward would silently drop its layer's second-order terms from every product (the
    double backward to the parameters never visits the node that raises): the measurement refuses it."""
    class OnceOnly(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x * grad

    class Net(nn.Module):  # the function sits inside the net, as a norm layer does
        def __init__(self):
            super().__init__()
            self.first, self.second = nn.Linear(3, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.second(OnceOnly.apply(self.first(x)))

    inputs = torch.randn(4, 3)
    probe = SharpnessProbe(Net(), lambda forward: forward(inputs).square().sum(), None, every=1, lanczos_steps=2)
    with pytest.raises(RuntimeError, match="variant.backend=torch or instrument.sharpness_every=0"):
        probe.measure()


def final_position(curvature: float, optimizer_factory, steps: int = 400) -> float:
    """|x| after `steps` steps of the optimizer on 0.5 * curvature * x^2 from x = 1."""
    x = torch.ones(1, dtype=torch.float64, requires_grad=True)
    optimizer = optimizer_factory([x])
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * curvature * x.square()).sum().backward()
        optimizer.step()
    return abs(x.item())


@pytest.mark.parametrize("settings, formula", [
    (dict(lr=0.1), lambda lr, m: 2 / lr),
    (dict(lr=0.1, momentum=0.9), lambda lr, m: (2 + 2 * m) / lr),
    (dict(lr=0.05, momentum=0.9, nesterov=True), lambda lr, m: (2 + 2 * m) / (lr * (1 + 2 * m))),
    (dict(lr=0.2, momentum=0.5, nesterov=True), lambda lr, m: (2 + 2 * m) / (lr * (1 + 2 * m))),
    (dict(lr=0.1, momentum=0.5, dampening=0.3), lambda lr, m: (2 + 2 * m) / (lr * 0.7)),
])
def test_threshold_is_where_torch_sgd_turns_unstable_on_a_quadratic(settings, formula):
    """The formulas against the optimizer bnexp runs: 3% below the threshold SGD converges, 3% above it blows up."""
    def factory(params):
        return torch.optim.SGD(params, **settings)

    threshold = stability_threshold(factory([torch.zeros(1, requires_grad=True)]))
    assert threshold == pytest.approx(formula(settings["lr"], settings.get("momentum", 0.0)), rel=1e-12)
    assert final_position(0.97 * threshold, factory) < 1.0
    assert final_position(1.03 * threshold, factory) > 1e3


def test_threshold_follows_the_scheduled_lr_and_is_none_for_adamw():
    param = torch.zeros(1, requires_grad=True)
    sgd = torch.optim.SGD([param], lr=0.1, momentum=0.9, nesterov=True)
    sgd.param_groups[0]["lr"] = 0.025  # what LambdaLR does between steps
    assert stability_threshold(sgd) == pytest.approx(3.8 / (0.025 * 2.8))
    assert stability_threshold(torch.optim.AdamW([param], lr=1e-3)) is None
    assert stability_threshold(None) is None


def test_the_measured_loss_is_the_training_steps_loss():
    """bnexp/train/step.py's fixed_batch_loss (what the trainer measures) equals the loss TrainStep takes on that batch."""
    from bnexp.models import build_model
    from bnexp.train.step import TrainStep, fixed_batch_loss

    torch.manual_seed(0)
    model = build_model("airbench", "grouped", width=0.125, stat_groups=2)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (8,))
    loss_of_forward = fixed_batch_loss(images, labels, memory_format=torch.contiguous_format,
                                       label_smoothing=LABEL_SMOOTHING)
    measured = HessianOperator(model, loss_of_forward).loss
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), label_smoothing=LABEL_SMOOTHING)
    step_loss, _ = step(0, images, labels)
    assert measured.item() == pytest.approx(step_loss.item(), rel=1e-6)
    assert measured.item() != pytest.approx(fixed_batch_loss(images, labels, memory_format=torch.contiguous_format,
                                                             label_smoothing=0.0)(model).item(), rel=1e-3)


def test_stability_probe_logs_sharpness_on_its_own_cadence():
    model, _, _, loss_of_forward = tiny_problem("shared")
    model.float()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    probe = StabilityProbe(model, {"every": 0}, SharpnessProbe(model, lambda forward: loss_of_forward(
        lambda inputs: forward(inputs.float())), optimizer, every=2, lanczos_steps=4))
    for step in range(5):
        probe.before_forward(step)
        optimizer.zero_grad()
        loss_of_forward(lambda inputs: model(inputs.float())).backward()
        probe.after_backward(step)
        optimizer.step()
        probe.after_optimizer_step(step)
    records = probe.readback()
    assert [record["step"] for record in records] == [0, 2, 4]
    for record in records:
        assert set(record) == {"step", "sharpness/top_eig", "sharpness/threshold", "sharpness/residual",
                               "sharpness/batch_loss", "sharpness/lanczos_steps"}
        assert record["sharpness/lanczos_steps"] == 4  # no tolerance: every step taken
        assert record["sharpness/threshold"] == pytest.approx(3.8 / 0.05, rel=1e-6)
        assert record["sharpness/top_eig"] > 0


@pytest.mark.slow
def test_a_tiny_run_logs_sharpness_and_its_threshold_and_trains_as_without(tmp_path):
    from bnexp.train.optim import lr_multiplier
    from bnexp.train.run import train
    from tests.helpers import TINY_RUN, compose_config

    sharpness = ["instrument.sharpness_every=1", "instrument.sharpness_lanczos_steps=3",
                 "instrument.sharpness_batch_size=16"]
    base = ["+variant=grouped_bn", "variant.stat_groups=2", *TINY_RUN, "instrument.every=0"]
    summary = train(compose_config([*base, *sharpness]), str(tmp_path / "on"))
    assert summary["status"] == "finished", summary["error"]
    train(compose_config(base), str(tmp_path / "off"))

    def steps(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [record for record in map(json.loads, lines) if record["kind"] == "step"]

    on, off = steps("on"), steps("off")
    measured = [record for record in on if "sharpness/top_eig" in record]
    assert [record["step"] for record in measured] == [0, 1, 2, 3]
    total_steps = summary["steps_done"]
    for record in measured:
        lr = 0.1 * lr_multiplier(record["step"], total_steps, 0.1, "cosine")  # conf/optim/sgd.yaml
        assert record["sharpness/threshold"] == pytest.approx((2 + 2 * 0.9) / (lr * (1 + 2 * 0.9)), rel=1e-6)
        assert math.isfinite(record["sharpness/top_eig"]) and record["sharpness/top_eig"] > 0
        if "train/lr" in record:
            assert record["train/lr"] == pytest.approx(lr)
    # the measurement changes nothing in the run: the same losses, step for step
    assert [record["train/loss"] for record in on if "train/loss" in record] == \
        [record["train/loss"] for record in off if "train/loss" in record]
