"""The one owner of a run directory's layout and bookkeeping: where each stage lives, when a stage counts as done,
how its files and per-example records are read back, and who may write the directory.

Layout: ``RUN/stages/<stage id>/`` holds ``stage.json`` (the stage and its cache key, written when it starts),
``records.jsonl`` (per-example records), ``result.json`` and last ``done.json`` (the key, and the sha256 of the
record log as it was when the stage finished). ``RUN/.lock`` (and ``RUN/.locks/`` per stage) keep two runs apart.

A stage is done when ``done.json`` holds its current key, ``result.json`` is a readable result and its record log
still has the checksum it finished with. Every file read back is validated: a damaged one (torn, garbage, the wrong
shape) makes that stage count as not done, so it recomputes or resumes, and is reported with one warning line;
nothing here raises on a damaged file. Every path the runner touches is checked to lie inside the run directory
first, so a name can never make the harness write or delete elsewhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HarnessError

log = logging.getLogger("harness")

RECORDS = "records.jsonl"
#: The records of a previous config of a stage that differed only in its example count (see ``carry_records``).
CARRIED = "carried.jsonl"
_warned: set[str] = set()


def warn_damaged(path: Path, problem: str, consequence: str) -> None:
    """One warning line per damaged file and process (a file read twice is reported once)."""
    key = f"{path}:{problem}"
    if key not in _warned:
        _warned.add(key)
        log.warning("warning: %s is damaged (%s); %s", path, problem, consequence)


def read_json_object(path: Path, required: dict[str, type | tuple[type, ...]] | None = None,
                     consequence: str = "ignored") -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or damaged (not JSON, not an object, a required
    field missing or of the wrong type); damage is reported with one warning line, never raised."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: JSON and UTF-8 decoding errors
        warn_damaged(path, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}", consequence)
        return None
    if not isinstance(data, dict):
        warn_damaged(path, f"a JSON {type(data).__name__}, not an object", consequence)
        return None
    for name, kind in (required or {}).items():
        if not isinstance(data.get(name), kind):
            warn_damaged(path, f"field '{name}' missing or of the wrong type", consequence)
            return None
    return data


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The complete records of a JSONL log and the byte length they fill. Reading stops at the first torn line (a
    killed writer's last, unterminated line) or line that is not a JSON object; what follows is not trusted."""
    records: list[dict[str, Any]] = []
    good_bytes = 0
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return records, 0
    with f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
            except ValueError:
                break
            if not isinstance(record, dict):
                break
            records.append(record)
            good_bytes += len(raw)
    return records, good_bytes


def file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes, None when it does not exist."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        return None
    return h.hexdigest()


@dataclass
class StageState:
    status: str  # done | incomplete | not started
    result: dict[str, Any] | None = None
    #: Why a stage that finished once no longer counts as done (a damaged file), or "".
    damage: str = ""


def is_within(path: Path, root: Path) -> bool:
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return path == root or root in path.parents


