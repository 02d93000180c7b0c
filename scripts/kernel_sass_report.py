#!/usr/bin/env python
"""What the compiler made of the Triton BatchNorm kernels for each benchmark case, with no GPU needed.

For every case of scripts/bench_bn.py (shape x dtype x layout x stat_groups) this runs the layer's own host code
(plan, tiles, launch arguments) on CPU tensors, but each launch only compiles: Triton specialises the arguments
exactly as it would for a real launch (integers equal to 1 become constants, multiples of 16 get a divisibility
hint) and builds the cubin for an sm_90 GPU (H100 / H200). The report then reads, from the cubin:
    regs      registers per thread
    local     bytes of local memory per thread (non-zero means spills: slow)
    loads     global load instructions by width (LDG.E.128 = 16 bytes, the widest; LDG.E = 4 bytes)
    stores    global store instructions by width
and the launch itself: grid, tile (BLOCK_M x BLOCK_C), warps. Narrow loads on the big streaming kernels,
or spills, are the static causes of a kernel running under copy bandwidth, and both can be read without a GPU.

The cubin comes from the Triton installed HERE (the GPU box may have another version; the codegen is usually the
same, but say which one was read). Needs only triton's bundled ptxas / cuobjdump / nvdisasm.

    python scripts/kernel_sass_report.py                       # every bench case, table to stdout
    python scripts/kernel_sass_report.py --shapes 512x64x32x32 --md results/bench/sass_sm90.md
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import torch  # noqa: E402

from bench_bn import DTYPES, SHAPES, parse_shapes  # noqa: E402  (the benchmark's cases, exactly)

KERNELS = ["bn_stats_partial_kernel", "bn_stats_finalize_kernel", "bn_normalize_kernel",
           "bn_backward_reduce_kernel", "bn_backward_finalize_kernel", "bn_backward_dx_kernel"]


def install_compile_only_driver(capability: int):
    """Make Triton believe an sm_<capability> CUDA device is current, so kernel.warmup() compiles without one."""
    from triton.backends import DriverBase
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class CompileOnlyDriver(DriverBase):
        def __init__(self):
            pass

        @classmethod
        def is_active(cls):
            return True

        def get_current_target(self):
            return GPUTarget("cuda", capability, 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_device_interface(self):
            raise RuntimeError("compile-only driver: nothing can run")

        def get_benchmarker(self):
            raise RuntimeError("compile-only driver: nothing can run")

        def map_python_to_cpp_type(self, ty):
            return ty

    driver.set_active(CompileOnlyDriver())


class CompilingKernel:
    """Stands in for a @triton.jit kernel: kernel[grid](...) compiles (warmup) and records, launches nothing."""

    def __init__(self, name, jit_function, launches):
        self.name, self.jit_function, self.launches = name, jit_function, launches

    def __getitem__(self, grid):
        def compile_only(*args, **kwargs):
            compiled = self.jit_function.warmup(*args, grid=grid, **kwargs)
            self.launches.append((self.name, tuple(grid), kwargs, compiled))
        return compile_only


def tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


@functools.lru_cache(maxsize=None)  # cases share specialisations: read each cubin once
def read_cubin(cubin: bytes) -> dict:
    """Registers, local memory and global load / store widths of a one-kernel cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as fh:
        fh.write(cubin)
    try:
        usage = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", fh.name], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([tool("nvdisasm"), "-c", fh.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(fh.name)
    return dict(regs=int(re.search(r"REG:(\d+)", usage).group(1)),
                local=int(re.search(r"LOCAL:(\d+)", usage).group(1)),
                loads=collections.Counter(re.findall(r"\b(LDG(?:\.[A-Z0-9_]+)*)", sass)),
                stores=collections.Counter(re.findall(r"\b(STG(?:\.[A-Z0-9_]+)*)", sass)))


def widths(counter: collections.Counter) -> str:
    """'128x6 32x2': instruction count by access width in bits (LDG.E = 32, .64, .128; .U16 etc. = 16)."""
    by_width = collections.Counter()
    for op, count in counter.items():
        match = re.search(r"\.(128|64)\b", op)
        width = match.group(1) if match else ("16" if re.search(r"\.(U16|S16)\b", op) else "32")
        by_width[int(width)] += count
    return " ".join(f"{w}x{n}" for w, n in sorted(by_width.items(), reverse=True)) or "-"


