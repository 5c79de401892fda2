"""Documents from a ``datasets`` source: a hub dataset (streamed) or local text/jsonl/parquet files.

Shared by metrics, attacks and trainers, so that every stage of a suite reads the same documents the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from .config import ExistingPath, PluginConfig
from .errors import HarnessError

_LOCAL_BUILDERS = {"json", "text", "parquet", "csv"}
_OFFLINE_HELP = ("to run offline, pre-download it where the hub is reachable (`huggingface-cli download --repo-type "
                 "dataset {ds}` or `datasets.load_dataset('{ds}')` on a login node), then set HF_DATASETS_OFFLINE=1 "
                 "and HF_HUB_OFFLINE=1 on the compute nodes, or point `dataset: json` + `data_files:` at a local copy")


class DocumentSource(PluginConfig):
    """Where documents come from. ``dataset`` is a hub id (``monology/pile-uncopyrighted``) or a local builder
    (``json``, ``text``, ``parquet``, ``csv``) together with ``data_files``."""

    dataset: str = "json"
    data_files: list[ExistingPath] | None = None
    subset: str | None = None
    split: str = "train"
    text_field: str = "text"
    id_field: str | None = "id"
    streaming: bool = True
    revision: str | None = None
    #: Documents skipped from the start (e.g. to keep evaluation rows disjoint from training rows).
    skip: int = Field(default=0, ge=0)
    limit: int | None = Field(default=None, ge=1)
    #: Documents with fewer characters than this are dropped (empty rows would score nothing).
    min_chars: int = Field(default=1, ge=0)

    @field_validator("data_files", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Path)) else value

    def describe(self) -> str:
        files = ",".join(p.name for p in self.data_files or [])
        return f"{self.dataset}[{self.split}]" + (f"({files})" if files else "")


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def _open(source: DocumentSource):
    import datasets

    if source.dataset in _LOCAL_BUILDERS:
        if not source.data_files:
            raise HarnessError(f"dataset '{source.dataset}' needs data_files; fix: add `data_files: path/to/file`")
        files = [str(p) for p in source.data_files]
        return datasets.load_dataset(source.dataset, data_files={source.split: files}, split=source.split,
                                     streaming=source.streaming)
    from .hub import hub_reachable, offline_mode

    if not offline_mode() and not hub_reachable():  # fail in seconds, not after minutes of retries
        raise HarnessError(f"cannot load dataset '{source.dataset}' (split '{source.split}'): the Hugging Face hub "
                           "is unreachable; " + _OFFLINE_HELP.format(ds=source.dataset))
    try:
        return datasets.load_dataset(source.dataset, source.subset, split=source.split, streaming=source.streaming,
                                     revision=source.revision)
    except (ConnectionError, OSError, FileNotFoundError, ValueError) as exc:
        if "split" in str(exc).lower() and "available" in str(exc).lower():
            raise HarnessError(f"dataset '{source.dataset}' has no split '{source.split}': {exc}; fix: choose "
                               f"another `split:`") from exc
        raise HarnessError(f"cannot load dataset '{source.dataset}' (split '{source.split}'): {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}; "
                           + _OFFLINE_HELP.format(ds=source.dataset)) from exc


def load_documents(source: DocumentSource) -> list[Document]:
    """The first ``limit`` documents (after ``skip``) of ``source``, in order, with stable ids."""
    rows = _open(source)
    docs: list[Document] = []
    index = -1
    for row in rows:
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
        docs.append(Document(id=str(doc_id) if doc_id is not None else f"doc-{index}", text=text))
        if source.limit is not None and len(docs) >= source.limit:
            break
    if not docs:
        raise HarnessError(f"dataset {source.describe()}: no documents (skip={source.skip}, min_chars="
                           f"{source.min_chars}); fix: check the source and its split")
    return docs