class RunDir:
    """A run directory: stage paths, the done check, marker and record reading, and the run's locks."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    # -- paths ---------------------------------------------------------------------------------------------------
    def inside(self, path: Path) -> Path:
        """``path`` (resolved, links followed) after checking it lies inside the run directory."""
        resolved = Path(path).resolve()
        if not is_within(resolved, self.root):
            raise HarnessError(f"{path}: refusing to touch a path outside the run directory {self.root}; fix: use "
                               "entry and model names of letters, digits, '-', '_' and '.' only")
        return resolved

    def stage_dir(self, stage_id: str) -> Path:
        return self.inside(self.root / "stages" / stage_id)

    def clear_stage(self, stage_id: str) -> None:
        """Delete a stage's directory (results of an older config); only ever one inside ``RUN/stages``."""
        sdir = self.stage_dir(stage_id)
        if sdir == self.root / "stages" or not is_within(sdir, self.root / "stages"):
            raise HarnessError(f"{sdir}: not a stage directory of {self.root}; refusing to delete it")
        if sdir.is_symlink():
            sdir.unlink()
        elif sdir.exists():
            shutil.rmtree(sdir)

    def reuse_key(self, stage_id: str) -> str | None:
        """The reuse key in ``stage.json`` (the cache key without the example count), None when it has none."""
        marker = read_json_object(self.stage_dir(stage_id) / "stage.json", {"reuse_key": str})
        return marker["reuse_key"] if marker else None

    # -- reading back --------------------------------------------------------------------------------------------
    def marker_key(self, stage_id: str) -> str | None:
        """The cache key in ``stage.json`` (None: missing or damaged, so the directory is cleared and redone)."""
        marker = read_json_object(self.stage_dir(stage_id) / "stage.json", {"key": str},
                                  "the stage directory is cleared and the stage recomputes")
        return marker["key"] if marker else None

    def damaged_state(self, stage_id: str) -> bool:
        """Whether a resume-state file (``state-*.json``) of the stage is unreadable, so it cannot resume."""
        sdir = self.stage_dir(stage_id)
        return any(read_json_object(path, consequence=f"stage {stage_id} recomputes from the start") is None
                   for path in sorted(sdir.glob("state-*.json")))

    def result(self, stage_id: str) -> dict[str, Any] | None:
        return read_json_object(self.stage_dir(stage_id) / "result.json", {"metrics": dict},
                                f"stage {stage_id} counts as not finished and runs again")

    def state(self, stage_id: str, key: str) -> StageState:
        """Whether the stage with cache key ``key`` is done, with its result; never raises on a damaged file."""
        sdir = self.stage_dir(stage_id)
        if not sdir.is_dir():
            return StageState("not started")
        again = f"stage {stage_id} counts as not finished and runs again"
        if (sdir / "stage.json").exists() and self.marker_key(stage_id) is None:
            return StageState("incomplete", damage="stage.json damaged")
        done = read_json_object(sdir / "done.json", {"key": str}, again)
        if done is None or done["key"] != key:
            return StageState("incomplete", damage="done.json damaged" if (sdir / "done.json").exists()
                              and done is None else "")
        if (sdir / "stage.json").exists() and self.marker_key(stage_id) != key:
            return StageState("incomplete")  # the directory of another config of the stage
        result = self.result(stage_id)
        if result is None:
            return StageState("incomplete", damage="result.json missing or damaged")
        expected = done.get("records_sha256", "")  # absent in markers written before the checksum existed
        if expected != "" and file_digest(sdir / RECORDS) != expected:
            warn_damaged(sdir / RECORDS, "its checksum differs from the one recorded when the stage finished", again)
            return StageState("incomplete", damage="records.jsonl changed since the stage finished")
        return StageState("done", result)

    def is_done(self, stage_id: str, key: str) -> bool:
        return self.state(stage_id, key).status == "done"

    def resolved(self) -> dict[str, Any]:
        """``config.resolved.json`` (the run's suite and planned stages), keeping only well-formed stage entries; when
        the file is damaged, the stages their own ``stage.json`` markers describe. Raises only when this is not a
        run directory at all."""
        path = self.root / "config.resolved.json"
        if not path.exists():
            raise HarnessError(f"{self.root}: no config.resolved.json, so this is not a harness run directory; fix: "
                               "pass the directory that `harness run` or `harness slurm submit` printed (or its --out)")
        data = read_json_object(path, {"stages": list}, "the stages are read from their own stage.json markers")
        if data is None:
            data = {"stages": self.stage_markers()}
        good = [st for st in data["stages"] if _stage_entry(st)]
        if len(good) != len(data["stages"]):
            warn_damaged(path, f"{len(data['stages']) - len(good)} malformed stage entr(ies)", "they are left out")
        return {**data, "stages": good}

    def stage_markers(self) -> list[dict[str, Any]]:
        """The stages as their own ``stage.json`` markers describe them (when ``config.resolved.json`` is damaged)."""
        found = []
        for marker in sorted((self.root / "stages").glob("**/stage.json")):
            if not is_within(marker.resolve(), self.root):
                continue
            data = read_json_object(marker, {"id": str, "key": str, "section": str, "entry": str, "plugin": str,
                                             "model": str}, "the stage is listed by its directory, as damaged")
            if data is None:  # still list the stage (its id is its directory), so status and report name it
                parts = marker.parent.relative_to(self.root / "stages").parts
                data = {"id": "/".join(parts), "key": "(unknown: stage.json damaged)", "deps": [],
                        "section": parts[0], "entry": parts[1] if len(parts) > 1 else "?", "plugin": "?",
                        "model": parts[2] if len(parts) > 2 else "?"}
            found.append(data)
        return found

    def records(self, stage_id: str) -> list[dict[str, Any]]:
        return read_records(self.stage_dir(stage_id) / RECORDS)[0]

    def done_marker(self, stage_id: str, key: str, finished: str) -> dict[str, Any]:
        """What ``done.json`` holds: the key, the time, and the checksum of the record log it finished with."""
        return {"key": key, "finished": finished, "records_sha256": file_digest(self.stage_dir(stage_id) / RECORDS)}

    # -- locks ---------------------------------------------------------------------------------------------------
    @contextmanager
    def lock(self, stage_id: str | None = None) -> Iterator[None]:
        """Hold the run: exclusively for a whole run, or (``stage_id``) shared with other stage jobs plus that
        stage exclusively, so a job array runs stages in parallel but never one stage twice or beside a whole run.
        A second holder gets one line naming the first one's pid and host."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / ".lock", shared=stage_id is not None, what=f"run directory {self.root}"):
            if stage_id is None:
                yield
                return
            flat = stage_id.replace("/", "__")
            locks = self.inside(self.root / ".locks")
            locks.mkdir(exist_ok=True)
            with _locked(self.inside(locks / f"{flat}.lock"), shared=False, what=f"stage {stage_id} of {self.root}"):
                yield


def _stage_entry(st: Any) -> bool:
    """A stage entry as ``Stage.as_dict`` writes it, with an id that stays inside the run."""
    return (isinstance(st, dict) and isinstance(st.get("id"), str) and isinstance(st.get("key"), str)
            and isinstance(st.get("deps", []), list) and ".." not in st["id"].split("/")
            and not st["id"].startswith("/"))


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _locked(path: Path, shared: bool, what: str) -> Iterator[None]:
    """A POSIX record lock (``fcntl.lockf``: held per process, released by the kernel when the holder dies, and
    not inherited by forked workers) on ``path``, which names its holder. Nothing else in the process may open the
    file while it is held (closing any descriptor of it drops the lock)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.lockf(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            who = (f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')})" if holder
                   else "another process")
            raise HarnessError(f"{what} is in use by {who}; fix: wait for that run to finish (or stop it), or pass "
                               "another --out") from None
        previous = _read_holder(fd)
        if (previous and previous.get("host") == socket.gethostname() and isinstance(previous.get("pid"), int)
                and previous["pid"] != os.getpid() and not _pid_alive(previous["pid"]) and not shared):
            log.info("%s: the previous holder (pid %s) is gone; its lock was stale", path, previous["pid"])
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder named in the lock file, read through the locking descriptor: opening and closing the file again
    would release this process's POSIX locks on it."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
