"""The training loop: one run of one variant, from config to run directory.

The step (bnexp/train/step.py) does no host syncs: losses and accuracy counts stay on the device, and the log window
reads them back every `train.log_every` steps and at each epoch's end (the divergence check happens then too).
"""
from __future__ import annotations

import contextlib
import functools
import math
import signal
import time

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from bnexp.config.compose import validate_train_config
from bnexp.data.sources import TrainBatches, eval_batches, load_dataset
from bnexp.instrument import LossCurve, StabilityProbe
from bnexp.models import build_model, stat_groups_by_layer
from bnexp.runs.provenance import provenance
from bnexp.runs.lock import RunDirLock
from bnexp.train.sinks import LocalSink, SinkGroup, logger_sinks
from bnexp.train.step import LogWindow, TrainStep, model_logits


class RunInterrupted(Exception):
    """SIGTERM/SIGINT arrived: stop, but still close the logs and write the summary."""


def resolve_device(requested: str) -> torch.device:
    # a CUDA device that is not there was refused with the config (config_schema's device check)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def device_feature_enabled(setting: str | bool, on_cuda: bool) -> bool:
    """train.amp / train.channels_last (auto, true or false: the schema allows no other value): `auto` turns the
    feature on for CUDA only (on the CPU bf16 autocast and channels_last are slower, not faster); true / false
    force it on any device (true on the CPU is how the tests exercise the CUDA code path)."""
    return on_cuda if setting == "auto" else setting


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def build_optimizer(model: torch.nn.Module, optim_cfg: DictConfig) -> torch.optim.Optimizer:
    # No weight decay on norm affine parameters and biases (1-D tensors), as is usual for BN nets.
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": optim_cfg.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov)
    if optim_cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas))
    # the schema refuses other names; this guards an optimizer added to the schema but not here
    raise ValueError(f"unknown optimizer {optim_cfg.name!r}; use optim=sgd or optim=adamw")


def lr_multiplier(step: int, total_steps: int, warmup_frac: float, schedule: str) -> float:
    """Linear warmup from 0, then cosine or linear decay to 0."""
    # as for the optimizer: a schedule the schema allows but this function lacks must not fall back silently
    if schedule not in ("cosine", "linear"):
        raise ValueError(f"unknown schedule {schedule!r}; use optim.schedule=cosine or linear")
    warmup_steps = max(1, int(round(total_steps * warmup_frac)))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress


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


def run_summary_base(cfg: DictConfig, stat_groups: dict | None) -> dict:
    # the config is not validated yet here: a bad lr or seed is kept as given, and the run fails just after
    return {"status": "running", "variant": cfg.variant.name, "model": cfg.model.name,
            "lr": _number_or_as_given(cfg.optim.lr, float), "seed": _number_or_as_given(cfg.seed, int),
            "data_source": None,
            "final_test_acc": None, "best_test_acc": None, "epochs_done": 0, "steps_done": 0,
            "wall_time_s": 0.0, "images_per_s": None, "diverged_step": None, "error": None,
            "stat_groups_by_layer": stat_groups, "provenance": provenance(cfg.get("device"))}


