"""The stability instrumentation: its numbers must match a direct recomputation, it must only work on measure
steps, and a log window must reach the host in one transfer."""
import math

import pytest
import torch
from torch import nn

from bnexp.instrument import ForwardHooks, ForwardStat, LossCurve, StabilityProbe, steps_to_accuracy
from bnexp.norm import BatchNorm2d
from bnexp.train.step import LogWindow


class TinyNet(nn.Module):
    """Conv -> torch BN -> conv -> grouped bnexp BN -> linear: both norm flavours, biases and no-bias layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = BatchNorm2d(8, stat_groups=2, backend="torch")
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def make_batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 8, 8, generator=generator) * 2 + 0.5, torch.randint(0, 10, (6,), generator=generator)


def train_steps(model, probe, steps, lr=0.1, on_step=None, edit_grads=None, global_grad_norm_steps=()):
    """The training step's call protocol; `on_step(step, loss)` sees the state between backward and optimiser
    step, `edit_grads(step)` may change the gradients before the probe reads them."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for step in range(steps):
        inputs, targets = make_batch(step)
        probe.before_forward(step)
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if edit_grads is not None:
            edit_grads(step)
        probe.after_backward(step, global_grad_norm=step in global_grad_norm_steps)
        if on_step is not None:
            on_step(step, loss)
        optimizer.step()
        probe.after_optimizer_step(step)


def direct_layer_norm(tensors):
    return math.sqrt(sum(torch.linalg.vector_norm(t).item() ** 2 for t in tensors))


def test_grad_param_and_update_norms_match_direct_computation():
    torch.manual_seed(0)
    model = TinyNet()
    probe = StabilityProbe(model, {"every": 1})
    layers = {"conv1": model.conv1, "bn1": model.bn1, "conv2": model.conv2, "bn2": model.bn2, "head": model.head}
    expected = {}

    def capture(step, _loss):
        expected["grad"] = {n: direct_layer_norm([p.grad for p in m.parameters()]) for n, m in layers.items()}
        expected["global"] = direct_layer_norm([p.grad for p in model.parameters()])
        expected["param"] = {n: direct_layer_norm([p.detach() for p in m.parameters()]) for n, m in layers.items()}
        expected["before"] = {n: [p.detach().clone() for p in m.parameters()] for n, m in layers.items()}

    train_steps(model, probe, steps=1, on_step=capture)
    (record,) = probe.readback()

    assert set(probe.layer_names) == set(layers)
    assert record["step"] == 0
    assert record["grad_norm/global"] == pytest.approx(expected["global"], rel=1e-5)
    for name, module in layers.items():
        assert record[f"grad_norm/{name}"] == pytest.approx(expected["grad"][name], rel=1e-5)
        assert record[f"param_norm/{name}"] == pytest.approx(expected["param"][name], rel=1e-5)
        update = direct_layer_norm([p.detach() - b for p, b in zip(module.parameters(), expected["before"][name])])
        assert record[f"update_ratio/{name}"] == pytest.approx(update / expected["param"][name], rel=1e-4)


def test_activation_statistics_match_direct_computation():
    torch.manual_seed(1)
    model = TinyNet()
    probe = StabilityProbe(model, {"every": 1})
    captured = {}

    # Our own hooks see the same inputs plus the running stats before this batch updates them.
    def capture_input(name):
        def hook(module, inputs):
            captured[name] = (inputs[0].detach().clone(), module.running_mean.clone(), module.running_var.clone())
        return hook

    def capture_output(name):
        def hook(_module, _inputs, output):
            captured[name + ".out"] = output.detach().clone()
        return hook

    for name in ("bn1", "bn2"):
        getattr(model, name).register_forward_pre_hook(capture_input(name))
    for name in ("conv1", "bn1", "conv2", "bn2", "head"):
        getattr(model, name).register_forward_hook(capture_output(name))

    train_steps(model, probe, steps=3)  # later steps: running stats differ from the batch stats
    record = probe.readback()[-1]

    for name, groups in (("bn1", 8), ("bn2", 2)):
        x, running_mean, running_var = captured[name]
        channel_mean = x.mean(dim=(0, 2, 3))
        channel_var = x.var(dim=(0, 2, 3), unbiased=False)
        assert record[f"bn/{name}/mean_mean"] == pytest.approx(channel_mean.mean().item(), abs=1e-5)
        assert record[f"bn/{name}/mean_min"] == pytest.approx(channel_mean.min().item(), rel=1e-5)
        assert record[f"bn/{name}/mean_max"] == pytest.approx(channel_mean.max().item(), rel=1e-5)
        assert record[f"bn/{name}/var_mean"] == pytest.approx(channel_var.mean().item(), rel=1e-5)
        assert record[f"bn/{name}/var_min"] == pytest.approx(channel_var.min().item(), rel=1e-5)
        assert record[f"bn/{name}/var_max"] == pytest.approx(channel_var.max().item(), rel=1e-5)

        grouped = x.reshape(x.shape[0], groups, -1)  # contiguous channel groups, as the layer pools them
        group_mean = grouped.transpose(0, 1).reshape(groups, -1).mean(1)
        group_var = grouped.transpose(0, 1).reshape(groups, -1).var(1, unbiased=False)
        assert running_mean.numel() == groups
        mean_gap = ((running_mean - group_mean).abs() / (group_var + 1e-5).sqrt()).mean().item()
        var_logratio = ((running_var + 1e-5) / (group_var + 1e-5)).log().abs().mean().item()
        assert record[f"bn/{name}/running_mean_gap"] == pytest.approx(mean_gap, rel=1e-4)
        assert record[f"bn/{name}/running_var_logratio"] == pytest.approx(var_logratio, rel=1e-4)

    for name in ("conv1", "bn1", "conv2", "bn2", "head"):
        output = captured[name + ".out"]
        assert record[f"act/{name}/rms"] == pytest.approx(output.square().mean().sqrt().item(), rel=1e-5)


