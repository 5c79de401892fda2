#!/usr/bin/env bash
# The TextAttack bridge's tests, offline, in .venv-ta (scripts/setup_textattack.sh), plus a few core test files that
# show the core works on the transformers 4.x that the extra brings. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv-ta/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest -q -p no:cacheprovider tests/test_textattack.py tests/test_perplexity.py tests/test_suite_validation.py \
  tests/test_store.py "$@"