def train(cfg: DictConfig, run_dir: str, extra_sinks: list | None = None,
          extra_files: dict[str, str] | None = None) -> dict:
    """Train one run; returns its summary (also written to run_dir/summary.json). `extra_files` (path in run_dir
    -> text) are written beside config.yaml once the lock is held: the CLI's Hydra copy in .hydra/.

    The run holds run_dir's lock (bnexp/runs/lock.py) from before its first write to after its last: a second run
    into the same dir raises RunDirLocked and touches nothing there. A diverged run is a result (status
    'diverged'); an exception or a kill is recorded as 'failed' with the error, then re-raised. A sink that fails
    to finish is noted in the summary (`sink_error`) and on stderr; it is raised only when the run itself raised
    nothing, so it never hides the run's own error.
    """
    started = time.perf_counter()
    summary = run_summary_base(cfg, record_stat_groups(cfg))
    with RunDirLock(run_dir), StopSignals() as stop:
        sinks = SinkGroup([])
        try:
            with stop.held():  # a kill during the first write lands after it, as a failed run
                sinks.sinks.append(LocalSink(run_dir, OmegaConf.to_yaml(cfg, resolve=True), summary, extra_files))
            if stop.pending is not None:
                raise stop.pending
            sinks.sinks.extend(extra_sinks or [])
            validate_train_config(cfg)
            # inside the try: a logger failure is a failed run
            sinks.sinks.extend(logger_sinks(cfg, run_dir, summary["provenance"]))
            _train_loop(cfg, sinks, summary)
        except BaseException as error:
            summary["status"] = "failed"
            summary["error"] = _describe_failure(error)
            raise
        finally:
            summary["wall_time_s"] = round(time.perf_counter() - started, 3)
            with stop.held():  # nor may a kill cut the last write short: the summary must say how the run ended
                sink_errors = sinks.finish(summary)
            if stop.pending is not None and summary["status"] != "failed":
                # the kill landed while the end was being written: the run did not end on its own. (Not failed
                # means the try ran through, so the local sink exists.)
                summary.update(status="failed", error=_describe_failure(stop.pending))
                sinks.sinks[0].write_summary(summary)
                raise stop.pending
    if sink_errors:
        raise sink_errors[0]
    return summary


def _describe_failure(error: BaseException) -> str:
    killed = isinstance(error, (RunInterrupted, KeyboardInterrupt))
    return ("killed: " if killed else "") + f"{type(error).__name__}: {error}"


def model_from_config(cfg: DictConfig) -> torch.nn.Module:
    return build_model(cfg.model.name, cfg.variant.norm, width=cfg.model.width,
                       stat_groups=cfg.variant.stat_groups, channels_per_group=cfg.variant.get("channels_per_group"),
                       affine_per_channel=cfg.variant.affine_per_channel, backend=cfg.variant.backend,
                       pooled=cfg.variant.get("pooled", "both"), freeze_weight=cfg.variant.get("freeze_weight", False))


def record_stat_groups(cfg: DictConfig) -> dict | None:
    """Put the statistic groups each norm layer gets into the run's config as `variant.stat_groups_by_layer`, so
    config.yaml and the W&B config say what `stat_groups` / `channels_per_group` came to, and return them for the
    summary. The model is built on the meta device (no memory, no random numbers drawn); a config that cannot
    build a model is left as it is (None for the summary) and fails in the run, where the error is recorded."""
    try:
        with torch.device("meta"):
            groups = stat_groups_by_layer(model_from_config(cfg))
    except Exception:
        return None
    with open_dict(cfg):
        cfg.variant.stat_groups_by_layer = groups
    return groups


def _number_or_as_given(value, kind):
    try:
        return kind(value)
    except (TypeError, ValueError):
        return value


class StopSignals:
    """While the run lives, SIGTERM raises RunInterrupted and SIGINT KeyboardInterrupt, wherever they land
    (decode, a step, the evaluation). Inside `held()` (the summary writes) the first one's exception is kept as
    `pending` instead, so that no kill leaves a torn or stale summary behind; the caller raises it after the
    write."""

    def __init__(self):
        self.pending: BaseException | None = None
        self._holding = False

    def __enter__(self) -> "StopSignals":
        self._previous = {signum: signal.signal(signum, self._on_signal)
                          for signum in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextlib.contextmanager
    def held(self):
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def _on_signal(self, signum, frame):
        interruption = (KeyboardInterrupt() if signum == signal.SIGINT
                        else RunInterrupted(f"received signal {signum}"))
        if not self._holding:
            raise interruption
        self.pending = self.pending or interruption


def _train_loop(cfg: DictConfig, sinks: SinkGroup, summary: dict) -> None:
    # The data, on the training device.
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.data)
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
    # the settings are bound once: OmegaConf lookups cost microseconds, and this runs every step
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_multiplier, total_steps=total_steps, warmup_frac=cfg.optim.warmup_frac, schedule=cfg.optim.schedule))
    probe = StabilityProbe(model, cfg.get("instrument"))
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
        summary.update(probe.summary(test_acc_by_step), **window.loss_curve.summary())
