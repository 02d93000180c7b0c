#!/usr/bin/env bash
# The GPU check: everything bnexp can only learn on a CUDA machine, in one command, within a time budget.
#   bash scripts/gpu_check.sh          # from the repo root; logs and JSON go to $OUT (default ./gpu_out)
# Needs torch, triton and pytest. What else bnexp needs (hydra-core, hypothesis) comes from .gpu/site when the
# machine lacks it: run scripts/gpu_prepare.sh where bnexp is installed and bring .gpu/ along. Checked against
# torch 2.11 + triton 3.6 and torch 2.14 + triton 3.8 (the version line in $OUT/gpu_info.txt says which ran).
# Environment:
#   GPU_CHECK_TOTAL_S   wall-clock budget in seconds (default 540): sections get fixed shares, the benchmark the rest
#   BENCH_ARGS          extra scripts/bench_bn.py flags, e.g. "--quick" or "--inductor none"
# Sections:
#   1. CUDA tests: the Triton kernels (fp32/fp16/bf16, both layouts, torch.compile), the layer against
#      nn.BatchNorm2d for every option, and the trainer with variant.backend=triton against backend=torch for
#      every variant, channels_last, bf16 autocast and torch.compile (tests/norm/test_backends_in_training.py)
#   2. every variant through `python -m bnexp.train` on CUDA at a real size (scripts/gpu_train_smoke.sh)
#   3. scripts/bench_bn.py: the kernel benchmark, with the time that is left
#   4. scripts/bn_host_probe.py: host time per call against kernel time, if time is left
# The exit status is 0 only when every section that ran passed and none had to be left out.
set -uo pipefail
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu/site ] && export PYTHONPATH="$PWD/.gpu/site:$PYTHONPATH"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the kernels must compile for the GPU, not run in the interpreter
TOTAL_S="${GPU_CHECK_TOTAL_S:-540}"
status=0

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
  python - <<'PY'
import sys, torch, triton
print(f"python {sys.version.split()[0]}  torch {torch.__version__}  triton {triton.__version__}  "
      f"cuda {torch.version.cuda}  device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
PY
} 2>&1 | tee "$OUT/gpu_info.txt"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device; nothing to check here" | tee -a "$OUT/gpu_info.txt"
  exit 2
fi

# ---- 1. CUDA tests ---------------------------------------------------------------------------------------------
TESTS=(tests/norm/test_triton_kernels.py tests/norm/test_norm_layer.py)
if python -c "import hypothesis" 2>/dev/null; then
  TESTS+=(tests/norm/test_norm_options.py)
else
  echo "== left out tests/norm/test_norm_options.py: hypothesis is missing (bring .gpu/ from scripts/gpu_prepare.sh)"
  status=1
fi
if python -c "import hydra, omegaconf" 2>/dev/null; then
  TESTS+=(tests/norm/test_backends_in_training.py)
  HAVE_HYDRA=1
else
  echo "== left out tests/norm/test_backends_in_training.py and the trainer runs: hydra-core is missing (bring .gpu/)"
  HAVE_HYDRA=""
  status=1
fi
XDIST=""
python -c "import xdist" 2>/dev/null && XDIST="-n 8"
echo "== pytest $XDIST ${TESTS[*]} (t=${SECONDS}s)"
timeout 220 python -m pytest -q -ra $XDIST -p no:cacheprovider "${TESTS[@]}" 2>&1 | tee "$OUT/pytest_cuda.log" | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# ---- 2. every variant through the trainer on CUDA -------------------------------------------------------------
if [ -n "$HAVE_HYDRA" ]; then
  echo "== scripts/gpu_train_smoke.sh (t=${SECONDS}s)"
  timeout 200 bash scripts/gpu_train_smoke.sh 2>&1 | tail -30
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

# ---- 3. benchmark ----------------------------------------------------------------------------------------------
CARD=$(python -c "import torch; w=[v for v in torch.cuda.get_device_name().lower().replace('nvidia','').split() if v]; print(w[0] if w else 'gpu')")
JSON="$OUT/${CARD}_$(date -u +%Y-%m-%d).json"
LEFT=$(( TOTAL_S - SECONDS - 40 ))
if [ "$LEFT" -gt 30 ]; then
  echo "== bench_bn.py, budget ${LEFT}s (t=${SECONDS}s)"
  timeout $(( LEFT + 15 )) python scripts/bench_bn.py --json "$JSON" --budget-s $(( LEFT - 15 )) ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "== bench_bn.py left out: only ${LEFT}s of the budget left"; status=1
fi

# ---- 4. where the time goes: host time per call (tiny input) and a kernel/host profile -----------------------
if [ $(( TOTAL_S - SECONDS )) -gt 20 ]; then
  echo "== bn_host_probe.py (t=${SECONDS}s)"
  timeout $(( TOTAL_S - SECONDS - 3 )) python scripts/bn_host_probe.py --log "$OUT/profile.log" 2>&1 | grep -v Warning
fi
echo "== gpu_check done in ${SECONDS}s, status $status"
exit $status
