#!/usr/bin/env bash
# Prepare, on a machine with bnexp's dev install, what a bare GPU machine (torch, triton and pytest only) needs to
# run scripts/gpu_check.sh and scripts/sweep_gpu_check.sh: pure-Python copies of hydra, omegaconf, antlr4,
# hypothesis and sortedcontainers, and the CIFAR-10 JPEG archive. Everything goes to the git-ignored .gpu/; copy
# it along with the checkout. The GPU scripts put .gpu/site on PYTHONPATH when it exists. From the repo root:
#   bash scripts/gpu_prepare.sh [path/to/cifar10-jpeg.tar.xz]
set -euo pipefail
mkdir -p .gpu/site
for module in hydra omegaconf antlr4 hypothesis sortedcontainers; do
  source_dir=$(python -c "import $module, os; print(os.path.dirname($module.__file__))")
  rm -rf ".gpu/site/$module" && cp -r "$source_dir" .gpu/site/
done
find .gpu/site -name __pycache__ -prune -exec rm -rf {} +
cp "${1:-../shared/data/cifar10-jpeg.tar.xz}" .gpu/   # the archive: first argument, or the usual place
du -sh .gpu
