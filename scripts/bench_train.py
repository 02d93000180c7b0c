"""Cost of stability instrumentation: training-step time with the probe at its interval vs without it.

Both arms run in one process on the same model and batches, interleaved in blocks of `every` steps
(each instrumented block holds exactly one measure step, like a real run), so drift in machine speed
affects both arms alike. Both arms read the loss back to the host every `log_every` steps as the
trainer does; the instrumented arm also calls probe.readback() there.

    python scripts/bench_train.py                         # CPU-sized defaults
    python scripts/bench_train.py --device cuda --width 1 --batch-size 512 --blocks 6
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnexp.data import make_synthetic, normalize  # noqa: E402
from bnexp.instrument import DEFAULT_INSTRUMENT_CFG, StabilityProbe  # noqa: E402
from bnexp.models import build_model  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="airbench")
    parser.add_argument("--norm", default="per_channel", help="per_channel | grouped | shared | none | torch")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--every", type=int, default=DEFAULT_INSTRUMENT_CFG["every"], help="probe interval")
    parser.add_argument("--log-every", type=int, default=25, help="steps between host readbacks")
    parser.add_argument("--blocks", type=int, default=3, help="blocks of `every` steps per arm")
    parser.add_argument("--warmup", type=int, default=30,
                        help="instrumented warm-up steps (covers a measure step, a log step, a loss chunk)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile; measure steps run eagerly")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--check-syncs", action="store_true",
                        help="CUDA: count host syncs inside the probe's per-step calls (should be 0)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, args.norm, width=args.width).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    compiled = torch.compile(model) if args.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    # As in the trainer: full measurements every `every` steps, grad_norm/global at each log step.
    probe = StabilityProbe(model, {"every": args.every}, global_grad_norm_every=args.log_every)

    data = make_synthetic(train_size=args.batch_size * 8, test_size=8, seed=0).train.to(device)
    batches = [
        (normalize(data.images[i : i + args.batch_size]).contiguous(memory_format=memory_format),
         data.labels[i : i + args.batch_size])
        for i in range(0, len(data), args.batch_size)
    ]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)

    probe_syncs = []

    def probe_call(method, *call_args) -> None:
        """Run a probe method; with --check-syncs, under CUDA sync debug mode, counting sync warnings."""
        if not (args.check_syncs and device.type == "cuda"):
            method(*call_args)
            return
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                method(*call_args)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        probe_syncs.extend(f"{method.__name__}: {w.message}" for w in caught if "synchroniz" in str(w.message))

    def train_step(step: int, instrumented: bool) -> torch.Tensor:
        images, labels = batches[step % len(batches)]
        # torch.compile cannot see per-step hooks, so measure steps use the eager module (see StabilityProbe).
        net = model if instrumented and probe.measures_activations(step) else compiled
        if instrumented:
            probe_call(probe.before_forward, step)
        with autocast:
            loss = nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if instrumented:
            probe_call(probe.after_backward, step)
        optimizer.step()
        if instrumented:
            probe_call(probe.after_optimizer_step, step)
            probe_call(probe.record_loss, step, loss.detach())
        if step % args.log_every == 0:  # the trainer's periodic host readback
            loss.item()
            if instrumented:
                probe.readback()
        return loss

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    block = max(args.every, args.log_every, 1)
    step = 0
    for _ in range(args.warmup):  # compile / allocator / cudnn warm-up, both paths
        train_step(step, instrumented=True)
        step += 1
    probe_syncs.clear()  # warm-up may build cached index tensors (one host->device copy)
    step = block  # blocks start at a multiple of `every`: one measure step per instrumented block
    synchronize()

    # Wall time is what matters on a GPU; on a shared CPU box, other processes inflate wall time at random,
    # so this process's CPU time is reported as well (the steadier number there).
    times = {"off": [], "on": []}
    cpu_times = {"off": [], "on": []}
    for block_index in range(2 * args.blocks):
        arm = "on" if block_index % 2 else "off"  # off first, then alternate
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(block):  # no syncs inside a block except the trainer's readbacks
            train_step(step, instrumented=arm == "on")
            step += 1
        synchronize()
        times[arm].append((time.perf_counter() - start) / block)
        cpu_times[arm].append((time.process_time() - cpu_start) / block)

    # Cost of a lone measure step vs a plain step, timed separately so the blocks above keep their overlap.
    measure_step_times, plain_step_times = [], []
    for _ in range(3):
        step += (-step) % max(args.every, 1)
        for kind, target in (("measure", measure_step_times), ("plain", plain_step_times)):
            synchronize()
            measure_start = time.perf_counter()
            train_step(step if kind == "measure" else step + 1, instrumented=kind == "measure")
            synchronize()
            target.append(time.perf_counter() - measure_start)
        step += 2

    off_ms = 1000 * statistics.median(times["off"])
    on_ms = 1000 * statistics.median(times["on"])
    print(f"device={device.type} model={args.model} norm={args.norm} width={args.width} batch={args.batch_size} "
          f"every={args.every} log_every={args.log_every} blocks={args.blocks}x{block} steps compile={args.compile}")
    print(f"step time off: {off_ms:.2f} ms   on: {on_ms:.2f} ms   (block medians; "
          f"off blocks {[round(1000 * t, 2) for t in times['off']]}, on blocks {[round(1000 * t, 2) for t in times['on']]})")
    if args.every > 0:
        print(f"measure step: {1000 * statistics.median(measure_step_times):.2f} ms, plain step "
              f"{1000 * statistics.median(plain_step_times):.2f} ms (each synchronised, median of 3)")
    if args.check_syncs and device.type == "cuda":
        print(f"host syncs inside per-step probe calls: {len(probe_syncs)} {probe_syncs[:3]}")
    print(f"instrumented / off step-time ratio: {on_ms / off_ms:.3f}  (overhead {100 * (on_ms / off_ms - 1):+.1f}%)")
    if device.type == "cpu":
        cpu_ratio = sum(cpu_times["on"]) / sum(cpu_times["off"])
        print(f"instrumented / off process-CPU-time ratio: {cpu_ratio:.3f}  (overhead {100 * (cpu_ratio - 1):+.1f}%; "
              f"off {1000 * statistics.median(cpu_times['off']):.1f} ms, on {1000 * statistics.median(cpu_times['on']):.1f} ms "
              "CPU per step)")


if __name__ == "__main__":
    main()
