"""Training-step speed of every variant on the same model and batch, as ratios to torch_bn timed in the same run.

The point: with bnexp's Triton layer, shared and grouped statistics train at the speed of the correct
per-channel layer, so sweeps compare stability, not speed. `--torch-backend-too` also times the
PyTorch path of our layer (the (N, G, C/G*H*W) view trick) for contrast.

    python scripts/bench_variants.py                                   # CPU-sized defaults
    python scripts/bench_variants.py --width 1 --batch-size 512 --steps 30 --json results/bench/variants.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnexp.data.sources import make_synthetic  # noqa: E402
from bnexp.models import build_model  # noqa: E402
from bnexp.runs.provenance import device_name  # noqa: E402
from bnexp.train.step import TrainStep  # noqa: E402

# (label, norm kind, stat_groups, backend)
VARIANTS = [("torch_bn", "torch", None, "torch"), ("correct_bn", "per_channel", None, "auto"),
            ("grouped_bn(8)", "grouped", 8, "auto"), ("shared_bn", "shared", 1, "auto"),
            ("no_bn", "none", None, "auto")]
TORCH_PATH_VARIANTS = [("correct_bn[torch path]", "per_channel", None, "torch"),
                       ("grouped_bn(8)[torch path]", "grouped", 8, "torch"),
                       ("shared_bn[torch path]", "shared", 1, "torch")]


def time_training_steps(norm, stat_groups, backend, args, device, images, labels) -> float:
    """Median seconds per training step (the trainer's TrainStep, without the probe) over `args.repeats` blocks."""
    torch.manual_seed(0)
    model = build_model(args.model, norm, width=args.width, stat_groups=stat_groups, backend=backend,
                        affine_per_channel=norm != "shared")
    on_cuda = device.type == "cuda"
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    train_step = TrainStep(model, optimizer, compiled_model=torch.compile(model) if args.compile else None,
                           amp=on_cuda, memory_format=memory_format)

    def step():
        train_step(0, images, labels)

    def synchronize():
        if on_cuda:
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    block_times = []
    for _ in range(args.repeats):
        synchronize()
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize()
        block_times.append((time.perf_counter() - started) / args.steps)
    return sorted(block_times)[len(block_times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="airbench")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks; the median is reported")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--torch-backend-too", action="store_true")
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = make_synthetic(train_size=args.batch_size, test_size=1, seed=0).train.to(device)
    card = device_name(device)

    rows = []
    for label, norm, stat_groups, backend in VARIANTS + (TORCH_PATH_VARIANTS if args.torch_backend_too else []):
        seconds = time_training_steps(norm, stat_groups, backend, args, device, data.images, data.labels)
        rows.append({"variant": label, "ms_per_step": seconds * 1e3, "images_per_s": args.batch_size / seconds})
    baseline = rows[0]["ms_per_step"]
    print(f"\n{card} | {args.model} width {args.width} | batch {args.batch_size} | "
          f"{'bf16 autocast, channels_last' if device.type == 'cuda' else 'fp32'}"
          f"{' | torch.compile' if args.compile else ''}")
    print(f"{'variant':28s} {'ms/step':>9s} {'images/s':>10s} {'time vs torch_bn':>17s}")
    for row in rows:
        row["ratio_vs_torch_bn"] = row["ms_per_step"] / baseline
        print(f"{row['variant']:28s} {row['ms_per_step']:9.2f} {row['images_per_s']:10.0f} "
              f"{row['ratio_vs_torch_bn']:16.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": card, "torch": torch.__version__, "args": vars(args),
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
