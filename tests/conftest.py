from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "shakespeare"
HARNESS = [sys.executable, "-m", "harness.cli"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: A one-stage suite (perplexity of the tiny model on 6 test documents): what the reliability tests damage and
#: interrupt. ``@DATA@`` is the shipped corpus (``write_suite``).
PERPLEXITY_SUITE = """
name: rel
seeds: [3]
models:
  tiny: {plugin: pythia_tiny}
metrics:
  ppl:
    plugin: perplexity
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 6}
    chunk_documents: 2
    max_length: 64
"""


def train_recipe(steps: int, checkpoint_every: int) -> str:
    """A tiny recovery-training recipe on the shipped corpus, as the inside of a YAML flow mapping (a trainer entry
    adds its plugin, model and options before it)."""
    return (f"data: {{dataset: json, data_files: {DATA}/train.jsonl, split: train, limit: 20}}, seq_len: 64, "
            f"micro_batch: 4, grad_accum: 1, steps: {steps}, lr: 1.0e-3, checkpoint_every: {checkpoint_every}, "
            f"val_data: {{dataset: json, data_files: {DATA}/valid.jsonl, split: train, limit: 2}}, val_blocks: 2")


def write_suite(directory: Path, text: str, name: str = "suite.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).replace("@DATA@", str(DATA)))
    return path


@contextmanager
def pip_installed(package_dir: Path, dist_name: str) -> Iterator[None]:
    """An out-of-tree plugin package installed (editable, no dependencies) into this venv for the block's duration."""
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "-e", str(package_dir)], check=True,
                   capture_output=True, timeout=300)
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", dist_name], check=True, capture_output=True, timeout=300)


@pytest.fixture
def fresh_cli_logger(monkeypatch):
    """`main()` gives the harness logger a handler bound to the stderr of the test that first called it; a later
    test's captured stderr is another stream."""
    import logging

    monkeypatch.setattr(logging.getLogger("harness"), "handlers", [])


def one_line_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; assert exit 2 and exactly one line on stderr, return it."""
    from harness.cli import main

    rc = main(list(argv))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def checkpoint_error_at_validate(directory: Path, capsys, checkpoint: Path) -> str:
    """The one-line error of `harness validate` on a suite that measures the perplexity of ``checkpoint``."""
    path = write_suite(directory, f"""
        models:
          m: {{plugin: hf_causal_lm, path: {checkpoint}}}
        metrics:
          ppl: {{plugin: perplexity, data: {{dataset: json, data_files: @DATA@/test.jsonl}}}}
        """)
    return one_line_error(capsys, "validate", str(path))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def tiny():
    """The shipped tiny default, loaded once per test session."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.api import LoadedModel
    from harness_plugins.models.pythia_tiny import WEIGHTS_DIR

    tok = AutoTokenizer.from_pretrained(WEIGHTS_DIR)
    model = AutoModelForCausalLM.from_pretrained(WEIGHTS_DIR).eval()
    return LoadedModel("tiny", model, tok)