def test_interval_respected_and_hooks_only_armed_on_measure_steps():
    model = TinyNet()
    probe = StabilityProbe(model, {"every": 3})
    hook_counts = []

    def count_hooks(step, _loss):
        hook_counts.append(len(model.bn1._forward_pre_hooks) + len(model.conv1._forward_hooks))

    original_forward = model.forward
    hooks_during_forward = {}

    def spying_forward(x):
        hooks_during_forward[len(hooks_during_forward)] = len(model.bn1._forward_pre_hooks)
        return original_forward(x)

    model.forward = spying_forward
    train_steps(model, probe, steps=10, on_step=count_hooks)
    records = probe.readback()

    assert [r["step"] for r in records] == [0, 3, 6, 9]
    assert [probe.is_measure_step(s) for s in range(4)] == [True, False, False, True]
    # Hooks exist only during a measure step's forward, and are gone once backward is done.
    assert [hooks_during_forward[s] for s in range(10)] == [1 if s % 3 == 0 else 0 for s in range(10)]
    assert hook_counts == [0] * 10
    for record in records:
        assert "grad_norm/global" in record and "bn/bn2/var_mean" in record and "update_ratio/head" in record
    assert probe.readback() == []  # everything was handed over once


def test_every_zero_measures_nothing():
    model = TinyNet()
    probe = StabilityProbe(model, {"every": 0})
    train_steps(model, probe, steps=4)
    assert probe.readback() == []
    summary = probe.summary()
    assert summary["max_grad_norm"] is None and summary["init_grad_norms"] == {}


def test_readback_is_one_host_transfer(monkeypatch):
    model = TinyNet()
    probe = StabilityProbe(model, {"every": 2})
    train_steps(model, probe, steps=6)

    transfers = []
    original_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: transfers.append(1) or original_tolist(self))
    records = probe.readback()
    assert [r["step"] for r in records] == [0, 2, 4]
    assert len(transfers) == 1


def test_a_log_window_reads_its_losses_and_the_probes_measurements_back_in_one_transfer(monkeypatch):
    """The window's losses ride in the probe's transfer: one .tolist() for both, values intact."""
    model = TinyNet()
    probe = StabilityProbe(model, {"every": 2})
    train_steps(model, probe, steps=3)
    window = LogWindow(4, torch.device("cpu"), steps_per_epoch=10, loss_factor=5.0, loss_curve=LossCurve(),
                       probe=probe)
    for step, loss in enumerate([2.5, 2.25, 2.0]):
        window.add(step, torch.tensor(loss), lr=0.1)
    transfers = []
    original_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: transfers.append(1) or original_tolist(self))
    readback = window.close()
    assert len(transfers) == 1
    assert [r["step"] for r in readback.records] == [0, 2] and all(r["grad_norm/global"] > 0 for r in readback.records)
    assert readback.records[0]["train/loss"] == pytest.approx(2.25) and readback.records[0]["train/lr"] == 0.1
    assert "train/loss" not in readback.records[1] and readback.records[1]["epoch"] == pytest.approx(0.2)
    assert readback.loss == pytest.approx(2.25) and readback.diverged_step is None
    assert window.loss_curve.summary()["train_loss_auc"] == pytest.approx(2.25)

    window.add(3, torch.tensor(1.5), lr=0.05)  # nothing measured since: just the window's own values
    assert [r["step"] for r in window.close().records] == [3]