def case_launches(shape, dtype, layout, stat_groups):
    """Run the host code of one training forward + backward; return the recorded (compiled) launches."""
    from bnexp.norm import triton_launch as host

    launches = []
    saved = {name: getattr(host._k, name) for name in KERNELS}
    for name in KERNELS:
        setattr(host._k, name, CompilingKernel(name, saved[name], launches))
    try:
        memory_format = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        x = torch.empty(shape, dtype=dtype, memory_format=memory_format)  # never read: nothing runs
        dy = torch.empty(shape, dtype=dtype, memory_format=memory_format)
        channels = shape[1]
        weight, bias = torch.ones(channels), torch.zeros(channels)
        running_mean, running_var = torch.zeros(stat_groups), torch.ones(stat_groups)
        stats = host._stats_impl(x, running_mean, running_var, None, 0.1, 1e-5, stat_groups)
        host._normalize_impl(x, stats, weight, bias, stat_groups)
        host._backward_impl(dy, x, stats, weight, True, stat_groups)
    finally:
        for name, kernel in saved.items():
            setattr(host._k, name, kernel)
    return launches


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=None, help="comma-separated NxCxHxW list (default: the bench shapes)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--layouts", default="nchw,nhwc")
    ap.add_argument("--groups", default="C,8,1", help="stat_groups per case; C is per-channel")
    ap.add_argument("--sm", type=int, default=90, help="compute capability to compile for (90: H100 / H200)")
    ap.add_argument("--sm-count", type=int, default=132, help="SMs of the card the grid is planned for")
    ap.add_argument("--md", default=None, help="also write the table as markdown here")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: this script compiles real GPU code", file=sys.stderr)
        return 2
    import triton

    install_compile_only_driver(args.sm)
    from bnexp.norm import triton_launch as host

    host._tuning = lambda x: host.cuda_tuning(args.sm_count)  # the plan the layer makes on that card
    shapes = parse_shapes(args.shapes) if args.shapes else SHAPES
    header = ["case", "G", "kernel", "grid", "tile", "warps", "regs", "local", "loads", "stores"]
    lines = [f"sm_{args.sm} cubins from triton {triton.__version__} (torch {torch.__version__}); grid planned for "
             f"{args.sm_count} SMs. loads / stores: instruction count by access width in bits.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    print(lines[0])
    print(f"{'case':>24} {'G':>4} {'kernel':>28} {'grid':>10} {'tile':>8} {'w':>2} {'regs':>4} {'local':>5} "
          f"{'loads':>14} {'stores':>10}")
    spills = []
    for shape in shapes:
        for dname in args.dtypes.split(","):
            for layout in args.layouts.split(","):
                channels = shape[1]
                groups_list = [channels if g == "C" else int(g) for g in args.groups.split(",")]
                for stat_groups in dict.fromkeys(g for g in groups_list if channels % g == 0):
                    case = f"{'x'.join(map(str, shape))} {dname} {layout}"
                    for name, grid, kwargs, compiled in case_launches(shape, DTYPES[dname], layout, stat_groups):
                        info = read_cubin(compiled.asm["cubin"])
                        if "BLOCK_M" in kwargs:
                            tile = f"{kwargs['BLOCK_M']}x{kwargs['BLOCK_C']}"
                        else:
                            tile = f"{kwargs['BLOCK_S']}x{kwargs['BLOCK_CG']}"
                        short = name.replace("bn_", "").replace("_kernel", "")
                        grid_text = "x".join(map(str, grid))
                        row = [case, str(stat_groups), short, grid_text, tile, str(kwargs["num_warps"]),
                               str(info["regs"]), str(info["local"]), widths(info["loads"]), widths(info["stores"])]
                        if info["local"]:
                            spills.append(f"{case} G={stat_groups} {short}")
                        print(f"{row[0]:>24} {row[1]:>4} {row[2]:>28} {row[3]:>10} {row[4]:>8} {row[5]:>2} "
                              f"{row[6]:>4} {row[7]:>5} {row[8]:>14} {row[9]:>10}", flush=True)
                        lines.append("| " + " | ".join(row) + " |")
    print(f"kernels with local memory (spills): {len(spills)}" + (": " + "; ".join(spills) if spills else ""))
    if args.md:
        os.makedirs(os.path.dirname(args.md) or ".", exist_ok=True)
        with open(args.md, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        print(f"markdown: {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
