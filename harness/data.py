"""Documents from a ``datasets`` source: a hub dataset (streamed) or local text/jsonl/parquet files.

Shared by metrics, attacks and trainers, so that every stage of a suite reads the same documents the same way.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from .config import ExistingPath, PluginConfig
from .errors import HarnessError
from .files import escape

log = logging.getLogger("harness")

_LOCAL_BUILDERS = {"json", "text", "parquet", "csv"}
_OFFLINE_HELP = ("to run offline, fetch it where the hub is reachable (a login node): either the files you need "
                 "(`hf download {ds} --repo-type dataset --include '<files>' --local-dir DIR`) and point "
                 "`dataset: json` (or parquet) + `data_files:` at them, or the whole split once with "
                 "`python -c \"import datasets; datasets.load_dataset('{ds}', split='{split}')\"` (same "
                 "HF_DATASETS_CACHE); then set HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 on the compute nodes")


class DocumentSource(PluginConfig):
    """Where documents come from. ``dataset`` is a hub id (``monology/pile-uncopyrighted``) or a local builder
    (``json``, ``text``, ``parquet``, ``csv``) together with ``data_files``."""

    limit_fields = ("limit",)

    #: A hub dataset id, or a local builder (json, text, parquet, csv) reading ``data_files``.
    dataset: str = "json"
    #: Local files (relative to the suite file) for a local builder; one path or a list.
    data_files: list[ExistingPath] | None = None
    #: The dataset's configuration name (``datasets.load_dataset(dataset, subset)``).
    subset: str | None = None
    #: The split to read (local files: the split ``data_files`` are loaded as).
    split: str = "train"
    #: The column holding each document's text.
    text_field: str = "text"
    #: The column holding each document's id (null or missing: its row number).
    id_field: str | None = "id"
    #: Stream the rows instead of downloading the whole dataset first.
    streaming: bool = True
    #: A hub revision of the dataset; null: the default branch.
    revision: str | None = None
    #: Documents skipped from the start (e.g. to keep evaluation rows disjoint from training rows).
    skip: int = Field(default=0, ge=0)
    #: At most this many documents (after ``skip``); null: all.
    limit: int | None = Field(default=None, ge=1)
    #: Documents with fewer characters than this are dropped (empty rows would score nothing).
    min_chars: int = Field(default=1, ge=0)

    @field_validator("data_files", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Path)) else value

    @field_validator("data_files")
    @classmethod
    def _readable(cls, value: list[Path] | None, info: ValidationInfo) -> list[Path] | None:
        for path in value or []:
            check_data_file(path, info.data.get("dataset", "json"))
        return value

    def describe(self) -> str:
        files = ",".join(p.name for p in self.data_files or [])
        return f"{self.dataset}[{self.split}]" + (f"({files})" if files else "")


#: The first line of a JSON Lines file read at validation is at most this long (a document of 64 MiB).
MAX_FIRST_LINE = 64 << 20
#: Compressed files are not looked into (datasets decompresses them while reading).
_COMPRESSED = {".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4"}


def check_data_file(path: Path, builder: str) -> None:
    """Cheap checks of one local data file at validation (a ``ValueError`` with the fix): a regular, non-empty file
    whose start looks like ``builder``'s format (JSON Lines: the first line is a JSON object; parquet: its magic)."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a data file; fix: list the files in it (`data_files: "
                         f"[{path}/part-1.jsonl, ...]`)")
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file; fix: point `data_files` at a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty; fix: point `data_files` at a file with documents")
    if path.suffix in _COMPRESSED or builder not in _LOCAL_BUILDERS:
        return
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if builder == "parquet":
        if not head.startswith(b"PAR1"):
            raise ValueError(f"{path} is not a parquet file (no PAR1 magic); fix: use `dataset: json` or `text` for "
                             "text files, or re-export it as parquet")
        return
    if b"\0" in head:
        raise ValueError(f"{path} is a binary file, not {builder} text; fix: point `data_files` at a "
                         f"{'JSON Lines' if builder == 'json' else builder} file (or use `dataset: parquet`)")
    if builder == "json":
        first = head.split(b"\n", 1)[0]
        if b"\n" not in head and len(head) == 1 << 16:  # a first line longer than the head: read all of it
            with open(path, "rb") as f:
                first = f.readline(MAX_FIRST_LINE)
            if not first.endswith(b"\n") and len(first) == MAX_FIRST_LINE:
                raise ValueError(f"{path}: line 1 is longer than {MAX_FIRST_LINE:,} bytes; fix: write one JSON "
                                 "object per line (JSON Lines) with documents below that size")
        first = first.strip()
        if path.suffix == ".json" and first[:1] in (b"[", b"{"):
            return  # a whole JSON document: datasets reads it; its rows are checked when read
        try:
            row = json.loads(first)
        except ValueError as exc:
            raise ValueError(f"{path}: line 1 is not JSON ({exc}); fix: write one JSON object per line (JSON "
                             "Lines), or use `dataset: text` for plain text") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line 1 is a JSON {type(row).__name__}, not an object; fix: write one JSON "
                             "object per line, e.g. {\"text\": \"...\"}")


