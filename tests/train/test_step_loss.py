"""The training step's loss is cross-entropy with the configured label smoothing (the default configs set 0.1),
checked against F.cross_entropy in float64 on a fixed batch, in the step itself and in a run of the trainer."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnexp.data.batches import TrainBatches, normalize
from bnexp.data.sources import load_dataset
from bnexp.train.loop import model_from_config, seed_everything
from bnexp.train.run import train
from bnexp.train.step import TrainStep, model_logits
from tests.helpers import TINY_RUN, compose_config, step_and_epoch_records


def fixed_batch(batch: int = 32, size: int = 4):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    return images, labels


def confident_linear_model(size: int = 4) -> nn.Module:
    """Logits a few units apart, so that smoothing changes the loss by far more than rounding does."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 10))
    with torch.no_grad():
        model[1].weight.mul_(4.0)
    return model


def float64_loss_and_grad(model: nn.Module, images, labels, label_smoothing: float):
    reference = copy.deepcopy(model).double()
    logits = reference(normalize(images, torch.float64))
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    loss.backward()
    return loss.item(), reference[1].weight.grad.float()


@pytest.mark.parametrize("label_smoothing", [None, 0.0, 0.1, 0.5])
def test_the_step_trains_on_the_smoothed_cross_entropy(label_smoothing):
    """None: the step built without the argument, which is plain cross-entropy."""
    images, labels = fixed_batch()
    model = confident_linear_model()
    expected, grad = float64_loss_and_grad(model, images, labels, label_smoothing or 0.0)
    unsmoothed, _ = float64_loss_and_grad(model, images, labels, 0.0)
    if label_smoothing:
        assert abs(expected - unsmoothed) > 5e-3 * unsmoothed  # 500x the tolerance below
    weight_before = model[1].weight.detach().clone()
    lr = 0.01
    smoothing = {} if label_smoothing is None else {"label_smoothing": label_smoothing}
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=lr), **smoothing)
    loss, correct = step(0, images, labels)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the update follows the same loss: plain SGD moves by lr x its gradient
    torch.testing.assert_close(model[1].weight.detach(), weight_before - lr * grad, rtol=1e-5, atol=1e-6)
    assert correct.item() == (model_logits(confident_linear_model(), images, False,
                                           torch.contiguous_format).argmax(1) == labels).sum().item()


@pytest.mark.slow
def test_the_trainer_passes_optim_label_smoothing_to_the_step(tmp_path):
    """A one-step run's logged loss is the smoothed cross-entropy of its initial model on its first batch,
    both rebuilt here the way the trainer builds them from the seed."""
    cfg = compose_config(["+variant=correct_bn", *TINY_RUN, "data.train_size=64", "train.log_every=1",
                          "optim.label_smoothing=0.4"])
    assert train(cfg, str(tmp_path))["status"] == "finished"
    steps, _ = step_and_epoch_records(tmp_path)
    logged = next(r["train/loss"] for r in steps if r["step"] == 0)

    seed_everything(cfg.seed)
    dataset = load_dataset(cfg.data)
    model = model_from_config(cfg)
    images, labels = next(iter(TrainBatches(dataset.train, cfg.train.batch_size, cfg.train.augment_pad,
                                            cfg.train.augment_flip, seed=cfg.seed)))
    with torch.no_grad():
        logits = model_logits(model, images, False, torch.contiguous_format).double()
    smoothed = F.cross_entropy(logits, labels, label_smoothing=0.4).item()
    unsmoothed = F.cross_entropy(logits, labels).item()
    assert abs(smoothed - unsmoothed) > 1e-3 * unsmoothed  # far beyond fp32 rounding of the logits
    assert logged == pytest.approx(smoothed, rel=1e-5)
