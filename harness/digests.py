"""Content digests of local data files, for cache keys: a stage whose data file changed recomputes, even when the
file kept its path. A digest is remembered by (path, size, mtime, inode) in a small cache file, so a 2 GB corpus is
hashed once, not on every run; any change of those four hashes it again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .config import PluginConfig
from .data import DocumentSource, document_sources
from .files import NotRegularFile, open_regular

#: At most this many files are remembered (the most recently used kept).
MAX_REMEMBERED = 2000
#: Digests computed or read in this process, by (path, size, mtime_ns, inode).
_memo: dict[tuple[str, int, int, int], str] = {}


def default_cache_file() -> Path:
    """``$XDG_CACHE_HOME/harness/file_digests.json`` (``~/.cache`` when unset), the platform's place for caches."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "harness" / "file_digests.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        with os.fdopen(open_regular(path, "digest cache"), "rb") as f:
            data = json.loads(f.read(64 << 20))
    except (OSError, ValueError, NotRegularFile):  # missing or damaged: digests are computed again, nothing lost
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    from .store import atomic_write_json

    try:
        atomic_write_json(path, data)
    except Exception:  # a read-only home or full disk: the digests are only recomputed next time
        pass


def file_sha256(path: Path, cache_file: Path | None = None) -> str:
    """sha256 of the bytes of the regular file ``path``, cached by its size, mtime and inode."""
    real = os.path.realpath(path)
    st = os.stat(real)
    ident = (real, st.st_size, st.st_mtime_ns, st.st_ino)
    if ident in _memo:
        return _memo[ident]
    cache_file = cache_file or default_cache_file()
    cache = _read_cache(cache_file)
    entry = cache.get(real)
    if (isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns
            and entry.get("inode") == st.st_ino and isinstance(entry.get("sha256"), str)):
        _memo[ident] = entry["sha256"]
        return entry["sha256"]
    h = hashlib.sha256()
    with os.fdopen(open_regular(real, "data file"), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    _memo[ident] = digest
    cache.pop(real, None)
    cache[real] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "sha256": digest}
    _write_cache(cache_file, dict(list(cache.items())[-MAX_REMEMBERED:]))
    return digest


def data_digests(config: PluginConfig) -> dict[str, str]:
    """``{path: sha256}`` of every local data file a plugin config reads (through its document sources)."""
    out: dict[str, str] = {}
    for _, source in document_sources(config, ""):
        out.update(_source_digests(source))
    return out


def _source_digests(source: DocumentSource) -> dict[str, str]:
    out = {}
    for path in source.data_files or []:
        try:
            out[str(path)] = file_sha256(Path(path))
        except (OSError, NotRegularFile):  # gone since validation: the stage's own read says so in one line
            out[str(path)] = "(unreadable)"
    return out


def content_key(config: PluginConfig) -> dict[str, Any]:
    """What a stage's cache key holds of a plugin config: its options, plus the content digest of each local data
    file it reads (so an edited file recomputes the stage although its path is unchanged). Options listed in
    ``key_omits_defaults`` count only when set away from their default."""
    key = config.model_dump(mode="json")
    fields = type(config).model_fields
    for name in type(config).key_omits_defaults:
        if getattr(config, name) == fields[name].get_default(call_default_factory=True):
            del key[name]
    digests = data_digests(config)
    if digests:
        key["data_files_sha256"] = digests
    return key
