#!/usr/bin/env bash
# Every variant through `python -m bnexp.train` on CUDA at a real size, with the trainer's CUDA defaults (bf16
# autocast, channels_last, the Triton norm layer), one torch.compile run, and the per-variant step-speed table
# (scripts/bench_variants.py). About 3 minutes on an H100 / H200. Part of scripts/gpu_check.sh; alone:
#   bash scripts/gpu_train_smoke.sh     # from the repo root; summaries and the table go to $OUT (./gpu_out)
# SMOKE_TRAIN replaces the run size and SMOKE_BENCH the bench_variants.py flags, e.g. for a rehearsal on the CPU:
#   SMOKE_TRAIN="+preset=tiny device=cpu" SMOKE_BENCH="--steps 2 --repeats 1" bash scripts/gpu_train_smoke.sh
set -uo pipefail
OUT="${OUT:-./gpu_out}"; mkdir -p "$OUT"
RUNS="$OUT/train_runs"; rm -rf "$RUNS"; mkdir -p "$RUNS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu/site ] && export PYTHONPATH="$PWD/.gpu/site:$PYTHONPATH"
export PYTHONUNBUFFERED=1
status=0
read -r -a TRAIN <<< "data=synthetic ${SMOKE_TRAIN:-data.train_size=8192 data.test_size=1024 train.epochs=2 train.batch_size=512 train.log_every=4}"

train_run() {  # train_run <run name> <timeout s> <overrides...>
  local name=$1 limit=$2; shift 2
  timeout "$limit" python -m bnexp.train "$@" "${TRAIN[@]}" "hydra.run.dir=$RUNS/$name" 2>&1 \
    | tr '\r' '\n' | grep -E "^epoch|bnexp.train|Error|error" | tail -3
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
}

for variant in correct_bn shared_bn grouped_bn no_bn torch_bn; do
  train_run "$variant" 90 "+variant=$variant"
done
train_run grouped_bn_g2_affine_per_group 90 +variant=grouped_bn variant.stat_groups=2 variant.affine_per_channel=false
train_run shared_bn_compiled 150 +variant=shared_bn train.compile=true

# every run must have finished (a diverged or failed run exits 0 or is cut by the timeout, so read the summaries)
python - "$RUNS" <<'PY' 2>&1 | tee "$OUT/train_smoke.txt"
import json, pathlib, sys
runs = sorted(pathlib.Path(sys.argv[1]).iterdir())
bad = 0
for run in runs:
    path = run / "summary.json"
    s = json.loads(path.read_text()) if path.is_file() else {"status": "no summary.json"}
    bad += s["status"] != "finished"
    print(f"{run.name:32s} {s['status']:9s} best acc {s.get('best_test_acc')} img/s {s.get('images_per_s')} "
          f"error {s.get('error')}")
sys.exit(1 if bad or len(runs) < 7 else 0)
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
timeout 120 python scripts/bench_variants.py ${SMOKE_BENCH:---width 1 --batch-size 512 --steps 10 --repeats 3} \
  --torch-backend-too --json "$OUT/bench_variants.json" 2>&1 | tail -12 | tee -a "$OUT/train_smoke.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
