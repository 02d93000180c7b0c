"""The training loop: one run of one variant, from config to run directory.

The step does no host syncs: losses and accuracy counts stay on the device and are
read back every `train.log_every` steps (the divergence check happens then too).
"""
from __future__ import annotations

import math
import signal
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bnexp.config import validate_train_config
from bnexp.data import TrainBatches, eval_batches, load_dataset, normalize
from bnexp.instrument import StabilityProbe
from bnexp.models import build_model
from bnexp.sinks import LocalSink, SinkGroup, logger_sinks


class RunInterrupted(Exception):
    """SIGTERM/SIGINT arrived: stop, but still close the logs and write the summary."""


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was requested but CUDA is not available; use device=auto or device=cpu")
    return torch.device(requested)


def device_feature_enabled(setting, name: str, on_cuda: bool) -> bool:
    """train.amp / train.channels_last: `auto` turns the feature on for CUDA only (on the CPU bf16 autocast and
    channels_last are slower, not faster); true / false force it on any device (true on the CPU is how the
    tests exercise the CUDA code path)."""
    if setting is None or (isinstance(setting, str) and setting.lower() == "auto"):
        return on_cuda
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"{name}={setting!r} is not a valid setting; use {name}=auto (CUDA only), true or false")


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def build_optimizer(model: torch.nn.Module, optim_cfg: DictConfig) -> torch.optim.Optimizer:
    # No weight decay on norm affine parameters and biases (1-D tensors), as is usual for BN nets.
    decayed = [p for p in model.parameters() if p.ndim > 1]
    not_decayed = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decayed, "weight_decay": optim_cfg.weight_decay},
              {"params": not_decayed, "weight_decay": 0.0}]
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                               nesterov=optim_cfg.nesterov)
    if optim_cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas))
    raise ValueError(f"unknown optimizer {optim_cfg.name!r}; use optim=sgd or optim=adamw")


def lr_multiplier(step: int, total_steps: int, warmup_frac: float, schedule: str) -> float:
    """Linear warmup from 0, then cosine or linear decay to 0."""
    warmup_steps = max(1, int(round(total_steps * warmup_frac)))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1 - progress
    raise ValueError(f"unknown schedule {schedule!r}; use optim.schedule=cosine or linear")


@torch.no_grad()
def evaluate(model, split, batch_size: int, autocast, memory_format) -> tuple[float, float]:
    model.eval()
    loss_sum = torch.zeros((), device=split.images.device)
    correct = torch.zeros((), device=split.images.device, dtype=torch.long)
    for images, labels in eval_batches(split, batch_size):
        with autocast():
            logits = model(normalize(images.contiguous(memory_format=memory_format)))
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    model.train()
    return loss_sum.item() / len(split), correct.item() / len(split)


def run_summary_base(cfg: DictConfig) -> dict:
    # the config is not validated yet here: a bad lr or seed is kept as given, and the run fails just after
    return {"status": "running", "variant": cfg.variant.name, "model": cfg.model.name,
            "lr": _number_or_as_given(cfg.optim.lr, float), "seed": _number_or_as_given(cfg.seed, int),
            "data_source": None,
            "final_test_acc": None, "best_test_acc": None, "epochs_done": 0, "steps_done": 0,
            "wall_time_s": 0.0, "images_per_s": None, "diverged_step": None, "error": None}


def train(cfg: DictConfig, run_dir: str, extra_sinks: list | None = None) -> dict:
    """Train one run; returns its summary (also written to run_dir/summary.json).

    A diverged run is a result (status 'diverged'); an exception or a kill is
    recorded as 'failed' with the error, then re-raised.
    """
    started = time.perf_counter()
    summary = run_summary_base(cfg)
    sinks = SinkGroup([LocalSink(run_dir, OmegaConf.to_yaml(cfg, resolve=True), summary)] + (extra_sinks or []))
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        validate_train_config(cfg)
        sinks.sinks.extend(logger_sinks(cfg, run_dir))  # inside the try: a logger failure is a failed run
        _train_loop(cfg, sinks, summary)
    except BaseException as error:
        summary["status"] = "failed"
        summary["error"] = ("killed: " if isinstance(error, (RunInterrupted, KeyboardInterrupt)) else "") + \
            f"{type(error).__name__}: {error}"
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        summary["wall_time_s"] = round(time.perf_counter() - started, 3)
        sinks.finish(summary)
    return summary


