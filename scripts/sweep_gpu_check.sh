#!/usr/bin/env bash
# The sweep runner and the report on real data (the CIFAR-10 JPEG copy) on one GPU, about 6 minutes:
#   SWEEP_S=360 bash scripts/sweep_gpu_check.sh [more sweep / train overrides]
# It runs correct_bn, shared_bn and no_bn at lr 1.6 (top of the lr_stability grid), 0.4 and 0.05 (seed 0, the
# train.yaml recipe) as 3 workers sharing GPU 0, then the report; logs, CSVs and plots go to $OUT (./gpu_out).
# The archive is read from .gpu/cifar10-jpeg.tar.xz (scripts/gpu_prepare.sh puts it there, with hydra-core for a
# machine that lacks it); allow SWEEP_S plus about 90 s for the whole script.
set -uo pipefail
ROOT=$PWD
OUT=${OUT:-./gpu_out}; mkdir -p "$OUT"
WORK=$(mktemp -d)  # sweep runs, report and the decoded-data cache of this check
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 BNEXP_DATA_DIR="$WORK/data"
[ -d "$ROOT/.gpu/site" ] && export PYTHONPATH="$ROOT/.gpu/site:$PYTHONPATH"
{ date -u; nvidia-smi -L; python3 -c "import sys, torch, triton, hydra; print(sys.version.split()[0], torch.__version__, triton.__version__, hydra.__version__, torch.cuda.is_available())"; } 2>&1 | tee "$OUT/info.txt"
SWEEP_S=${SWEEP_S:-360}
# timeout sends SIGTERM: the sweep then stops its runs and records them, and the report still runs.
timeout -s TERM "$SWEEP_S" python3 -m bnexp.sweep sweep=lr_stability sweep.out_dir="$WORK/sweep" \
  sweep.only_variants=[correct_bn,shared_bn,no_bn] sweep.lrs=[1.6,0.4,0.05] sweep.seeds=[0] \
  sweep.gpus=[0] sweep.workers=3 sweep.timeout_s=240 \
  data=cifar10_folder data.path="$ROOT/.gpu/cifar10-jpeg.tar.xz" "$@" 2>&1 | tr '\r' '\n' | grep -v 'run/s' | tee "$OUT/sweep.log"
echo "sweep exit: ${PIPESTATUS[0]} after ${SECONDS}s" | tee -a "$OUT/sweep.log"
cp "$WORK/sweep/runs.csv" "$OUT/" 2>/dev/null
python3 -m bnexp.report "$WORK/sweep" --out "$WORK/report" 2>&1 | tee -a "$OUT/sweep.log"
cp "$WORK/report/report.md" "$WORK/report/summary.csv" "$WORK/report/acc_vs_lr.png" "$OUT/" 2>/dev/null
cp "$WORK"/report/loss_curves_*.png "$WORK"/report/grad_norm_heatmap_*.png "$OUT/" 2>/dev/null
for d in "$WORK"/sweep/runs/*/; do echo "== $d"; tail -3 "$d/stderr.log"; done > "$OUT/stderr_tails.txt" 2>&1
ls -la "$OUT"
