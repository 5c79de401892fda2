"""`harness run` prints its own progress and results, not the libraries' warnings; `harness -v` shows them."""

from __future__ import annotations

import logging

from harness._engine.logs import NOISY_LOGGERS, configure_logging

from .conftest import run_cli, write_suite

#: Warnings the libraries repeat in every stage of a run (transformers per tokenized document, lm-eval per stage).
NOISE = ("Token indices sequence length is longer than the specified maximum sequence length",
         "`pretrained` model kwarg is not of type `str`")

SUITE = """
    name: quiet
    seeds: [1]
    device: cpu
    models:
      tiny: {plugin: pythia_tiny}
    metrics:
      perplexity:
        data: {dataset: json, data_files: "@DATA@/test.jsonl", split: test, limit: 2}
      lm_eval:
        tasks: [shakespeare_next_line]
        limit: 1
        bootstrap_iters: 0
    """


def test_run_stderr_has_no_library_noise_and_verbose_shows_it(tmp_path):
    suite = write_suite(tmp_path, SUITE)
    quiet = run_cli("run", str(suite), "--out", str(tmp_path / "quiet"), "--skip-preflight")
    assert quiet.returncode == 0, quiet.stderr
    assert "done  metrics/perplexity/tiny" in quiet.stderr and "done  metrics/lm_eval/tiny" in quiet.stderr
    assert [line for line in NOISE if line in quiet.stderr] == []
    # the same run with -v: the warnings were there to hide (so the check above can fail)
    loud = run_cli("-v", "run", str(suite), "--out", str(tmp_path / "loud"), "--skip-preflight")
    assert loud.returncode == 0, loud.stderr
    assert [line for line in NOISE if line in loud.stderr] == list(NOISE)


def test_logging_setup_sets_the_noisy_loggers_levels():
    saved = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    try:
        configure_logging(verbose=False)
        assert all(logging.getLogger(name).level == logging.ERROR for name in NOISY_LOGGERS)
        assert logging.getLogger("harness").level == logging.WARNING
        configure_logging(verbose=True)
        assert all(logging.getLogger(name).level == logging.NOTSET for name in NOISY_LOGGERS)
        assert logging.getLogger("harness").level == logging.INFO
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
