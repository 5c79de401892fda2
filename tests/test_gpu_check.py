"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check runs on the CPU at miniature sizes and the ratios
land in the results file (the GPU run itself needs a GPU machine)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_step(tmp_path):
    out = tmp_path / "results.txt"
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(out), "--work",
                           str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for step in ("quick suite: ok", "perplexity vs lm-eval: ok", "trainer tokens/s and MFU: ok"):
        assert step in text, text
    assert "gcg vs nanogcg: ok" in text or "gcg vs nanogcg: skipped: no .venv-nanogcg" in text, text
    assert "ratio (ours / lm-eval)" in text and "ratio ours / HF" in text, text
    if "gcg vs nanogcg: ok" in text:
        assert "steps/s ratio (ours / nanoGCG)" in text, text
