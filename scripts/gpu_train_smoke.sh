#!/usr/bin/env bash
# Short CUDA check of the whole training path (bf16 autocast, channels_last, Triton norm layer, torch.compile).
# For the lent GPU box, which lacks hydra-core: its wheels travel in .whl/ (see README "GPU checks").
set -uo pipefail
OUT="${OUT:-./gpu_out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
status=0
for variant in correct_bn shared_bn grouped_bn no_bn torch_bn; do
  timeout 60 python -m bnexp.train +variant=$variant data=synthetic data.train_size=8192 data.test_size=1024 \
    train.epochs=2 train.batch_size=512 train.log_every=4 "hydra.run.dir=/tmp/gpu_runs/$variant" 2>&1 \
    | tr '\r' '\n' | grep -E "epoch|bnexp.train|Error|error" | tail -4 || status=1
done
timeout 90 python -m bnexp.train +variant=shared_bn data=synthetic data.train_size=8192 data.test_size=1024 \
  train.epochs=2 train.batch_size=512 train.compile=true "hydra.run.dir=/tmp/gpu_runs/compiled" 2>&1 \
  | tr '\r' '\n' | grep -E "epoch|bnexp.train|Error|error|graph" | tail -4 || status=1
python scripts/bench_variants.py --width 1 --batch-size 512 --steps 10 --repeats 3 --torch-backend-too \
  --json "$OUT/variants.json" 2>&1 | tail -12
python - <<'PY'
import json, pathlib
for path in sorted(pathlib.Path('/tmp/gpu_runs').glob('*/summary.json')):
    s = json.loads(path.read_text())
    print(f"{path.parent.name:12s} {s['status']:9s} acc {s['best_test_acc']} img/s {s['images_per_s']} err {s['error']}")
PY
exit $status
