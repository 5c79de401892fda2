"""What a command prints besides its own output: harness's log lines, and the libraries' warnings only with ``-v``.

A run's progress and results are the harness's to print. The libraries it drives repeat warnings that say nothing
about the run: transformers' "Token indices sequence length is longer than the specified maximum sequence length"
each time a scorer tokenizes a whole document before cutting it into windows, lm-eval's page per task (custom
datasets, default aggregations, "`pretrained` model kwarg is not of type `str`" for the in-memory model it is
handed on purpose). Their loggers are set to errors only here, once, by the command line; ``harness -v`` leaves
them at their own levels, so every warning shows.
"""

from __future__ import annotations

import logging

#: Library loggers whose warnings are noise in a harness run (errors always show).
NOISY_LOGGERS = (
    "transformers.tokenization_utils_base",  # "Token indices sequence length is longer than ..." per document
    "lm_eval",  # per-task and per-model warnings of lm-evaluation-harness
)


def configure_logging(verbose: bool) -> None:
    """harness's own logger (info with ``verbose``, else warnings) and the noisy libraries' (their own levels with
    ``verbose``, else errors only). Levels are set on the loggers, before or after the libraries are imported:
    transformers configures only its root logger, lm-eval none unless asked."""
    logger = logging.getLogger("harness")  # only our handler on our logger: libraries keep theirs (no duplicates)
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
