"""How many documents a source yields and how many tokens they hold, without loading any dataset.

Local files (json/jsonl, text, csv, parquet) are read and the ``skip``/``min_chars``/``limit`` of the source applied,
exactly as :func:`harness.data.load_documents` does; their tokens are counted with the model's tokenizer on a sample
when the tokenizer is available offline, else at an assumed number of characters per token. A hub dataset yields
``limit`` documents of an assumed length: a small table of known datasets, or ``--doc-tokens``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...data import DocumentSource
from ...workload import DocumentStats, NoEstimate

#: Characters per token assumed when no tokenizer is at hand (GPT-2-style BPE on English prose).
DEFAULT_CHARS_PER_TOKEN = 4.0
#: Mean tokens per document (GPT-NeoX tokenizer) of hub datasets, rough: the Pile holds ~300B tokens in 211M
#: documents (as its papers report); the uncopyrighted copy drops the book subsets, its longest documents.
KNOWN_DATASETS = {
    "monology/pile-uncopyrighted": 1200.0,
    "EleutherAI/pile": 1400.0,
    "EleutherAI/the_pile_deduplicated": 1400.0,
}
DEFAULT_DOC_TOKENS = 1000.0
#: Characters of documents tokenised to measure tokens per character.
SAMPLE_CHARS = 200_000


def _rows(path: Path, builder: str, text_field: str) -> Iterator[Any]:
    """The text field of every row of a local file, as ``datasets``' builder of that name reads it."""
    if builder == "text":
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n")
    elif builder == "json":
        with open(path, encoding="utf-8") as f:
            head = f.read(1)
            f.seek(0)
            rows = json.load(f) if head == "[" else (json.loads(line) for line in f if line.strip())
            for row in rows:
                yield row.get(text_field) if isinstance(row, dict) else None
    elif builder == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                yield row.get(text_field)
    elif builder == "parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    else:
        raise NoEstimate(f"cannot read local files of builder '{builder}'")


def local_texts(source: DocumentSource) -> list[str]:
    """The documents :func:`harness.data.load_documents` would return, as texts."""
    texts: list[str] = []
    index = -1
    for path in source.data_files or []:
        for text in _rows(Path(path), source.dataset, source.text_field):
            index += 1
            if index < source.skip or not isinstance(text, str) or len(text) < source.min_chars:
                continue
            texts.append(text)
            if source.limit is not None and len(texts) >= source.limit:
                return texts
    return texts


class DocumentCounter:
    """Document statistics per (source, tokenizer), cached; ``doc_tokens`` overrides the hub-dataset assumption."""

    def __init__(self, doc_tokens: float | None = None) -> None:
        self.doc_tokens = doc_tokens
        self._cache: dict[tuple[str, int], DocumentStats] = {}

    def stats(self, source: DocumentSource, tokenizer: Any | None) -> DocumentStats:
        key = (source.model_dump_json(), id(tokenizer))
        if key not in self._cache:
            self._cache[key] = self._measure(source, tokenizer)
        return self._cache[key]

    def _measure(self, source: DocumentSource, tokenizer: Any | None) -> DocumentStats:
        if source.data_files:
            try:
                texts = local_texts(source)
            except (OSError, ValueError, KeyError) as exc:
                raise NoEstimate(f"cannot read {source.describe()} ({type(exc).__name__}: {exc})") from None
            if not texts:
                raise NoEstimate(f"{source.describe()} holds no documents")
            chars = sum(len(t) for t in texts)
            per_token, how = chars_per_token(texts, tokenizer)
            return DocumentStats(len(texts), chars / len(texts) / per_token,
                                 f"{source.describe()}: {len(texts)} documents read, {how}")
        if source.limit is None:
            raise NoEstimate(f"{source.describe()} has no `limit`: the number of documents of a hub dataset is unknown "
                             "here; set `limit:`")
        if self.doc_tokens is not None:
            return DocumentStats(source.limit, self.doc_tokens,
                                 f"{source.dataset}: {self.doc_tokens:,.0f} tokens/document (--doc-tokens)")
        if source.dataset in KNOWN_DATASETS:
            return DocumentStats(source.limit, KNOWN_DATASETS[source.dataset],
                                 f"{source.dataset}: ~{KNOWN_DATASETS[source.dataset]:,.0f} tokens/document "
                                 "(assumed, rough: Pile statistics; --doc-tokens overrides)")
        return DocumentStats(source.limit, DEFAULT_DOC_TOKENS,
                             f"{source.dataset}: {DEFAULT_DOC_TOKENS:,.0f} tokens/document (assumed for an unknown "
                             "dataset; --doc-tokens overrides)")


def chars_per_token(texts: list[str], tokenizer: Any | None) -> tuple[float, str]:
    """Characters per token of ``tokenizer`` on a sample of ``texts`` (or the assumption without a tokenizer)."""
    if tokenizer is None:
        return DEFAULT_CHARS_PER_TOKEN, f"{DEFAULT_CHARS_PER_TOKEN} characters/token assumed (no tokenizer offline)"
    sample, size = [], 0
    for text in texts:
        sample.append(text)
        size += len(text)
        if size >= SAMPLE_CHARS:
            break
    tokens = sum(len(ids) for ids in tokenizer(sample, add_special_tokens=False, verbose=False)["input_ids"])
    ratio = size / max(1, tokens)
    return ratio, f"{ratio:.2f} characters/token measured with the model's tokenizer on {size:,} characters"
