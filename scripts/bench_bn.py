#!/usr/bin/env python
"""GPU benchmark of the Triton grouped BatchNorm against torch.

For every shape x dtype (fp32, bf16) x layout (NCHW, NHWC) it times, in training mode, the forward and the
forward+backward of
    ours      bnexp triton_grouped_batch_norm, per-channel statistics (stat_groups = C)
    torch     torch.nn.functional.batch_norm
    inductor  torch.compile of the torch.nn.functional.batch_norm call (a subset of cases unless --inductor all:
              every case is a fresh compile)
and, for shared / grouped statistics (stat_groups 1 and 8),
    ours_G    our kernels with stat_groups = G
    torchview_G  the PyTorch path bnexp.norm.functional.torch_grouped_batch_norm (F.batch_norm on an
              (N, G, C/G*H*W) view, plus the affine)

Times are medians of triton.testing.do_bench (which flushes L2 before every timed call). The device-to-device
copy bandwidth is measured first in the same run; "%bw" is the byte floor over the time, as a share of that
copy bandwidth: 2 passes over x for the forward (read x, write y), 5 for forward+backward (+ read x, dy, write
dx), counted at the input dtype. Each case also checks our forward output against torch's.

Writes JSON to results/bench/<card>_<date>.json (or --json) after every case, and prints a table.
Usage: python scripts/bench_bn.py [--quick] [--shapes 512x64x32x32,1024x256x3x3] [--inductor subset|all|none]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
from typing import NamedTuple

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SHAPES = [(512, 64, 32, 32), (512, 128, 16, 16), (512, 256, 8, 8), (512, 512, 4, 4),
          (1024, 64, 15, 15), (1024, 256, 7, 7), (1024, 256, 3, 3)]
QUICK_SHAPES = [(512, 64, 32, 32), (512, 512, 4, 4), (1024, 256, 7, 7)]
# inductor recompiles per case; by default compile only these (shape index, dtype, layout)
INDUCTOR_SUBSET = {(0, "fp32", "nchw"), (0, "bf16", "nhwc"), (4, "fp32", "nchw"), (4, "bf16", "nhwc")}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EPS = 1e-5
MOMENTUM = 0.1
DEVICE = "cuda"
DRY_RUN = False  # --cpu-dry-run: exercise this script's logic on CPU (Triton interpreter, tiny shapes, no timing value)


def parse_shapes(text):
    return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]


def card_slug(name: str) -> str:
    words = [w for w in name.lower().replace("nvidia", "").split() if w]
    return words[0] if words else "gpu"


class Timing(NamedTuple):
    """Milliseconds per call: median and the 20th / 80th percentiles of the timed repeats (their spread)."""
    median: float
    p20: float
    p80: float

    def spread_us(self) -> list:
        return [round(self.p20 * 1e3, 2), round(self.p80 * 1e3, 2)]


def bench_ms(fn) -> Timing:
    """triton.testing.do_bench (CUDA events, L2 flushed before every call), median and spread.

    The first call is made and waited for before anything is timed: it loads or compiles kernels (Triton's
    disk cache, inductor), which can take tens of ms. Only the second call's time decides the budget, so that
    loading a kernel never sends a fast function down the few-repeats path meant for the slow view trick.
    """
    import triton.testing

    if DRY_RUN:
        fn()
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        return Timing(ms, ms, ms)
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    one_call_ms = (time.perf_counter() - t0) * 1e3
    warmup_ms, rep_ms = (1, 1) if one_call_ms > 20.0 else (10, 60)  # > 20 ms: the view trick with G == 1
    p20, median, p80 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.2, 0.5, 0.8])
    return Timing(median, p20, p80)


def copy_bandwidth_gbs() -> float:
    n = 256 * 1024 * 1024 if not DRY_RUN else 1024 * 1024  # 1 GiB fp32 source
    buffers = {"src": torch.randn(n, device=DEVICE)}
    buffers["dst"] = torch.empty_like(buffers["src"])
    ms = bench_ms(lambda: buffers["dst"].copy_(buffers["src"])).median
    buffers.clear()  # the 2 GiB go back before the cases are made
    if not DRY_RUN:
        torch.cuda.empty_cache()
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def make_case(shape, dtype, layout):
    n, c, h, w = shape
    scale = 0.5 + torch.rand(c, device=DEVICE)
    shift = torch.randn(c, device=DEVICE)
    x = (torch.randn(shape, device=DEVICE) * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1)).to(dtype)
    dy = torch.randn(shape, device=DEVICE, dtype=dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    weight = (0.5 + torch.rand(c, device=DEVICE)).requires_grad_(True)
    bias = torch.randn(c, device=DEVICE).requires_grad_(True)
    return x.requires_grad_(True), dy, weight, bias


def _warm_case(job):
    """Worker: run one case's kernels once so Triton / inductor compile into the on-disk caches in parallel."""
    global DEVICE
    shape, dname, layout, groups_list, with_inductor, DEVICE = job
    if DEVICE == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    from bnexp.norm.triton_function import triton_grouped_batch_norm

    t0 = time.perf_counter()
    x, dy, weight, bias = make_case(tuple(shape), DTYPES[dname], layout)
    c = shape[1]
    for g in [c] + [g for g in groups_list if c % g == 0]:
        rm, rv = torch.zeros(g, device=DEVICE), torch.ones(g, device=DEVICE)

        def fwd(x, w, b, rm=rm, rv=rv, g=g):
            return triton_grouped_batch_norm(x, w, b, rm, rv, None, use_batch_stats=True, momentum=MOMENTUM,
                                             eps=EPS, stat_groups=g)

        with torch.no_grad():
            fwd(x, weight, bias)
        torch.autograd.grad(fwd(x, weight, bias), (x, weight, bias), dy)
    if with_inductor:
        rm, rv = torch.zeros(c, device=DEVICE), torch.ones(c, device=DEVICE)
        compiled = torch.compile(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, True, MOMENTUM, EPS), dynamic=False)
        with torch.no_grad():
            compiled(x, weight, bias)
        torch.autograd.grad(compiled(x, weight, bias), (x, weight, bias), dy)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def precompile(jobs, workers):
    """Fill Triton's and inductor's on-disk caches from `workers` processes (compiles are CPU-bound and
    serial within one process; the timing process then loads the compiled kernels from the cache)."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        times = pool.map(_warm_case, jobs, chunksize=1)
    print(f"precompiled {len(jobs)} cases in {time.perf_counter() - t0:.1f}s with {workers} processes "
          f"(sum of per-case times {sum(times):.1f}s)", flush=True)


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator to 4 significant digits (a fixed number of decimals would round 1e-4 to 0)."""
    return float(f"{numerator / denominator:.4g}")