def document_sources(value: Any, where: str) -> list[tuple[str, DocumentSource]]:
    """Every :class:`DocumentSource` inside a plugin config (nested configs and lists included), with its key."""
    if isinstance(value, DocumentSource):
        return [(where, value)]
    found: list[tuple[str, DocumentSource]] = []
    if isinstance(value, PluginConfig):
        for name in type(value).model_fields:
            found += document_sources(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found += document_sources(item, f"{where}[{i}]")
    return found


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def _load(source: DocumentSource):
    """The ``datasets`` object of ``source`` (an IterableDataset when streaming)."""
    import datasets

    if source.dataset in _LOCAL_BUILDERS:
        if not source.data_files:
            raise HarnessError(f"dataset '{source.dataset}' needs data_files; fix: add `data_files: path/to/file`")
        files = [str(p) for p in source.data_files]
        return datasets.load_dataset(source.dataset, data_files={source.split: files}, split=source.split,
                                     streaming=source.streaming)
    return datasets.load_dataset(source.dataset, source.subset, split=source.split, streaming=source.streaming,
                                 revision=source.revision)


def _open(source: DocumentSource):
    if source.dataset in _LOCAL_BUILDERS:
        return _load(source)
    from .hub import datasets_offline, hub_reachable, offline_mode

    if not offline_mode() and not hub_reachable():  # fail in seconds, not after minutes of retries
        raise HarnessError(f"cannot load dataset '{source.dataset}' (split '{source.split}'): the Hugging Face hub "
                           "is unreachable; " + _OFFLINE_HELP.format(ds=source.dataset, split=source.split))
    try:
        return _load(source)
    except (ConnectionError, OSError, FileNotFoundError, ValueError) as exc:
        if is_transient(exc) and not datasets_offline():  # retried by the caller (offline, nothing will change)
            raise
        if "split" in str(exc).lower() and "available" in str(exc).lower():
            raise HarnessError(f"dataset '{source.dataset}' has no split '{source.split}': {exc}; fix: choose "
                               f"another `split:`") from exc
        raise HarnessError(f"cannot load dataset '{source.dataset}' (split '{source.split}'): {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}; "
                           + _OFFLINE_HELP.format(ds=source.dataset, split=source.split)) from exc


# -- streaming that survives the network ------------------------------------------------------------------------------
#: A stream that fails mid-way (connection reset, a signed URL expiring with 403, a 5xx) is reopened at the row it
#: reached after waiting RETRY_BASE_S * 2**k seconds (k = failures in a row so far, capped at RETRY_MAX_S), at
#: most STREAM_RETRIES times in a row; rows read in between reset the count.
STREAM_RETRIES = 6
RETRY_BASE_S = 2.0
RETRY_MAX_S = 60.0
#: A streaming dataset's iteration state is saved every this many rows (the resume point after a failure).
STATE_EVERY = 1000
#: HTTP statuses worth another try: forbidden (expired signed URLs), timeout, rate limit, server errors.
TRANSIENT_STATUS = {403, 408, 429, 500, 502, 503, 504}
#: Exception class names (anywhere in the MRO) of dropped connections in requests, urllib3, httpx, aiohttp, fsspec.
TRANSIENT_NAMES = {"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutException", "ProtocolError",
                   "IncompleteRead", "ChunkedEncodingError", "ClientPayloadError", "ServerDisconnectedError",
                   "ClientConnectionError", "ClientOSError", "RemoteProtocolError", "ReadError", "ConnectError",
                   "NetworkError"}


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    for code in (getattr(response, "status_code", None), getattr(exc, "status", None),
                 getattr(exc, "status_code", None)):
        if isinstance(code, int) and 100 <= code < 600:
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) looks like a network hiccup that a retry may get past."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, HarnessError):  # already judged and explained: final
            return False
        status = _http_status(current)
        if status is not None:
            return status in TRANSIENT_STATUS
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        if {c.__name__ for c in type(current).__mro__} & TRANSIENT_NAMES:
            return True
        current = current.__cause__ or current.__context__
    return False


