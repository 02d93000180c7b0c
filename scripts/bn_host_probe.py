#!/usr/bin/env python
"""Where does a BatchNorm call's time go: GPU kernels or host (Python, autograd, launches)?

1. Host time per call: a tiny input (GPU work negligible), N calls back to back, one synchronize at the end;
   ours vs torch.nn.functional.batch_norm, forward and forward+backward.
2. Kernel + host profile (torch.profiler, CPU and CUDA activities) of a few forward+backward calls of one
   bench shape; the full tables go to --log, a short summary to stdout.
Usage: python scripts/bn_host_probe.py [--log profile.log] [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", default="profile.log")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="512x64x32x32")
    args = ap.parse_args()
    dev = args.device
    if dev == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    from bnexp.norm.triton_function import triton_grouped_batch_norm

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def make(shape, dtype, cl):
        x = torch.randn(shape, device=dev) * 2 + 1
        x = x.to(dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        c = shape[1]
        w = torch.rand(c, device=dev, requires_grad=True)
        b = torch.randn(c, device=dev, requires_grad=True)
        rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)
        return x.requires_grad_(True), w, b, rm, rv, torch.randn_like(x)

    def ours(x, w, b, rm, rv):
        return triton_grouped_batch_norm(x, w, b, rm, rv, None, use_batch_stats=True, momentum=0.1, eps=1e-5,
                                         stat_groups=x.shape[1])

    def native(x, w, b, rm, rv):
        return F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)

    # 1. host time per call on a tiny input
    x, w, b, rm, rv, dy = make((8, 64, 4, 4), torch.float32, False)
    n = 200 if dev == "cuda" else 5
    lines = []
    for name, fn in (("ours", ours), ("torch", native)):
        for mode in ("fwd", "fwd+bwd"):
            def step():
                if mode == "fwd":
                    with torch.no_grad():
                        fn(x, w, b, rm, rv)
                else:
                    torch.autograd.grad(fn(x, w, b, rm, rv), (x, w, b), dy)
            for _ in range(10):
                step()
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            sync()
            lines.append(f"host-bound time per call, {name:5s} {mode:7s}: {(time.perf_counter() - t0) / n * 1e6:8.1f} us")
    # backward alone, called on this thread (no autograd engine / device thread)
    from bnexp.norm import triton_function as tf

    stats = tf._stats_impl(x.detach(), None, None, None, 0.1, 1e-5, 64)
    for _ in range(10):
        tf._backward_impl(dy, x.detach(), stats, w.detach(), True, 64)
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        tf._backward_impl(dy, x.detach(), stats, w.detach(), True, 64)
    sync()
    lines.append(f"host-bound time per call, ours  bwd-direct (no autograd): {(time.perf_counter() - t0) / n * 1e6:8.1f} us")
    print("\n".join(lines), flush=True)

    # 2. profile one bench shape
    from torch.profiler import ProfilerActivity, profile

    shape = tuple(int(v) for v in args.shape.split("x")) if dev == "cuda" else (4, 8, 3, 3)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    with open(args.log, "w") as log:
        log.write("\n".join(lines) + "\n")
        for dtype, cl in ((torch.float32, False), (torch.bfloat16, True)):
            x, w, b, rm, rv, dy = make(shape, dtype, cl)
            for _ in range(3):
                torch.autograd.grad(ours(x, w, b, rm, rv), (x, w, b), dy)
            sync()
            with profile(activities=acts) as prof:
                for _ in range(5):
                    torch.autograd.grad(ours(x, w, b, rm, rv), (x, w, b), dy)
                sync()
            ka = prof.key_averages()
            title = f"profile {shape} {dtype} {'nhwc' if cl else 'nchw'}, 5 x fwd+bwd"
            log.write(f"\n{title}, by device time\n")
            log.write(ka.table(sort_by="self_device_time_total" if dev == "cuda" else "self_cpu_time_total",
                               row_limit=12) + "\n")
            log.write(f"\n{title}, by CPU time\n" + ka.table(sort_by="cpu_time_total", row_limit=25) + "\n")
            if dev == "cuda":
                kern = sum(e.self_device_time_total for e in ka if e.key.startswith("bn_")) / 5
                print(f"{title}: Triton kernels {kern:.1f} us per fwd+bwd (device time)", flush=True)
    print(f"profile tables: {args.log}")


if __name__ == "__main__":
    main()
