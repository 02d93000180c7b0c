#!/usr/bin/env bash
# Prepare, on the CPU machine, what the lent GPU box needs and lacks: pure-Python copies of hydra, omegaconf and
# antlr4 (that box has torch/triton/pytest but no hydra-core), and the CIFAR-10 JPEG archive. Everything goes to
# .gpu/ (git-ignored); name ".gpu" in the device call's carry. Run from the repo root:
#   bash scripts/gpu_prepare.sh
set -euo pipefail
mkdir -p .gpu/site
for module in hydra omegaconf antlr4; do
  source_dir=$(python -c "import $module, os; print(os.path.dirname($module.__file__))")
  rm -rf ".gpu/site/$module" && cp -r "$source_dir" .gpu/site/
done
find .gpu/site -name __pycache__ -prune -exec rm -rf {} +
cp ../shared/data/cifar10-jpeg.tar.xz .gpu/
du -sh .gpu
