#!/usr/bin/env bash
# Submit a whole suite to SLURM: the same code path as `harness slurm submit` (this is a thin wrapper for people
# who prefer a script). Re-running it on a half-finished run keeps the jobs still queued or running, skips the
# complete stages and submits the rest wired to them.
#
#   slurm/run_all.sh suites/pythia_full.yaml --mode full --profile slurm/my_cluster.yaml [--out RUN_DIR] [--dry-run]
#   harness status RUN_DIR
#
# The Python that runs harness: $PYTHON, else the repository's .venv, else python3 on the PATH.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  exec "$python" -m harness.cli slurm submit --help
fi
exec "$python" -m harness.cli slurm submit "$@"