def timed_pair(forward, x, dy, weight, bias) -> tuple[Timing, Timing]:
    """Timings of the training forward and of forward+backward of forward(x, weight, bias) -> y."""
    def fwd():
        forward(x, weight, bias)

    def fwd_bwd():
        y = forward(x, weight, bias)
        torch.autograd.grad(y, (x, weight, bias), dy)

    with torch.no_grad():
        t_fwd = bench_ms(fwd)  # training forward; autograd bookkeeping is not part of a forward-only time
    return t_fwd, bench_ms(fwd_bwd)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"shapes {QUICK_SHAPES}, no inductor")
    ap.add_argument("--shapes", default=None, help="comma-separated NxCxHxW list")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--layouts", default="nchw,nhwc")
    ap.add_argument("--inductor", choices=["subset", "all", "none"], default=None)
    ap.add_argument("--groups", default="1,8", help="stat_groups timed besides per-channel ('' to skip)")
    ap.add_argument("--json", default=None, help="output path (default results/bench/<card>_<date>.json)")
    ap.add_argument("--budget-s", type=float, default=float("inf"),
                    help="stop starting new cases after this many seconds (the JSON keeps what was measured)")
    ap.add_argument("--precompile-workers", type=int, default=None,
                    help="processes that compile all kernels before timing (0: compile in the timing process)")
    ap.add_argument("--cpu-dry-run", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global DEVICE, DRY_RUN
    if args.precompile_workers is None:
        args.precompile_workers = 0 if args.cpu_dry_run else 12
    if args.cpu_dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
        DEVICE, DRY_RUN = "cpu", True
    elif not torch.cuda.is_available():
        print("bench_bn.py needs a CUDA device", file=sys.stderr)
        return 2
    from bnexp.norm.triton_function import triton_grouped_batch_norm, triton_status

    ok, reason = triton_status()
    if not ok and not DRY_RUN:
        print(f"Triton not usable: {reason}", file=sys.stderr)
        return 2
    from bnexp.norm.functional import torch_grouped_batch_norm

    shapes = parse_shapes(args.shapes) if args.shapes else (QUICK_SHAPES if args.quick else SHAPES)
    inductor_mode = args.inductor or ("none" if args.quick else "subset")
    groups_list = [int(g) for g in args.groups.split(",") if g.strip()]
    start = time.perf_counter()

    import triton

    if DRY_RUN:
        from types import SimpleNamespace

        dev = SimpleNamespace(name="cpu-dry-run", multi_processor_count=0)
    else:
        dev = torch.cuda.get_device_properties(0)
    card = card_slug(dev.name)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    out_path = args.json or os.path.join("results", "bench", f"{card}_{date}.json")
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)

    bw = copy_bandwidth_gbs()
    meta = {"device": dev.name, "card": card, "sm_count": dev.multi_processor_count, "date_utc": date,
            "torch": torch.__version__, "triton": triton.__version__, "copy_bandwidth_GBps": round(bw, 1),
            "timer": "triton.testing.do_bench median, p20 / p80 in *_p20_p80 (L2 flushed before each call; "
                     "one untimed call first, so kernel loading never shortens the timing budget)",
            "floor": "fwd 2 passes over x, fwd+bwd 5 passes, bytes at the input dtype",
            "inductor": inductor_mode}
    print(f"device {dev.name}  torch {torch.__version__}  triton {triton.__version__}")
    print(f"copy bandwidth {bw:.0f} GB/s (read+write, 1 GiB fp32 device-to-device copy)")
    rows = []
    skipped = []
    dtypes = [d for d in args.dtypes.split(",") if d]
    layouts = [l for l in args.layouts.split(",") if l]

    def wants_inductor(si, dname, layout):
        return inductor_mode == "all" or (inductor_mode == "subset" and (si, dname, layout) in INDUCTOR_SUBSET)

    if args.precompile_workers > 0:
        jobs = [(list(shape), d, l, groups_list, wants_inductor(si, d, l), DEVICE)
                for si, shape in enumerate(shapes) for d in dtypes for l in layouts]
        try:
            precompile(jobs, min(args.precompile_workers, len(jobs)))
        except Exception as exc:  # only a speed-up: time anyway
            print(f"precompile failed ({exc!r}); compiling in the timing process", flush=True)
    meta["precompile_s"] = round(time.perf_counter() - start, 1)

    def pct(nbytes, ms):
        return 100.0 * nbytes / (ms * 1e-3) / 1e9 / bw

    def save():
        summary = summarize(rows)
        with open(out_path + ".tmp", "w") as fh:
            json.dump({"meta": meta, "summary": summary, "rows": rows, "skipped": skipped}, fh, indent=1)
        os.replace(out_path + ".tmp", out_path)
        return summary

    for si, shape in enumerate(shapes):
        for dname in dtypes:
            for layout in layouts:
                case = {"shape": list(shape), "dtype": dname, "layout": layout}
                if time.perf_counter() - start > args.budget_s:
                    skipped.append(case)
                    continue
                dtype = DTYPES[dname]
                n, c, h, w = shape
                numel = n * c * h * w
                esize = torch.tensor([], dtype=dtype).element_size()
                x, dy, weight, bias = make_case(shape, dtype, layout)

                def grouped_impl(grouped_batch_norm, groups):
                    """A training-mode call of either backend with its own running buffers."""
                    rm = torch.zeros(groups, device=DEVICE)
                    rv = torch.ones(groups, device=DEVICE)
                    return lambda x, w, b: grouped_batch_norm(
                        x, w, b, rm, rv, None, use_batch_stats=True, momentum=MOMENTUM, eps=EPS,
                        stat_groups=groups)

                def impl_ours(groups):
                    return grouped_impl(triton_grouped_batch_norm, groups)

                def impl_torchview(groups):
                    return grouped_impl(torch_grouped_batch_norm, groups)

                rm_t, rv_t = torch.zeros(c, device=DEVICE), torch.ones(c, device=DEVICE)

                def impl_torch(x, w, b):
                    return F.batch_norm(x, rm_t, rv_t, w, b, True, MOMENTUM, EPS)

                # correctness at this size: our forward vs torch's (fp32 math for both)
                with torch.no_grad():
                    y_ours = impl_ours(c)(x, weight, bias).float()
                    y_ref = F.batch_norm(x.float(), None, None, weight, bias, True, 0.0, EPS)
                    err = ((y_ours - y_ref).norm() / y_ref.norm()).item()
                    same_layout = y_ours.is_contiguous(memory_format=torch.channels_last) == (layout == "nhwc")
                    del y_ours, y_ref

                impls = [("ours", c, impl_ours(c)), ("torch", c, impl_torch)]
                if wants_inductor(si, dname, layout):
                    torch._dynamo.reset()
                    impls.append(("inductor", c, torch.compile(impl_torch, dynamic=False)))
                for g in [g for g in groups_list if c % g == 0]:
                    impls.append((f"ours_G{g}", g, impl_ours(g)))
                    impls.append((f"torchview_G{g}", g, impl_torchview(g)))
                times = {}
                for name, groups, fn in impls:
                    timing_f, timing_fb = timed_pair(fn, x, dy, weight, bias)
                    t_f, t_fb = timing_f.median, timing_fb.median
                    times[name] = (t_f, t_fb)
                    row = dict(case, impl=name, stat_groups=groups, numel=numel,
                               fwd_us=round(t_f * 1e3, 2), fwdbwd_us=round(t_fb * 1e3, 2),
                               fwd_us_p20_p80=timing_f.spread_us(), fwdbwd_us_p20_p80=timing_fb.spread_us(),
                               fwd_pct_bw=round(pct(2 * numel * esize, t_f), 1),
                               fwdbwd_pct_bw=round(pct(5 * numel * esize, t_fb), 1))
                    if name == "ours":
                        row["rel_err_vs_torch"] = err
                        row["output_layout_ok"] = same_layout
                    rows.append(row)
                t_torch = times["torch"]
                for row in rows[-len(impls):]:
                    t = times[row["impl"]]
                    row["speedup_vs_torch_fwd"] = _ratio(t_torch[0], t[0])
                    row["speedup_vs_torch_fwdbwd"] = _ratio(t_torch[1], t[1])
                    if row["impl"].startswith("ours_G"):
                        row["time_vs_ours_perchannel_fwd"] = _ratio(t[0], times["ours"][0])
                        row["time_vs_ours_perchannel_fwdbwd"] = _ratio(t[1], times["ours"][1])
                        tv = times["torchview_G" + row["impl"][len("ours_G"):]]
                        row["speedup_vs_torchview_fwd"] = _ratio(tv[0], t[0])
                        row["speedup_vs_torchview_fwdbwd"] = _ratio(tv[1], t[1])
                print_case(case, times, numel, esize, pct, err, groups_list)
                save()
                del x, dy, weight, bias
                if not DRY_RUN:
                    torch.cuda.empty_cache()

    summary = save()
    print_summary(summary, out_path, skipped)
    return 0


