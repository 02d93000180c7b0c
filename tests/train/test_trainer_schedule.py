"""The lr schedule: linear warmup from 0 (never 0 at a step that trains), then cosine or linear decay to 0, checked
against the formulas written out here, and as the trainer applies it step by step; and the epoch records of that
run against its step records. And the optimizer the schedule drives: the configured one, with its settings, and
weight decay only where the trainer means it."""
import math

import pytest
import torch

from bnexp.train.loop import model_from_config
from bnexp.train.optim import build_optimizer, lr_multiplier
from bnexp.train.run import train
from tests.helpers import TINY_RUN, compose_config, step_and_epoch_records


def expected_multiplier(step: int, total: int, warmup: int, schedule: str) -> float:
    """The schedule as the configs document it: warmup step k trains at (k+1)/warmup of the lr, so the last
    warmup step is at the full lr; then the decay runs from 1 at the first step after warmup towards 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    return (1 + math.cos(math.pi * progress)) / 2 if schedule == "cosine" else 1 - progress


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("total, warmup_frac, warmup", [(100, 0.1, 10), (40, 0.25, 10), (7, 0.3, 2), (50, 0.0, 1)])
def test_every_step_follows_warmup_then_decay(schedule, total, warmup_frac, warmup):
    values = [lr_multiplier(step, total, warmup_frac, schedule) for step in range(total + 1)]
    for step, value in enumerate(values):
        assert value == pytest.approx(expected_multiplier(step, total, warmup, schedule), abs=1e-12), step
    # step 0 trains: its lr is a warmup's first share, never 0 (and the full lr without warmup)
    assert values[0] == pytest.approx(1 / warmup) and values[0] > 0
    assert values[warmup - 1] == pytest.approx(1.0) and values[warmup] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(values[:warmup], values[1:warmup]))  # warmup rises
    assert all(a > b for a, b in zip(values[warmup:], values[warmup + 1:]))  # decay falls
    assert values[total] == pytest.approx(0.0, abs=1e-12)  # reaches 0 one step past the last
    assert 0 < values[total - 1] < 1


def test_cosine_and_linear_decay_meet_at_the_middle_and_differ_elsewhere():
    total, warmup = 110, 10
    middle = warmup + (total - warmup) // 2
    quarter = warmup + (total - warmup) // 4
    assert lr_multiplier(middle, total, 10 / 110, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(middle, total, 10 / 110, "linear") == pytest.approx(0.5)
    assert lr_multiplier(quarter, total, 10 / 110, "cosine") == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr_multiplier(quarter, total, 10 / 110, "linear") == pytest.approx(0.75)


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule 'step'.*cosine or linear"):
        lr_multiplier(0, 10, 0.1, "step")


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory) -> tuple[dict, list[dict], list[dict]]:
    """2 epochs of 4 steps, round(8 x 0.3) = 2 of them warmup, linear decay; one log record per step."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose_config(["+variant=correct_bn", *TINY_RUN, "train.epochs=2", "train.log_every=1",
                          "optim.lr=0.2", "optim.warmup_frac=0.3", "optim.schedule=linear"])
    summary = train(cfg, str(run_dir))
    return (summary, *step_and_epoch_records(run_dir))


@pytest.mark.slow
def test_the_trainer_logs_the_scheduled_lr_of_every_step(two_epoch_run):
    summary, steps, _ = two_epoch_run
    assert summary["status"] == "finished"
    assert [r["step"] for r in steps] == list(range(8))
    for record in steps:
        expected = 0.2 * expected_multiplier(record["step"], 8, 2, "linear")
        assert record["train/lr"] == pytest.approx(expected, rel=1e-9), record["step"]


@pytest.mark.slow
def test_each_epoch_record_averages_its_steps(two_epoch_run):
    """With a log record per step, an epoch's train/loss is the mean of its 4 steps' losses; train/acc is a share
    of its 4 x 64 images."""
    _, steps, epochs = two_epoch_run
    assert [(r["epoch"], r["step"]) for r in epochs] == [(1, 4), (2, 8)]
    for epoch in epochs:
        losses = [r["train/loss"] for r in steps if epoch["step"] - 4 <= r["step"] < epoch["step"]]
        assert epoch["train/loss"] == pytest.approx(sum(losses) / 4, rel=1e-5)
        correct = epoch["train/acc"] * 256
        assert 0 <= epoch["train/acc"] <= 1 and correct == pytest.approx(round(correct), abs=1e-6)
        assert 0 <= epoch["test/acc"] <= 1 and epoch["test/loss"] > 0


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_the_optimizer_is_the_configured_one_without_decay_on_norm_and_bias_parameters(optim):
    cfg = compose_config(["+variant=correct_bn", *TINY_RUN, f"optim={optim}"])
    model = model_from_config(cfg)
    optimizer = build_optimizer(model, cfg.optim)
    assert type(optimizer) is {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[optim]
    decayed, not_decayed = optimizer.param_groups
    assert decayed["weight_decay"] == cfg.optim.weight_decay > 0 and not_decayed["weight_decay"] == 0.0
    # every parameter once: matrices and kernels decay, vectors (norm affine, biases) do not
    assert {id(p) for p in decayed["params"]} == {id(p) for p in model.parameters() if p.ndim > 1}
    assert {id(p) for p in not_decayed["params"]} == {id(p) for p in model.parameters() if p.ndim <= 1}
    assert len(not_decayed["params"]) > 0
    for group in optimizer.param_groups:
        assert group["lr"] == cfg.optim.lr
        if optim == "sgd":
            assert (group["momentum"], group["nesterov"]) == (cfg.optim.momentum, cfg.optim.nesterov)
        else:
            assert group["betas"] == tuple(cfg.optim.betas)
