"""The results store: atomic files, append-only record logs and completion markers.

Every file is written to a temporary sibling, fsynced and renamed, so a reader (or a run killed with ``kill -9``)
sees either the old or the new content, never half of it. Per-example records are appended one JSON line at a
time and fsynced, so an interrupted stage can resume after its last complete record; a torn last line is dropped.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import HarnessError
from .files import escape, lstat_kind
from ._engine.rundir import read_records, warn_damaged

#: Write failures that are the filesystem's state, not a bug: reported as one line naming the path.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def write_failed(path: Path, exc: OSError) -> HarnessError:
    """The one line for a write that the filesystem refused (a full disk, a quota, a read-only mount)."""
    return HarnessError(f"{path}: cannot write ({exc.strerror or exc}); fix: free space on that filesystem (or pass "
                        "--out on a larger one) and run the same command again to resume")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


#: mkstemp creates files readable by the owner only; results are meant to be shared like any other file.
_FILE_MODE = _default_file_mode()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        _atomic_write_bytes(path, data)
    except OSError as exc:
        if exc.errno in _FULL:
            raise write_failed(path, exc) from None
        raise


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj))


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``: the cache key of a stage."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class RecordLog:
    """Append-only JSONL of per-example records, durable line by line.

    ``key`` names the field that identifies an example, so a resumed stage can ask :meth:`done` which examples
    are finished and skip them.
    """

    def __init__(self, path: Path, key: str = "id") -> None:
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records = list(self._read_and_repair())

    def _read_and_repair(self) -> Iterator[dict[str, Any]]:
        kind = lstat_kind(self.path)
        if kind is None:
            return
        if kind in ("link", "other"):  # never followed, read or waited on: the stage recomputes its records
            warn_damaged(self.path, "a symbolic link" if kind == "link" else "not a regular file",
                         "it is removed (not followed) and the stage's records are computed again")
            self.path.unlink()
            return
        if kind == "dir":
            raise HarnessError(f"{escape(str(self.path))}: the record log is a directory; fix: remove it, then run "
                               "the same command again")
        records, good_bytes = read_records(self.path)  # a torn write from a killed process is dropped
        if good_bytes != self.path.stat().st_size:
            with os.fdopen(os.open(self.path, os.O_RDWR | os.O_NOFOLLOW), "r+b") as f:
                f.truncate(good_bytes)
                f.flush()
                os.fsync(f.fileno())
        yield from records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._records)

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    def done(self) -> set[Any]:
        return {r.get(self.key) for r in self._records}

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, default=_json_default) + "\n"
        try:
            # O_NOFOLLOW: a link put in the log's place after it was opened is refused, never appended through.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, _FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a part of the line may be written: the next read drops it as a torn line
            if exc.errno in _FULL:
                raise write_failed(self.path, exc) from None
            raise
        self._records.append(json.loads(line))

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.append(r)
