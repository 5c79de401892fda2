#!/usr/bin/env bash
# The TextAttack bridge's environment: a second virtual environment, .venv-ta, with harness and its `textattack`
# extra. It is separate because textattack 0.3.11 pulls flair, which needs transformers < 5, while the core venv
# (.venv, scripts/setup.sh) runs transformers 5; the extra pins transformers < 5 itself, so pip resolves in about
# a minute instead of backtracking for many. Idempotent: re-running only fills in what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
pip_quiet() {  # pip, printing its log only when it fails
  local log; log=$(mktemp)
  if ! .venv-ta/bin/python -m pip "$@" >"$log" 2>&1; then grep -v '^WARNING: Location' "$log"; rm -f "$log"; return 1; fi
  rm -f "$log"
}
PY=${PYTHON:-python3}
start=$(date +%s)
[ -x .venv-ta/bin/python ] || "$PY" -m venv .venv-ta
pip_quiet install --upgrade pip
# CPU torch first, pinned through the same constraints file as the core venv.
pip_quiet install -c .ci/constraints.txt torch
pip_quiet install -c .ci/constraints.txt -e ".[textattack,dev]"
# The bridge's offline import (no NLTK download, stop words shipped, cache variables left alone).
HF_HUB_OFFLINE=1 .venv-ta/bin/python -c "
from importlib.metadata import version
from harness_plugins.attacks.textattack_bridge.env import import_textattack
import_textattack()
print('textattack', version('textattack'), 'on transformers', version('transformers'))"
echo ".venv-ta ready in $(( $(date +%s) - start )) s"
