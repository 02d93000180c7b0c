"""The training loop of one run: the data and the model on the device, then epochs of steps, log windows and
evaluations, with the numbers going to the run's sinks and its summary.

The step (bnexp/train/step.py) does no host syncs: losses and accuracy counts stay on the device, and the log window
reads them back every `train.log_every` steps and at each epoch's end (the divergence check happens then too).
"""
from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from bnexp.data.batches import TrainBatches, eval_batches
from bnexp.data.dataset import CIFAR10_CLASSES
from bnexp.data.sources import load_dataset
from bnexp.instrument import LossCurve, SharpnessProbe, StabilityProbe
from bnexp.models import build_model
from bnexp.train.device import device_feature_enabled, resolve_device
from bnexp.train.optim import build_lr_schedule, build_optimizer
from bnexp.train.sinks import SinkGroup
from bnexp.train.step import LogWindow, TrainStep, fixed_batch_loss, model_logits


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


@torch.no_grad()
def evaluate(model, split, batch_size: int, amp: bool, memory_format) -> tuple[float, float]:
    model.eval()
    loss_sum = torch.zeros((), device=split.images.device)
    correct = torch.zeros((), device=split.images.device, dtype=torch.long)
    for images, labels in eval_batches(split, batch_size):
        logits = model_logits(model, images, amp, memory_format)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    model.train()
    return loss_sum.item() / len(split), correct.item() / len(split)


def model_from_config(cfg: DictConfig) -> torch.nn.Module:
    return build_model(cfg.model.name, cfg.variant.norm, width=cfg.model.width,
                       stat_groups=cfg.variant.stat_groups, channels_per_group=cfg.variant.get("channels_per_group"),
                       affine_per_channel=cfg.variant.affine_per_channel, backend=cfg.variant.backend,
                       pooled=cfg.variant.get("pooled", "both"), freeze_weight=cfg.variant.get("freeze_weight", False))


def train_loop(cfg: DictConfig, sinks: SinkGroup, summary: dict) -> None:
    # The data, on the training device.
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.data, CIFAR10_CLASSES)  # the ten classes the models have outputs for
    summary["data_source"] = dataset.source
    train_split, test_split = dataset.train.to(device), dataset.test.to(device)
    batches = TrainBatches(train_split, cfg.train.batch_size, cfg.train.augment_pad, cfg.train.augment_flip,
                           seed=cfg.seed)

    # The model, its optimiser and lr schedule, the stability probe and the step that runs them.
    on_cuda = device.type == "cuda"
    amp = device_feature_enabled(cfg.train.amp, on_cuda)
    memory_format = torch.channels_last if device_feature_enabled(cfg.train.channels_last, on_cuda) \
        else torch.contiguous_format
    model = model_from_config(cfg).to(device, memory_format=memory_format)
    step_model = torch.compile(model) if cfg.train.compile else model
    optimizer = build_optimizer(model, cfg.optim)
    total_steps, epoch_images = cfg.train.epochs * len(batches), len(batches) * cfg.train.batch_size
    lr_schedule = build_lr_schedule(optimizer, cfg.optim, total_steps)
    sharpness = SharpnessProbe.from_config(model, optimizer, cfg.get("instrument"), train_split, cfg.seed,
                                           cfg.train.batch_size, functools.partial(
                                               fixed_batch_loss, memory_format=memory_format,
                                               label_smoothing=cfg.optim.label_smoothing))
    probe = StabilityProbe(model, cfg.get("instrument"), sharpness)
    train_step = TrainStep(model, optimizer, probe, step_model, amp, memory_format, cfg.optim.label_smoothing)
    window = LogWindow(int(cfg.train.log_every), device, len(batches), cfg.divergence.loss_factor,
                       LossCurve(cfg.get("instrument")), probe)

    # Loop state and the progress bar.
    step, test_acc_by_step, epoch_seconds = 0, {}, []
    progress = tqdm(total=total_steps, unit="step", dynamic_ncols=True, mininterval=1.0,
                    desc=f"{cfg.variant.name}/{cfg.model.name} lr={cfg.optim.lr}")
    try:
        for epoch in range(cfg.train.epochs):
            epoch_started = time.perf_counter()
            epoch_loss = torch.zeros((), device=device)
            epoch_correct = torch.zeros((), device=device, dtype=torch.long)
            for batch_index, (images, labels) in enumerate(batches):
                # Forward, backward, update: device work only. Each log record has its first step's grad_norm/global.
                loss, correct = train_step(step, images, labels, global_grad_norm=window.empty)
                window.add(step, loss, optimizer.param_groups[0]["lr"])
                lr_schedule.step()  # the next step's lr
                epoch_loss += loss
                epoch_correct += correct
                step += 1
                progress.update(1)

                # Every log_every steps and at the epoch's end (a window never spans two epochs): one host readback,
                # the records out, the divergence check.
                if window.full or batch_index == len(batches) - 1:
                    readback = window.close()
                    for record in readback.records:
                        sinks.log_step(record)
                    progress.set_postfix(loss=f"{readback.loss:.3f}", refresh=False)
                    summary["steps_done"] = step
                    if readback.diverged_step is not None:
                        summary.update(status="diverged", diverged_step=readback.diverged_step, epochs_done=epoch)
                        progress.write(readback.divergence)
                        return

            # End of the epoch: its throughput, the test set, one epoch record.
            if on_cuda:
                torch.cuda.synchronize()
            epoch_seconds.append(time.perf_counter() - epoch_started)
            images_per_s = epoch_images / epoch_seconds[-1]
            test_loss, test_acc = evaluate(step_model, test_split, cfg.train.eval_batch_size, amp, memory_format)
            test_acc_by_step[step] = test_acc
            train_loss = epoch_loss.item() / len(batches)
            train_acc = epoch_correct.item() / epoch_images
            sinks.log_epoch({"epoch": epoch + 1, "step": step, "train/loss": train_loss, "train/acc": train_acc,
                             "test/loss": test_loss, "test/acc": test_acc, "train/images_per_s": images_per_s})
            progress.write(f"epoch {epoch + 1}/{cfg.train.epochs}: train loss {train_loss:.4f} acc {train_acc:.4f} "
                           f"| test loss {test_loss:.4f} acc {test_acc:.4f} | {images_per_s:.0f} img/s")
            # with torch.compile, epoch 1 holds the compile time: the summary's rate leaves it out once others exist
            rate_seconds = epoch_seconds[1:] if cfg.train.compile and len(epoch_seconds) > 1 else epoch_seconds
            summary.update(epochs_done=epoch + 1, steps_done=step, final_test_acc=test_acc,
                           best_test_acc=max(test_acc_by_step.values()),
                           images_per_s=round(len(rate_seconds) * epoch_images / sum(rate_seconds), 1))
        summary["status"] = "finished"
    finally:
        progress.close()
        # the steps taken, also when a kill lands between two log windows
        summary.update(probe.summary(test_acc_by_step), **window.loss_curve.summary(), steps_done=step)