_header_done = False


def print_case(case, times, numel, esize, pct, err, groups_list):
    global _header_done
    if not _header_done:
        cols = ["shape", "dt", "lay", "ours_f", "%bw", "torch_f", "x", "ours_fb", "%bw", "torch_fb", "x",
                "ind_fb"] + [f"G{g}/pc" for g in groups_list] + [f"vsview{g}" for g in groups_list] + ["err"]
        print(" ".join(f"{c:>9}" if i else f"{c:>17}" for i, c in enumerate(cols)))
        _header_done = True
    o_f, o_fb = times["ours"]
    t_f, t_fb = times["torch"]
    ind = times.get("inductor")
    cells = ["x".join(map(str, case["shape"])), case["dtype"], case["layout"],
             f"{o_f * 1e3:.1f}", f"{pct(2 * numel * esize, o_f):.0f}", f"{t_f * 1e3:.1f}", f"{t_f / o_f:.2f}",
             f"{o_fb * 1e3:.1f}", f"{pct(5 * numel * esize, o_fb):.0f}", f"{t_fb * 1e3:.1f}", f"{t_fb / o_fb:.2f}",
             f"{ind[1] * 1e3:.1f}" if ind else "-"]
    cells += [f"{times[f'ours_G{g}'][1] / o_fb:.2f}" if f"ours_G{g}" in times else "-" for g in groups_list]
    cells += [f"{times[f'torchview_G{g}'][1] / times[f'ours_G{g}'][1]:.1f}" if f"ours_G{g}" in times else "-"
              for g in groups_list]
    cells += [f"{err:.1e}"]
    print(" ".join(f"{c:>9}" if i else f"{c:>17}" for i, c in enumerate(cells)), flush=True)


