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
#   4. scripts/bn_host_probe.py: host time per call vs kernel time (profile tables in $OUT/profile.log)
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
timeout 150 python -m pytest -q $XDIST -p no:cacheprovider -p no:benchmark tests/test_triton_bn.py 2>&1 | tee "$OUT/pytest_triton.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# ---- 2. LEAD: add the lead's CUDA checks here (keep them short; logs under $OUT, at most 8 files come back) ----
if [ -f tests/test_norm_layer.py ] && [ -z "${SKIP_LEAD:-}" ]; then
  echo "== pytest tests/test_norm_layer.py (t=${SECONDS}s)"
  timeout 60 python -m pytest -q -p no:cacheprovider tests/test_norm_layer.py 2>&1 | tee "$OUT/pytest_lead.log" | tail -8
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if [ -d .gpu/site ] && [ -z "${SKIP_LEAD:-}" ]; then
  echo "== scripts/gpu_train_smoke.sh: every variant through the trainer on CUDA (t=${SECONDS}s)"
  timeout 240 bash scripts/gpu_train_smoke.sh 2>&1 | tail -30
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
# LEAD: end of the lead's section

# ---- 3. benchmark ---------------------------------------------------------------------------------------------
CARD=$(python -c "import torch; w=[v for v in torch.cuda.get_device_name().lower().replace('nvidia','').split() if v]; print(w[0] if w else 'gpu')")
JSON="$OUT/${CARD}_$(date -u +%Y-%m-%d).json"
LEFT=$(( TOTAL_S - SECONDS - 40 ))
if [ "$LEFT" -gt 30 ]; then
  echo "== bench_bn.py, budget ${LEFT}s (t=${SECONDS}s)"
  timeout $(( LEFT + 15 )) python scripts/bench_bn.py --json "$JSON" --budget-s $(( LEFT - 15 )) ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "== bench skipped: only ${LEFT}s left"; status=1
fi

# ---- 4. where the time goes: host time per call (tiny input) and a kernel/host profile -----------------------
if [ $(( TOTAL_S - SECONDS )) -gt 20 ]; then
  echo "== bn_host_probe.py (t=${SECONDS}s)"
  timeout $(( TOTAL_S - SECONDS - 3 )) python scripts/bn_host_probe.py --log "$OUT/profile.log" 2>&1 | grep -v Warning
fi
echo "== gpu_check done in ${SECONDS}s, status $status"
exit $status