def test_a_log_window_pins_a_divergence_to_its_step():
    window = LogWindow(8, torch.device("cpu"), steps_per_epoch=100, loss_factor=5.0, loss_curve=LossCurve())
    for step, loss in enumerate([2.0, 3.0, 9.0]):
        window.add(step, torch.tensor(loss), lr=0.1)
    assert window.close().diverged_step is None  # 9 < 5 x the first loss
    for step, loss in enumerate([4.0, 11.0, float("nan")], start=3):
        window.add(step, torch.tensor(loss), lr=0.1)
    readback = window.close()
    assert readback.diverged_step == 4 and "diverged at step 4: loss nan" in readback.divergence


def test_loss_spikes_and_auc():
    curve = LossCurve({"loss_spike_factor": 3.0, "loss_window": 8})
    losses = [1.0] * 20 + [10.0] + [1.0] * 5 + [2.5]  # one spike at step 20; 2.5 < 3 x median is not a spike
    curve.extend(0, losses[:7])  # read back in windows of any size: the same answer
    curve.extend(7, losses[7:21])
    assert (curve.spikes, curve.first_spike_step) == (1, 20)  # the running count, as each window record has it
    curve.extend(21, losses[21:])
    summary = curve.summary()
    assert summary["loss_spikes"] == 1
    assert summary["first_loss_spike_step"] == 20
    assert summary["train_loss_auc"] == pytest.approx(sum(losses) / len(losses))
    assert LossCurve().summary() == {"train_loss_auc": None, "loss_spikes": 0, "first_loss_spike_step": None}


def test_probe_summary_from_its_history():
    model = TinyNet()
    probe = StabilityProbe(model, {"every": 5, "acc_targets": [0.5, 0.9]})
    train_steps(model, probe, steps=11)  # grad history at steps 0, 5, 10
    probe_records = probe.readback()

    summary = probe.summary({100: 0.4, 200: 0.55, 300: 0.52})
    assert summary["steps_to_acc"] == {"0.5": 200, "0.9": None}

    history = {r["step"]: r["grad_norm/global"] for r in probe_records if "grad_norm/global" in r}
    assert sorted(history) == [0, 5, 10]
    assert summary["max_global_grad_norm"] == pytest.approx(max(history.values()))
    assert summary["max_global_grad_norm_step"] == max(history, key=history.get)
    assert set(summary["init_grad_norms"]) == set(probe.layer_names)

    # The max per-layer norm, its layer and its step belong together; recompute them from the records.
    per_layer = [(record[f"grad_norm/{layer}"], layer, record["step"])
                 for record in probe_records for layer in probe.layer_names if f"grad_norm/{layer}" in record]
    value, layer, step = max(per_layer)
    assert (summary["max_grad_norm"], summary["max_grad_norm_layer"], summary["max_grad_norm_step"]) == \
        (pytest.approx(value), layer, step)
    # First over last layer (model order) at the last measured step.
    last = max(probe_records, key=lambda record: record["step"])
    first_layer, last_layer = probe.layer_names[0], probe.layer_names[-1]
    assert summary["grad_norm_ratio_first_last"] == pytest.approx(
        last[f"grad_norm/{first_layer}"] / last[f"grad_norm/{last_layer}"])


def test_steps_to_accuracy_accepts_pairs_and_unsorted_input():
    assert steps_to_accuracy([(30, 0.8), (10, 0.6)], [0.5, 0.7, 0.9]) == {"0.5": 10, "0.7": 30, "0.9": None}
    assert steps_to_accuracy(None, [0.5]) == {"0.5": None}


def test_non_finite_gradients_do_not_break_the_summary():
    model = TinyNet()
    probe = StabilityProbe(model, {"every": 1})

    def poison(step):
        if step == 1:
            model.head.weight.grad.fill_(float("nan"))

    train_steps(model, probe, steps=2, lr=0.0, edit_grads=poison)
    records = probe.readback()
    assert math.isnan(records[1]["grad_norm/global"]) and math.isnan(records[1]["grad_norm/head"])
    summary = probe.summary()
    assert summary["max_global_grad_norm"] == pytest.approx(records[0]["grad_norm/global"])
    assert summary["max_grad_norm_step"] == 0  # the NaN step never wins the per-layer maximum
    assert summary["grad_norm_ratio_first_last"] is None


