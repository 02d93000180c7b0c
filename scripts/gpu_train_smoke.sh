#!/usr/bin/env bash
# Short CUDA check of the whole training path: every variant through bnexp.train (bf16 autocast, channels_last,
# the Triton norm layer), one torch.compile run, and the per-variant step-speed table (bench_variants.py).
# Needs .gpu/site from scripts/gpu_prepare.sh (hydra is missing on the GPU box). About 3 minutes on an H100/H200.
set -uo pipefail
OUT="${OUT:-./gpu_out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu/site:$PWD" PYTHONUNBUFFERED=1
status=0
# SMOKE_TRAIN replaces the run size, e.g. for a rehearsal on the CPU: SMOKE_TRAIN="data.train_size=256 ..."
read -r -a TRAIN <<< "data=synthetic ${SMOKE_TRAIN:-data.train_size=8192 data.test_size=1024 train.epochs=2 train.batch_size=512 train.log_every=4}"
for variant in correct_bn shared_bn grouped_bn no_bn torch_bn; do
  timeout 90 python -m bnexp.train +variant=$variant "${TRAIN[@]}" "hydra.run.dir=/tmp/gpu_runs/$variant" 2>&1 \
    | tr '\r' '\n' | grep -E "^epoch|bnexp.train|Error|error" | tail -3
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
timeout 150 python -m bnexp.train +variant=shared_bn "${TRAIN[@]}" train.compile=true \
  "hydra.run.dir=/tmp/gpu_runs/shared_bn_compiled" 2>&1 | tr '\r' '\n' | grep -E "^epoch|bnexp.train|Error|error" | tail -3
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
python - <<'PY' 2>&1 | tee "$OUT/train_smoke.txt"
import json, pathlib
for path in sorted(pathlib.Path('/tmp/gpu_runs').glob('*/summary.json')):
    s = json.loads(path.read_text())
    print(f"{path.parent.name:20s} {s['status']:9s} best acc {s['best_test_acc']} img/s {s['images_per_s']} error {s['error']}")
PY
timeout 120 python scripts/bench_variants.py ${SMOKE_BENCH:---width 1 --batch-size 512 --steps 10 --repeats 3} --torch-backend-too \
  --json "$OUT/bench_variants.json" 2>&1 | tail -12 | tee -a "$OUT/train_smoke.txt"
exit $status
