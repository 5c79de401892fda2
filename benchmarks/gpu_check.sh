#!/usr/bin/env bash
# One GPU check (< 10 minutes on one GPU): the quick suite on cuda in bf16, GCG vs nanoGCG and perplexity vs lm-eval
# on a random-weight Pythia-410M-shaped model, and the training step's tokens/s and MFU at Pythia-410M's shape.
# Prints each ratio and writes them to a file (default: gpu_check_results.txt). --dry-run: the same steps on the CPU
# at miniature sizes (the tests run it).
#   bash benchmarks/gpu_check.sh [--dry-run] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_check.py "$@"
