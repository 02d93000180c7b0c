#!/usr/bin/env bash
# The one prepared script for the lent GPU box (torch 2.11, triton 3.6, python 3.12, pytest(+xdist), numpy,
# matplotlib, tqdm, pyyaml; NO hydra / wandb; nothing installed: PYTHONPATH=.).
#   bash scripts/gpu_check.sh            # from the repo root; logs and JSON go to $OUT (or ./gpu_out)
# env: GPU_CHECK_TOTAL_S (default 285), SKIP_LEAD=1 (skip section 2), BENCH_ARGS (extra bench_bn.py flags,
#      e.g. "--inductor none" or "--quick")
# Budget: sized to end within ~285 s of wall time (run it with timeout_s=300). Steps:
#   1. Triton BatchNorm kernels: tests/test_triton_bn.py on CUDA (fp32/fp16/bf16, both layouts, compile)
#   2. LEAD: place for the lead's own CUDA checks (marked below)
#   3. scripts/bench_bn.py: full benchmark (stops starting new cases when the time budget runs out)
#   4. a kernel-level profile of one case (where the time goes)
set -uo pipefail
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
export PYTHONPATH=.
export PYTHONUNBUFFERED=1
TOTAL_S="${GPU_CHECK_TOTAL_S:-285}"
status=0

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
  python -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/gpu_info.txt"

# ---- 1. kernel correctness on CUDA -------------------------------------------------------------------------
XDIST=""
python -c "import xdist" 2>/dev/null && XDIST="-n 12"
echo "== pytest tests/test_triton_bn.py $XDIST (t=${SECONDS}s)"
timeout 150 python -m pytest -q $XDIST -p no:cacheprovider tests/test_triton_bn.py 2>&1 | tee "$OUT/pytest_triton.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# ---- 2. LEAD: add the lead's CUDA checks here (keep them short; logs under $OUT, at most 8 files come back) ----
if [ -f tests/test_norm_layer.py ] && [ -z "${SKIP_LEAD:-}" ]; then
  echo "== pytest tests/test_norm_layer.py (t=${SECONDS}s)"
  timeout 60 python -m pytest -q -p no:cacheprovider tests/test_norm_layer.py 2>&1 | tee "$OUT/pytest_lead.log" | tail -8
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
# LEAD: end of the lead's section

# ---- 3. benchmark ---------------------------------------------------------------------------------------------
CARD=$(python -c "import torch; w=[v for v in torch.cuda.get_device_name().lower().replace('nvidia','').split() if v]; print(w[0] if w else 'gpu')")
JSON="$OUT/${CARD}_$(date -u +%Y-%m-%d).json"
LEFT=$(( TOTAL_S - SECONDS - 25 ))
if [ "$LEFT" -gt 30 ]; then
  echo "== bench_bn.py, budget ${LEFT}s (t=${SECONDS}s)"
  timeout $(( LEFT + 15 )) python scripts/bench_bn.py --json "$JSON" --budget-s $(( LEFT - 15 )) ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "== bench skipped: only ${LEFT}s left"; status=1
fi

# ---- 4. where the time goes: per-kernel CUDA time for one fwd+bwd -----------------------------------------------
if [ $(( TOTAL_S - SECONDS )) -gt 15 ]; then
timeout $(( TOTAL_S - SECONDS - 3 )) python - <<'EOF' 2>&1 | tee -a "$OUT/bench.log"
import torch
from torch.profiler import profile, ProfilerActivity
from bnexp.norm.triton_function import triton_grouped_batch_norm
for shape, cl in [((512, 64, 32, 32), False), ((512, 64, 32, 32), True)]:
    x = (torch.randn(shape, device="cuda") * 2 + 1)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.rand(shape[1], device="cuda", requires_grad=True); b = torch.randn(shape[1], device="cuda", requires_grad=True)
    rm, rv = torch.zeros(shape[1], device="cuda"), torch.ones(shape[1], device="cuda")
    dy = torch.randn_like(x)
    f = lambda: torch.autograd.grad(triton_grouped_batch_norm(x, w, b, rm, rv, None, use_batch_stats=True, momentum=0.1, eps=1e-5, stat_groups=shape[1]), (x, w, b), dy)
    for _ in range(3): f()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5): f()
        torch.cuda.synchronize()
    print(f"profile {shape} {'nhwc' if cl else 'nchw'} fp32, 5 x fwd+bwd:")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=8))
EOF
fi
echo "== gpu_check done in ${SECONDS}s, status $status"
exit $status
