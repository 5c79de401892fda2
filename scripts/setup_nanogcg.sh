#!/usr/bin/env bash
# The GCG benchmark's peer in its own venv (.venv-nanogcg): nanoGCG 0.3.0 pins transformers <= 4.47.1, which the core
# venv (transformers 5) cannot hold. CPU torch first, pinned, so nanogcg's install does not swap it (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-nanogcg/bin/python ] || "$PY" -m venv .venv-nanogcg
.venv-nanogcg/bin/python -m pip install -q --upgrade pip
.venv-nanogcg/bin/python -m pip install -q -c .ci/constraints.txt torch
.venv-nanogcg/bin/python -m pip install -q -c .ci/constraints.txt nanogcg==0.3.0
.venv-nanogcg/bin/python -c "import nanogcg, transformers; print('nanogcg ready; transformers', transformers.__version__)"