def summarize(rows):
    ours = [r for r in rows if r["impl"] == "ours"]
    if not ours:
        return {}

    def geo(vals):
        if not vals or min(vals) <= 0:
            return None
        return float(f"{math.exp(sum(math.log(v) for v in vals) / len(vals)):.4g}")

    big = [r for r in ours if r["numel"] >= 8 * 1024 * 1024]
    grouped = [r for r in rows if r["impl"].startswith("ours_G")]
    return {
        "cases": len(ours),
        "geomean_speedup_vs_torch_fwdbwd": geo([r["speedup_vs_torch_fwdbwd"] for r in ours]),
        "geomean_speedup_vs_torch_fwd": geo([r["speedup_vs_torch_fwd"] for r in ours]),
        "min_fwd_pct_bw_ge8M": min((r["fwd_pct_bw"] for r in big), default=None),
        "min_fwdbwd_pct_bw_ge8M": min((r["fwdbwd_pct_bw"] for r in big), default=None),
        "max_grouped_over_perchannel_fwd": max((r["time_vs_ours_perchannel_fwd"] for r in grouped), default=None),
        "max_grouped_over_perchannel_fwdbwd": max((r["time_vs_ours_perchannel_fwdbwd"] for r in grouped),
                                                  default=None),
        "geomean_grouped_speedup_vs_torchview_fwdbwd": geo([r["speedup_vs_torchview_fwdbwd"] for r in grouped]),
        "max_rel_err_vs_torch": max(r["rel_err_vs_torch"] for r in ours),
        "all_output_layouts_ok": all(r["output_layout_ok"] for r in ours),
    }


def print_summary(summary, out_path, skipped):
    print("\nsummary:")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    if skipped:
        print(f"  skipped (time budget): {len(skipped)} cases")
    print(f"json: {out_path}")


if __name__ == "__main__":
    sys.exit(main())
