"""The benchmark scripts' own logic on the CPU: the GPU benchmark through its dry-run mode (Triton interpreter, tiny
shapes), the training benchmark at a tiny size.

The times it prints there mean nothing; what is checked is that every case and implementation gets a row with its
spread, that the ratios and summary are computed from those rows, and that our output matched torch's.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_bench_bn_dry_run_writes_every_case(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_bn.py"), "--cpu-dry-run", "--shapes", "2x4x3x3",
         "--dtypes", "fp32", "--layouts", "nchw,nhwc", "--inductor", "none", "--groups", "1,2", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    impls = {"ours", "torch", "ours_G1", "torchview_G1", "ours_G2", "torchview_G2"}
    for layout in ("nchw", "nhwc"):
        assert {r["impl"] for r in rows if r["layout"] == layout} == impls
    for row in rows:
        low, high = row["fwdbwd_us_p20_p80"]
        assert 0 < low <= row["fwdbwd_us"] <= high
        assert row["speedup_vs_torch_fwdbwd"] > 0  # ratios keep significant digits, never rounded to 0
    by_key = {(r["layout"], r["impl"]): r for r in rows}
    for layout in ("nchw", "nhwc"):
        ours, torch_row = by_key[(layout, "ours")], by_key[(layout, "torch")]
        assert math.isclose(ours["speedup_vs_torch_fwdbwd"], torch_row["fwdbwd_us"] / ours["fwdbwd_us"], rel_tol=2e-3)
        assert ours["rel_err_vs_torch"] < 1e-5 and ours["output_layout_ok"]
        grouped = by_key[(layout, "ours_G1")]
        assert math.isclose(grouped["time_vs_ours_perchannel_fwdbwd"], grouped["fwdbwd_us"] / ours["fwdbwd_us"],
                            rel_tol=2e-3)
    speedups = [by_key[(layout, "ours")]["speedup_vs_torch_fwdbwd"] for layout in ("nchw", "nhwc")]
    assert math.isclose(report["summary"]["geomean_speedup_vs_torch_fwdbwd"], math.sqrt(speedups[0] * speedups[1]),
                        rel_tol=2e-3)
    assert report["summary"]["cases"] == 2 and report["summary"]["all_output_layouts_ok"]


@pytest.mark.slow
def test_kernel_sass_report_compiles_for_sm90_without_a_gpu(tmp_path):
    """The static report compiles every kernel of one forward + backward for an H100 and reads the cubins.

    On shapes whose rows are 16-byte aligned, the four streaming kernels must read x (and dy) with 16-byte
    loads and must not spill: a change that loses either would cost bandwidth on every GPU run.
    """
    out = tmp_path / "sass.md"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "kernel_sass_report.py"), "--shapes", "8x16x4x4", "--dtypes", "fp32",
         "--groups", "C", "--md", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith("| 8x16x4x4")]
    kernels_by_layout = {}
    for case, _groups, kernel, _grid, _tile, _warps, regs, local, loads, _stores in rows:
        kernels_by_layout.setdefault(case.split()[-1], set()).add(kernel)
        assert int(regs) > 0 and int(local) == 0, (case, kernel, local)
        if kernel in ("stats_partial", "normalize", "backward_reduce", "backward_dx"):
            assert "128x" in loads, (case, kernel, loads)
    streaming_and_finalize = {"stats_partial", "stats_finalize", "normalize", "backward_reduce",
                              "backward_finalize", "backward_dx"}
    assert kernels_by_layout == {"nchw": streaming_and_finalize, "nhwc": streaming_and_finalize}


@pytest.mark.slow
def test_bench_train_times_a_sharpness_step_beside_a_plain_one():
    """The training benchmark's sharpness arm runs the real measurement (its Lanczos steps are reported) and
    prints its ratios; the times themselves mean nothing here."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_train.py"), "--width", "0.125", "--batch-size", "8",
         "--blocks", "1", "--warmup", "1", "--every", "2", "--log-every", "2", "--sharpness-steps", "2",
         "--sharpness-repeats", "1", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Lanczos steps taken [2] of at most 2" in proc.stdout
    assert "sharpness / plain step wall-time ratio:" in proc.stdout
    assert "sharpness / plain step process-CPU-time ratio:" in proc.stdout