class StreamFailed(Exception):
    """A stream gave up: ``position`` rows were read, then ``error`` (after ``retries`` retries)."""

    def __init__(self, position: int, retries: int, error: BaseException) -> None:
        super().__init__(f"failed at row {position} after {retries} retries: {error}")
        self.position, self.retries, self.error = position, retries, error


def resumable_rows(open_at: Callable[[int], Iterable[Any]], what: str, retries: int = STREAM_RETRIES,
                   base_s: float = RETRY_BASE_S, max_s: float = RETRY_MAX_S,
                   sleep: Callable[[float], None] = time.sleep) -> Iterator[Any]:
    """The rows of a stream, in order, each once. ``open_at(n)`` opens the stream at row ``n``; after a transient
    error the stream is reopened where it stopped, with exponential backoff. Raises :class:`StreamFailed` on a
    permanent error or when the retries run out."""
    position = failures = 0
    while True:
        try:
            for row in open_at(position):
                yield row
                position += 1
                failures = 0
            return
        except Exception as exc:
            if not is_transient(exc) or failures >= retries:
                raise StreamFailed(position, failures, exc) from exc
            delay = min(max_s, base_s * 2 ** failures)
            failures += 1
            log.warning("%s: %s at row %d; retry %d of %d in %.0f s", what, _one_line(exc), position, failures,
                        retries, delay)
            sleep(delay)


class _DatasetStream:
    """Opens a dataset at a row position. A streaming dataset resumes from the last saved iteration state
    (``IterableDataset.state_dict``: the right shard and offset, saved every ``every`` rows) and skips the few rows
    after it, rather than reading everything again from the first row."""

    def __init__(self, source: DocumentSource, every: int | None = None) -> None:
        self.source, self.every = source, every or STATE_EVERY
        #: (rows consumed, the iteration state right after them)
        self.saved: tuple[int, dict[str, Any] | None] = (0, None)

    def __call__(self, position: int) -> Iterator[Any]:
        ds = _open(self.source)
        resumable = hasattr(ds, "state_dict") and hasattr(ds, "load_state_dict")
        start, state = self.saved
        if resumable and state is not None and start <= position:
            ds.load_state_dict(state)
        else:
            start = 0
        index = start
        for row in _iter_rows(ds):
            index += 1  # rows consumed, this one included
            if resumable and index % self.every == 0 and index > self.saved[0]:
                self.saved = (index, ds.state_dict())  # resuming from it yields the row after this one
            if index > position:
                yield row


def _iter_rows(ds: Iterable[Any]) -> Iterator[Any]:
    return iter(ds)