def _number_or_as_given(value, kind):
    try:
        return kind(value)
    except (TypeError, ValueError):
        return value


def _raise_interrupted(signum, frame):
    raise RunInterrupted(f"received signal {signum}")


def _train_loop(cfg: DictConfig, sinks: SinkGroup, summary: dict) -> None:
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.data)
    summary["data_source"] = dataset.source
    train_split, test_split = dataset.train.to(device), dataset.test.to(device)

    on_cuda = device.type == "cuda"
    use_amp = device_feature_enabled(cfg.train.amp, "train.amp", on_cuda)
    memory_format = (torch.channels_last if device_feature_enabled(cfg.train.channels_last, "train.channels_last",
                                                                  on_cuda) else torch.contiguous_format)
    model = build_model(cfg.model.name, cfg.variant.norm, width=cfg.model.width,
                        stat_groups=cfg.variant.stat_groups, affine_per_channel=cfg.variant.affine_per_channel,
                        backend=cfg.variant.backend)
    model = model.to(device, memory_format=memory_format)
    step_model = torch.compile(model) if cfg.train.compile else model
    log_every = max(1, int(cfg.train.log_every))
    # Stability statistics (bnexp/instrument.py); grad_norm/global also at the first step of every log window.
    probe = StabilityProbe(model, cfg.get("instrument"))
    test_acc_by_step = {}

    def autocast():
        # bf16 matmuls/convs; the norm layer computes its statistics in fp32 regardless.
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_amp else nullcontext()

    batches = TrainBatches(train_split, cfg.train.batch_size, cfg.train.augment_pad, cfg.train.augment_flip,
                           seed=cfg.seed)
    optimizer = build_optimizer(model, cfg.optim)
    total_steps = cfg.train.epochs * len(batches)
    # read once: OmegaConf lookups cost microseconds, and the step below runs thousands of times
    warmup_frac, schedule = cfg.optim.warmup_frac, cfg.optim.schedule
    label_smoothing, loss_factor = cfg.optim.label_smoothing, cfg.divergence.loss_factor
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    # Device-side buffers, read back once per log interval.
    window_losses = torch.zeros(log_every, device=device)
    window_start = 0  # first step of the current log window; a window ends every log_every steps or at epoch end
    epoch_loss_sum = torch.zeros((), device=device)
    epoch_correct = torch.zeros((), device=device, dtype=torch.long)
    initial_loss = None
    step = 0
    best_test_acc = None
    # Summary throughput: with torch.compile, epoch 1 holds the compile time, so it is left out when later
    # epochs exist (the per-epoch records keep every epoch's own rate).
    skip_first_epoch_in_rate = bool(cfg.train.compile) and cfg.train.epochs > 1
    rate_images, rate_seconds = 0, 0.0

    progress = tqdm(total=total_steps, unit="step", dynamic_ncols=True, mininterval=1.0,
                    desc=f"{cfg.variant.name}/{cfg.model.name} lr={cfg.optim.lr}")
    try:
        for epoch in range(cfg.train.epochs):
            epoch_started = time.perf_counter()
            epoch_steps = 0
            for images, labels in batches:
                lr_now = lr_multiplier(step, total_steps, warmup_frac, schedule)
                for group, base_lr in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base_lr * lr_now
                probe.before_forward(step)
                # torch.compile does not follow per-step hooks: activation-measure steps run the eager module.
                forward_model = model if probe.measures_activations(step) else step_model
                with autocast():
                    # the layout copy on uint8 moves a quarter of the bytes of a float copy
                    logits = forward_model(normalize(images.contiguous(memory_format=memory_format)))
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                slot = step - window_start
                if slot == 0:
                    window_lr = base_lrs[0] * lr_now  # the lr a window's record reports: at its first step
                probe.after_backward(step, record_global_grad_norm=slot == 0)
                optimizer.step()
                probe.after_optimizer_step(step)

                detached_loss = loss.detach()
                probe.record_loss(step, detached_loss)
                window_losses[slot] = detached_loss
                epoch_loss_sum += detached_loss
                epoch_correct += (logits.argmax(1) == labels).sum()
                step += 1
                epoch_steps += 1
                progress.update(1)

                # the last window of an epoch is read back at the epoch's end, so that the end-of-epoch checks see
                # every step's loss and a divergence is pinned to its step
                if slot == log_every - 1 or epoch_steps == len(batches):
                    window_start = step
                    # One host copy for the window's losses, the spike count and the probe's measurements.
                    spikes_so_far = probe.loss_spikes_so_far()
                    window_extras = [window_losses[:slot + 1]] + ([spikes_so_far] if spikes_so_far is not None else [])
                    probe_records, host_values = probe.readback_with(*window_extras)
                    losses = host_values[:slot + 1]
                    first_step_of_window = step - (slot + 1)
                    if initial_loss is None:
                        initial_loss = losses[0]
                    diverged_at = _first_divergent_step(losses, first_step_of_window, initial_loss,
                                                        loss_factor)
                    window_loss = sum(losses) / len(losses)
                    window_record = {"step": first_step_of_window, "epoch": first_step_of_window / len(batches),
                                     "train/loss": window_loss, "train/lr": window_lr}
                    if spikes_so_far is not None:
                        window_record["train/loss_spikes"] = int(host_values[-1])
                    for record in _merge_probe_records(window_record, probe_records, len(batches)):
                        sinks.log_step(record)
                    progress.set_postfix(loss=f"{window_loss:.3f}", refresh=False)
                    summary["steps_done"] = step
                    if diverged_at is not None:
                        summary.update(status="diverged", diverged_step=diverged_at, epochs_done=epoch)
                        progress.write(f"diverged at step {diverged_at}: loss {max(losses, key=_badness):.4g} "
                                       f"(initial {initial_loss:.4g}, limit x{loss_factor})")
                        return

            if on_cuda:
                torch.cuda.synchronize()
            train_seconds = time.perf_counter() - epoch_started
            images_per_s = epoch_steps * cfg.train.batch_size / train_seconds
            if not (skip_first_epoch_in_rate and epoch == 0):
                rate_images += epoch_steps * cfg.train.batch_size
                rate_seconds += train_seconds
            test_loss, test_acc = evaluate(step_model, test_split, cfg.train.eval_batch_size, autocast, memory_format)
            train_loss = epoch_loss_sum.item() / epoch_steps
            train_acc = epoch_correct.item() / (epoch_steps * cfg.train.batch_size)
            epoch_loss_sum.zero_(), epoch_correct.zero_()
            best_test_acc = test_acc if best_test_acc is None else max(best_test_acc, test_acc)
            test_acc_by_step[step] = test_acc
            sinks.log_epoch({"epoch": epoch + 1, "step": step, "train/loss": train_loss, "train/acc": train_acc,
                             "test/loss": test_loss, "test/acc": test_acc, "train/images_per_s": images_per_s})
            progress.write(f"epoch {epoch + 1}/{cfg.train.epochs}: train loss {train_loss:.4f} acc {train_acc:.4f} "
                           f"| test loss {test_loss:.4f} acc {test_acc:.4f} | {images_per_s:.0f} img/s")
            summary.update(epochs_done=epoch + 1, steps_done=step, final_test_acc=test_acc,
                           best_test_acc=best_test_acc,
                           images_per_s=round(rate_images / rate_seconds if rate_seconds else images_per_s, 1))
            if not math.isfinite(train_loss):
                summary.update(status="diverged", diverged_step=step)
                return
        summary["status"] = "finished"
    finally:
        progress.close()
        try:
            summary.update(probe.summary(test_acc_by_step))
        except Exception as error:  # e.g. a dead CUDA context: keep the run's own error, note this one
            summary["instrument_error"] = f"{type(error).__name__}: {error}"


def _merge_probe_records(window_record: dict, probe_records: list[dict], steps_per_epoch: int) -> list[dict]:
    """Probe measurements at the window's first step join its record; others become their own step records."""
    records = [window_record]
    for probe_record in probe_records:
        if probe_record["step"] == window_record["step"]:
            window_record.update(probe_record)
        else:
            records.append({"epoch": probe_record["step"] / steps_per_epoch, **probe_record})
    return sorted(records, key=lambda record: record["step"])


def _badness(loss: float) -> float:
    return math.inf if not math.isfinite(loss) else loss


def _first_divergent_step(losses: list[float], first_step: int, initial_loss: float, loss_factor: float):
    for offset, loss in enumerate(losses):
        if not math.isfinite(loss) or loss > loss_factor * initial_loss:
            return first_step + offset
    return None
