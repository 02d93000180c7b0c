"""The GPU benchmark script's own logic, run on the CPU through its dry-run mode (Triton interpreter, tiny shapes).

The times it prints there mean nothing; what is checked is that every case and implementation gets a row with its
spread, that the ratios and summary are computed from those rows, and that our output matched torch's.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
