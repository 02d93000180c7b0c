#!/usr/bin/env bash
# Device check of the sweep runner + report on real data (CIFAR-10 JPEG copy), one GPU, about 6 minutes.
# For a GPU machine without hydra/omegaconf: prepare .gpu/ first with `bash scripts/gpu_prepare.sh`, copy it
# beside the checkout there, and allow SWEEP_S + ~90 seconds:
#   SWEEP_S=360 bash scripts/sweep_gpu_check.sh [more sweep/train overrides]
# It runs correct_bn, shared_bn and no_bn at lr 1.6 (top of the lr_stability grid), 0.4 and 0.05 (seed 0, the
# train.yaml recipe) as 3 workers sharing GPU 0, then the report; logs, CSVs and plots land in $OUT.
set -uo pipefail
ROOT=$PWD
export PYTHONPATH=$ROOT/.gpu/site:$ROOT PYTHONUNBUFFERED=1 BNEXP_DATA_DIR=/tmp/bnexp_data
OUT=${OUT:-./gpu_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi -L; python3 -c "import sys, torch, triton, hydra; print(sys.version.split()[0], torch.__version__, triton.__version__, hydra.__version__, torch.cuda.is_available())"; } 2>&1 | tee "$OUT/info.txt"
SWEEP_S=${SWEEP_S:-360}
# timeout sends SIGTERM: the sweep then stops its runs and records them, and the report still runs.
timeout -s TERM "$SWEEP_S" python3 -m bnexp.sweep sweep=lr_stability sweep.out_dir=/tmp/sw \
  sweep.only_variants=[correct_bn,shared_bn,no_bn] sweep.lrs=[1.6,0.4,0.05] sweep.seeds=[0] \
  sweep.gpus=[0] sweep.workers=3 sweep.timeout_s=240 \
  data=cifar10_folder data.path="$ROOT/.gpu/cifar10-jpeg.tar.xz" "$@" 2>&1 | tr '\r' '\n' | grep -v 'run/s' | tee "$OUT/sweep.log"
echo "sweep exit: ${PIPESTATUS[0]} after ${SECONDS}s" | tee -a "$OUT/sweep.log"
cp /tmp/sw/runs.csv "$OUT/" 2>/dev/null
python3 -m bnexp.report /tmp/sw --out /tmp/rep 2>&1 | tee -a "$OUT/sweep.log"
cp /tmp/rep/report.md /tmp/rep/summary.csv /tmp/rep/acc_vs_lr.png "$OUT/" 2>/dev/null
cp /tmp/rep/loss_curves_*.png /tmp/rep/grad_norm_heatmap_*.png "$OUT/" 2>/dev/null
for d in /tmp/sw/runs/*/; do echo "== $d"; tail -3 "$d/stderr.log"; done > "$OUT/stderr_tails.txt" 2>&1
ls -la "$OUT"