def check_source(source: DocumentSource, where: str) -> None:
    """Cheap pre-flight check that ``source`` can be read from here (nothing is downloaded): local files exist, a hub
    dataset is in the ``datasets`` cache when offline, or else the hub answers. One line with the fix otherwise."""
    if source.dataset in _LOCAL_BUILDERS:
        missing = [str(p) for p in source.data_files or [] if not Path(p).exists()]
        if not source.data_files or missing:
            raise HarnessError(f"{where}: dataset '{source.dataset}' needs existing data_files"
                               f"{' (missing: ' + missing[0] + ')' if missing else ''}; fix: set `data_files:`")
        return
    from .hub import dataset_cached, datasets_offline, hub_reachable

    if dataset_cached(source.dataset):
        return
    if datasets_offline():
        why = "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set and it is not in the datasets cache"
    elif not hub_reachable():
        why = "the Hugging Face hub is unreachable and it is not in the datasets cache"
    else:
        return
    raise HarnessError(f"{where}: cannot read dataset '{source.dataset}' (split '{source.split}'): {why}; "
                       + _OFFLINE_HELP.format(ds=source.dataset, split=source.split))


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}"


def rows_of(source: DocumentSource) -> Iterator[Any]:
    """The rows of ``source``; network failures mid-stream are retried and resume at the same row, and a stream that
    cannot go on raises one line naming the dataset, the split and what to try."""
    try:
        yield from resumable_rows(_DatasetStream(source), f"dataset {source.describe()}", STREAM_RETRIES,
                                  RETRY_BASE_S, RETRY_MAX_S, time.sleep)
    except StreamFailed as failed:
        if isinstance(failed.error, HarnessError):
            raise failed.error from None
        if source.dataset in _LOCAL_BUILDERS and not is_transient(failed.error):
            files = ", ".join(str(p) for p in source.data_files or [])
            raise HarnessError(f"dataset {source.describe()}: cannot read {files} as '{source.dataset}' at row "
                               f"{failed.position} ({_one_line(failed.error)}); fix: repair that file (every row "
                               f"must be valid {source.dataset}) or point `data_files` elsewhere") from failed.error
        after = f" after {failed.retries} retries" if failed.retries else ""
        raise HarnessError(
            f"dataset '{source.dataset}' (split '{source.split}'): the stream failed at row {failed.position}{after} "
            f"({_one_line(failed.error)}); fix: try again later, use a local copy (download it where the hub is "
            f"reachable: `hf download {source.dataset} --repo-type dataset`, then `dataset: json` or "
            "`parquet` with `data_files:`), or another `split:`") from failed.error


def load_documents(source: DocumentSource) -> list[Document]:
    """The first ``limit`` documents (after ``skip``) of ``source``, in order, with stable ids."""
    docs: list[Document] = []
    rows: dict[str, int] = {}
    index = -1
    for row in rows_of(source):
        index += 1
        if index < source.skip:
            continue
        if source.text_field not in row:
            raise HarnessError(f"dataset {source.describe()}: rows have no field '{source.text_field}' (fields: "
                               f"{', '.join(row)}); fix: set `text_field:`")
        text = row[source.text_field]
        if not isinstance(text, str) or len(text) < source.min_chars:
            continue
        doc_id = row.get(source.id_field) if source.id_field else None
        doc = Document(id=str(doc_id) if doc_id is not None else f"doc-{index}", text=text)
        if doc.id in rows:  # records are keyed by id: a duplicate would be skipped as done on resume
            files = ", ".join(str(p) for p in source.data_files or []) or source.dataset
            raise HarnessError(f"{escape(files)}: document id {escape(repr(doc.id))} appears twice (rows "
                               f"{rows[doc.id]} and {index}, field '{source.id_field}'); fix: give every document a "
                               "unique id, or set `id_field: null` to number the documents by row")
        rows[doc.id] = index
        docs.append(doc)
        if source.limit is not None and len(docs) >= source.limit:
            break
    if not docs:
        raise HarnessError(f"dataset {source.describe()}: no documents (skip={source.skip}, min_chars="
                           f"{source.min_chars}); fix: check the source and its split")
    return docs
