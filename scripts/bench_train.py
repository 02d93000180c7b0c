"""Cost of stability instrumentation: the trainer's own step and log window with the probe on vs off.

Both arms run the trainer's `TrainStep` and `LogWindow` (bnexp/train/step.py) in one process, on the same model and
batches, interleaved in blocks of `every` steps (each instrumented block holds exactly one measure step, like a real
run), so drift in machine speed affects both arms alike. Both arms read their losses back every `log_every` steps
as the trainer does; the instrumented arm's window also brings the probe's measurements back in that transfer.

The step is the one a run takes: the run's config is composed from conf/ (trailing arguments are train overrides, as
for `python -m bnexp.train`), and the device, bf16 autocast and channels_last, the model, the optimiser with its
parameter groups, the lr schedule and the label smoothing all come from the trainer's own functions.

The sharpness measurement (instrument.sharpness_every) is timed apart: steps that each take one measurement
(Lanczos on Hessian-vector products of the loss on a fixed batch) alternate with plain steps of the same model, and
the ratio of their medians is printed, with what it costs a run measuring every N steps. By default every measurement
takes all --sharpness-steps products (tolerance 0): the cost of that setting at most. A run's measurements stop
earlier when warm-started near convergence; here consecutive measurements are only a step apart, so a tolerance
would make them look cheaper than a run's, whose parameters move for sharpness_every steps in between.

    python scripts/bench_train.py                         # CPU-sized defaults
    python scripts/bench_train.py --device cuda --width 1 --batch-size 512 --blocks 6
    python scripts/bench_train.py +variant=grouped_bn variant.stat_groups=2 optim=adamw
    python scripts/bench_train.py --sharpness-repeats 0   # without the sharpness timing
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnexp.config.compose import compose_train_config, validate_train_config  # noqa: E402
from bnexp.data.sources import make_synthetic  # noqa: E402
from bnexp.instrument import LossCurve, SharpnessProbe, StabilityProbe, default_instrument_cfg  # noqa: E402
from bnexp.train.device import device_feature_enabled, resolve_device  # noqa: E402
from bnexp.train.loop import model_from_config  # noqa: E402
from bnexp.train.optim import build_lr_schedule, build_optimizer  # noqa: E402
from bnexp.train.step import LogWindow, TrainStep, fixed_batch_loss  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train config overrides, e.g. +variant=shared_bn optim=adamw")
    parser.add_argument("--model", default="airbench")
    parser.add_argument("--norm", default=None, help="variant.norm: per_channel | grouped | shared | none | torch "
                        "(default: the variant's)")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--every", type=int, default=default_instrument_cfg()["every"], help="probe interval")
    parser.add_argument("--log-every", type=int, default=25, help="steps per log window (host readback)")
    parser.add_argument("--blocks", type=int, default=3, help="blocks of `every` steps per arm")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up steps per arm (covers a measure step)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda, as the config's device")
    parser.add_argument("--amp", default="auto", choices=("auto", "true", "false"),
                        help="bf16 autocast, as train.amp (auto: on CUDA only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile; measure steps run eagerly")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "true", "false"),
                        help="as train.channels_last (auto: on CUDA only)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--check-syncs", action="store_true",
                        help="CUDA: count host syncs inside the training step, both arms (should be 0)")
    parser.add_argument("--sharpness-repeats", type=int, default=3,
                        help="sharpness-measuring steps timed (each beside a plain step); 0 skips them")
    parser.add_argument("--sharpness-steps", type=int, default=default_instrument_cfg()["sharpness_lanczos_steps"],
                        help="Lanczos steps (Hessian-vector products) per measurement")
    parser.add_argument("--sharpness-tolerance", type=float, default=0.0,
                        help="Lanczos stops early at this relative residual estimate (0: always every step)")
    parser.add_argument("--sharpness-batch", type=int, default=0,
                        help="images in the measurement batch (0: --batch-size, like sharpness_batch_size=null)")
    parser.add_argument("--sharpness-every", type=int, default=50,
                        help="for the printed cost of a run measuring every N steps")
    return parser.parse_args()


def run_config(args: argparse.Namespace):
    """The train config of a run with these settings, composed and checked as `python -m bnexp.train` does."""
    overrides = [f"model={args.model}", f"model.width={args.width}", f"device={args.device}",
                 f"train.amp={args.amp}", f"train.channels_last={args.channels_last}",
                 f"train.batch_size={args.batch_size}", f"train.compile={str(args.compile).lower()}",
                 f"instrument.every={args.every}", "data=synthetic", f"data.train_size={args.batch_size * 8}"]
    if args.norm is not None:
        overrides.append(f"variant.norm={args.norm}")
    cfg = compose_train_config([*overrides, *args.overrides])
    validate_train_config(cfg)
    return cfg


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = run_config(args)
    device = resolve_device(cfg.device)
    on_cuda = device.type == "cuda"
    amp = device_feature_enabled(cfg.train.amp, on_cuda)
    memory_format = torch.channels_last if device_feature_enabled(cfg.train.channels_last, on_cuda) \
        else torch.contiguous_format
    torch.manual_seed(0)
    model = model_from_config(cfg).to(device, memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.optim)
    # The schedule steps once per step of either arm: warm-up, the timed blocks, the six lone steps and the
    # sharpness pairs below.
    block = max(args.every, args.log_every, 1)
    total_steps = 2 * args.warmup + 2 * args.blocks * block + 6 + 2 * (args.sharpness_repeats + 1)
    lr_schedule = build_lr_schedule(optimizer, cfg.optim, total_steps)
    compiled = torch.compile(model) if cfg.train.compile else None
    data = make_synthetic(train_size=args.batch_size * 8, test_size=8, seed=0).train.to(device)
    batches = [(data.images[i:i + args.batch_size], data.labels[i:i + args.batch_size])
               for i in range(0, len(data), args.batch_size)]

    # The two arms share the model, optimiser and schedule; "on" is what a run with instrument.every=<every> does.
    steps, windows = {}, {}
    for arm, probe in (("off", None), ("on", StabilityProbe(model, cfg.instrument))):
        steps[arm] = TrainStep(model, optimizer, probe, compiled, amp, memory_format, cfg.optim.label_smoothing)
        windows[arm] = LogWindow(args.log_every, device, len(batches), loss_factor=1e9, loss_curve=LossCurve(),
                                 probe=probe)  # loss_factor: a benchmark never stops for divergence
    step_syncs = []

    def train_step(step: int, arm: str) -> None:
        """One training step as the trainer runs it, closing the arm's log window when it is full."""
        window = windows[arm]
        images, labels = batches[step % len(batches)]
        if not (args.check_syncs and device.type == "cuda"):
            loss, _correct = steps[arm](step, images, labels, global_grad_norm=window.empty)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    loss, _correct = steps[arm](step, images, labels, global_grad_norm=window.empty)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            step_syncs.extend(f"{arm} step {step}: {w.message}" for w in caught if "synchroniz" in str(w.message))
        window.add(step, loss, optimizer.param_groups[0]["lr"])
        lr_schedule.step()  # as the trainer does after every step
        if window.full:  # the trainer's periodic host readback
            window.close()

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for step in range(args.warmup):  # compile / allocator / cudnn warm-up, both arms
        train_step(step, "on")
        train_step(step, "off")
    for arm in ("off", "on"):  # start the timed blocks with empty windows
        if not windows[arm].empty:
            windows[arm].close()
    step_syncs.clear()  # warm-up builds cached index tensors (one host-to-device copy)
    step = block  # blocks start at a multiple of `every`: one measure step per instrumented block
    synchronize()

    # Wall time is what matters on a GPU; on a shared CPU box, other processes inflate wall time at random,
    # so this process's CPU time is reported as well (the steadier number there).
    times = {"off": [], "on": []}
    cpu_times = {"off": [], "on": []}
    for block_index in range(2 * args.blocks):
        arm = "on" if block_index % 2 else "off"  # off first, then alternate
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(block):  # no syncs inside a block except the log windows' readbacks
            train_step(step, arm)
            step += 1
        synchronize()
        times[arm].append((time.perf_counter() - start) / block)
        cpu_times[arm].append((time.process_time() - cpu_start) / block)

    # Cost of a lone measure step vs a plain step, timed separately so the blocks above keep their overlap.
    measure_step_times, plain_step_times = [], []
    for _ in range(3):
        step += (-step) % max(args.every, 1)
        for arm, target in (("on", measure_step_times), ("off", plain_step_times)):
            synchronize()
            measure_start = time.perf_counter()
            train_step(step if arm == "on" else step + 1, arm)
            synchronize()
            target.append(time.perf_counter() - measure_start)
        step += 2

    # Steps that each measure the sharpness (eagerly, fp32, as in a run) beside plain steps, alternating; the first
    # measurement (a cold start and first-call costs) is warm-up.
    sharpness_times, beside_times, lanczos_steps_taken = [], [], []
    sharpness_cpu_times, beside_cpu_times = [], []
    if args.sharpness_repeats > 0:
        measure_images, measure_labels = batches[0]
        measure_images, measure_labels = measure_images[:args.sharpness_batch or None], \
            measure_labels[:args.sharpness_batch or None]
        sharpness = SharpnessProbe(model, fixed_batch_loss(measure_images, measure_labels, memory_format=memory_format,
                                                           label_smoothing=cfg.optim.label_smoothing),
                                   optimizer, every=1, lanczos_steps=args.sharpness_steps,
                                   tolerance=args.sharpness_tolerance)
        sharpness_step = TrainStep(model, optimizer, StabilityProbe(model, {"every": 0}, sharpness), compiled,
                                   amp, memory_format, cfg.optim.label_smoothing)
        for repeat in range(args.sharpness_repeats + 1):
            for timed_step, target, cpu_target in ((sharpness_step, sharpness_times, sharpness_cpu_times),
                                                   (steps["off"], beside_times, beside_cpu_times)):
                images, labels = batches[step % len(batches)]
                synchronize()
                start, cpu_start = time.perf_counter(), time.process_time()
                timed_step(step, images, labels)
                lr_schedule.step()  # as the trainer does after every step
                synchronize()
                if repeat > 0:
                    target.append(time.perf_counter() - start)
                    cpu_target.append(time.process_time() - cpu_start)
                step += 1
            (record,) = sharpness_step.probe.readback()
            if repeat > 0:
                lanczos_steps_taken.append(int(record["sharpness/lanczos_steps"]))

    off_ms = 1000 * statistics.median(times["off"])
    on_ms = 1000 * statistics.median(times["on"])
    print(f"device={device.type} model={cfg.model.name} norm={cfg.variant.norm} width={cfg.model.width} "
          f"batch={args.batch_size} every={args.every} log_every={args.log_every} blocks={args.blocks}x{block} steps "
          f"compile={cfg.train.compile} amp={amp} channels_last={memory_format == torch.channels_last} "
          f"optim={cfg.optim.name} schedule={cfg.optim.schedule}")
    print(f"step time off: {off_ms:.2f} ms   on: {on_ms:.2f} ms   (block medians; "
          f"off blocks {[round(1000 * t, 2) for t in times['off']]}, on blocks {[round(1000 * t, 2) for t in times['on']]})")
    if args.every > 0:
        print(f"measure step: {1000 * statistics.median(measure_step_times):.2f} ms, plain step "
              f"{1000 * statistics.median(plain_step_times):.2f} ms (each synchronised, median of 3)")
    if sharpness_times:
        print(f"sharpness step (Lanczos steps taken {lanczos_steps_taken} of at most {args.sharpness_steps}, "
              f"tolerance {args.sharpness_tolerance:g}, measurement batch {args.sharpness_batch or args.batch_size}): "
              f"{1000 * statistics.median(sharpness_times):.1f} ms, plain step "
              f"{1000 * statistics.median(beside_times):.1f} ms (each synchronised, "
              f"median of {args.sharpness_repeats})")
        arms = [("wall-time", sharpness_times, beside_times)]
        if device.type == "cpu":  # steadier on a shared CPU, as above
            arms.append(("process-CPU-time", sharpness_cpu_times, beside_cpu_times))
        for kind, measuring, plain in arms:
            ratio = statistics.median(measuring) / statistics.median(plain)
            print(f"sharpness / plain step {kind} ratio: {ratio:.1f}; a run measuring every {args.sharpness_every} "
                  f"steps pays {100 * (ratio - 1) / args.sharpness_every:+.0f}% of its step time")
    if args.check_syncs and device.type == "cuda":
        print(f"host syncs inside the training step: {len(step_syncs)} {step_syncs[:3]}")
    print(f"instrumented / off step-time ratio: {on_ms / off_ms:.3f}  (overhead {100 * (on_ms / off_ms - 1):+.1f}%)")
    if device.type == "cpu":
        cpu_ratio = sum(cpu_times["on"]) / sum(cpu_times["off"])
        print(f"instrumented / off process-CPU-time ratio: {cpu_ratio:.3f}  (overhead {100 * (cpu_ratio - 1):+.1f}%; "
              f"off {1000 * statistics.median(cpu_times['off']):.1f} ms, on {1000 * statistics.median(cpu_times['on']):.1f} ms "
              "CPU per step)")


if __name__ == "__main__":
    main()