def test_compiled_model_wrapper_keeps_layer_names():
    model = TinyNet()
    wrapped = nn.Module()
    wrapped._orig_mod = model  # what torch.compile's OptimizedModule exposes
    probe = StabilityProbe(wrapped, {"every": 1})
    assert probe.layer_names == ["conv1", "bn1", "conv2", "bn2", "head"]


def test_global_grad_norm_at_the_steps_asked_for_between_measure_steps():
    """The trainer asks for grad_norm/global at each log window's first step; full measurements stay at `every`."""
    torch.manual_seed(0)
    model = TinyNet()
    probe = StabilityProbe(model, {"every": 4})
    expected = {}

    def capture(step, _loss):
        expected[step] = direct_layer_norm([p.grad for p in model.parameters()])

    train_steps(model, probe, steps=7, on_step=capture, global_grad_norm_steps={0, 2, 4, 6})
    records = probe.readback()
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    for record in records:
        assert record["grad_norm/global"] == pytest.approx(expected[record["step"]], rel=1e-5)
    assert "grad_norm/head" in records[0] and "grad_norm/head" not in records[1]
    assert set(records[1]) == {"step", "grad_norm/global"}


def test_a_new_forward_statistic_is_one_more_entry():
    """The hook part's extension point: a ForwardStat on the output of torch's norm layers, once per armed forward."""
    model = TinyNet()
    calls = []
    fraction_positive = ForwardStat("norm_out", lambda module: isinstance(module, nn.BatchNorm2d), "output",
                                    lambda _module, y: {"positive": (y > 0).float().mean()})
    hooks = ForwardHooks(model, lambda keys, values: calls.append(dict(zip(keys, values.tolist()))),
                         stats=(fraction_positive,))
    inputs, _ = make_batch(0)
    expected = (model.bn1(model.conv1(inputs)) > 0).float().mean().item()  # train mode: batch statistics
    hooks.arm()
    model(inputs)
    model(inputs)  # a second forward while armed (e.g. checkpointing) records nothing more
    hooks.disarm()
    model(inputs)
    assert len(calls) == 1 and set(calls[0]) == {"norm_out/bn1/positive"}  # bn2 is bnexp's layer: not watched
    assert calls[0]["norm_out/bn1/positive"] == pytest.approx(expected)


def test_trainer_logs_probe_records_and_summary_fields(tmp_path):
    import json

    from bnexp.train.run import train
    from tests.helpers import TINY_RUN, compose_config

    # every=3 with log_every=2: step 0 joins the first window's record, step 3 gets its own record.
    cfg = compose_config(["+variant=grouped_bn", "variant.stat_groups=2", *TINY_RUN, "instrument.every=3"])
    summary = train(cfg, str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]

    assert [r["step"] for r in steps] == [0, 2, 3]
    assert all(r["grad_norm/global"] > 0 for r in steps)  # every log step, as before the probe
    assert "train/loss" in steps[0] and "bn/groups.0.norm1/running_mean_gap" in steps[0]
    loss_records = [r for r in steps if "train/loss" in r]
    assert all(isinstance(r["train/loss_spikes"], int) for r in loss_records)  # running count, every log step
    assert loss_records[-1]["train/loss_spikes"] <= summary["loss_spikes"]
    assert "train/loss" not in steps[2] and "update_ratio/head" in steps[2] and 0 < steps[2]["epoch"] < 1
    assert "grad_norm/head" not in steps[1]  # log step between measure steps: global norm only

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for field in ("max_grad_norm", "max_grad_norm_layer", "steps_to_acc", "train_loss_auc",
                  "grad_norm_ratio_first_last", "init_grad_norms", "loss_spikes"):
        assert field in on_disk and on_disk[field] == summary[field], field
    assert set(on_disk["steps_to_acc"]) == {"0.5", "0.7", "0.8"}
    assert on_disk["init_grad_norms"]["head"] == pytest.approx(steps[0]["grad_norm/head"])
    assert on_disk["max_global_grad_norm"] == pytest.approx(max(r["grad_norm/global"] for r in steps))
    layer_norms = [(value, key.removeprefix("grad_norm/")) for r in steps for key, value in r.items()
                   if key.startswith("grad_norm/") and key != "grad_norm/global"]
    assert (on_disk["max_grad_norm"], on_disk["max_grad_norm_layer"]) == (pytest.approx(max(layer_norms)[0]),
                                                                          max(layer_norms)[1])
