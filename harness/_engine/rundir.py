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

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HarnessError
from ..files import NotRegularFile, escape, lstat_kind, open_regular, read_regular

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
        log.warning("warning: %s is damaged (%s); %s", escape(str(path)), escape(problem), consequence)


def read_json_object(path: Path, required: dict[str, type | tuple[type, ...]] | None = None,
                     consequence: str = "ignored") -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or damaged (not JSON, not an object, a required
    field missing or of the wrong type); damage is reported with one warning line, never raised."""
    try:
        data = json.loads(read_regular(path, nofollow=True))
    except FileNotFoundError:
        return None
    except NotRegularFile:
        warn_damaged(path, f"{_what(path)}, not a regular file", consequence)
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
    killed writer's last, unterminated line) or line that is not a JSON object; what follows is not trusted. A log
    that is not a regular file (a symbolic link, a FIFO) holds no records: it is never followed or waited on."""
    records: list[dict[str, Any]] = []
    good_bytes = 0
    try:
        f = os.fdopen(open_regular(path, "record log", nofollow=True), "rb")
    except (FileNotFoundError, NotRegularFile):
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
    """sha256 of a file's bytes, None when it does not exist; a symbolic link or special file (never followed or
    read) gets a digest no file has, so it never matches a recorded one."""
    h = hashlib.sha256()
    try:
        with os.fdopen(open_regular(path, nofollow=True), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        return None
    except NotRegularFile:
        return "(not a regular file)"
    return h.hexdigest()


def _what(path: Path) -> str:
    kind = lstat_kind(path)
    return {"link": "a symbolic link", "dir": "a directory", "other": "a special file"}.get(kind or "", "not a file")


def links_below(directory: Path) -> list[Path]:
    """Every symbolic link inside ``directory`` (not followed), in walk order."""
    found = []
    for top, dirs, files in os.walk(directory):  # os.walk does not descend into links to directories
        found += [Path(top) / name for name in dirs + files if os.path.islink(os.path.join(top, name))]
    return found


#: A temporary sibling of an atomic write (``.NAME.XXXXXXXX.tmp``, see store.atomic_write_bytes).
_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


def wait_for_rank0(ready: Callable[[], bool], path: Path, rank: int, what: str, wait_s: float,
                   poll_s: float = 0.05) -> None:
    """Wait until ``ready()``: rank 0 has written ``path`` (the other ranks of a launcher never write the run's
    files: rank 0 holds the run). One line naming ``path`` after ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while not ready():
        if time.monotonic() > deadline:
            raise HarnessError(f"{path}: rank {rank} waited {wait_s:.0f} s for rank 0 to {what}; fix: check rank 0's "
                               "log for its error, then rerun")
        time.sleep(poll_s)


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
        """``path`` (absolute) after checking that it lies inside the run directory and that nothing on it below the
        run directory is a symbolic link: a link is never followed (it could lead anywhere), it is refused."""
        absolute = Path(os.path.abspath(path))
        if not is_within(absolute, self.root):
            raise HarnessError(f"{escape(str(path))}: refusing to touch a path outside the run directory {self.root}; "
                               "fix: use entry and model names of letters, digits, '-', '_' and '.' only")
        current = self.root
        for part in absolute.relative_to(self.root).parts:
            current = current / part
            kind = lstat_kind(current)
            if kind is None:
                break
            if kind == "link":
                raise HarnessError(f"{escape(str(current))} is a symbolic link inside the run directory {self.root}; "
                                   "refusing to follow it (it could lead outside the run directory); fix: remove the "
                                   "link (the run recreates what belongs there)")
        return absolute

    def real_dir(self, path: Path) -> Path:
        """The directory ``path`` inside the run, created if missing; one that is a symbolic link is a damaged entry:
        the link itself is removed (never followed) with one warning line and a real directory made in its place."""
        path = Path(os.path.abspath(path))
        if lstat_kind(path) == "link":
            warn_damaged(path, "a symbolic link", "the link is removed (never followed) and the directory recreated")
            path.unlink()
        path = self.inside(path)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove_links(self, directory: Path, consequence: str) -> None:
        """Remove every symbolic link inside ``directory`` (the links, never what they point to), each a damaged
        entry with one warning line, so nothing later writes, reads or deletes through one."""
        for link in links_below(self.inside(directory)):
            warn_damaged(link, "a symbolic link", consequence)
            link.unlink()

    def remove_temporaries(self) -> int:
        """Delete the temporary files that atomic writes of a killed process left behind (``.NAME.XXXXXXXX.tmp``);
        only while holding the run exclusively, so no living writer owns one. Returns how many went."""
        removed = 0
        for top, _dirs, files in os.walk(self.root):
            for name in files:
                path = Path(top) / name
                if _TEMPORARY.fullmatch(name) and lstat_kind(path) == "file":
                    path.unlink()
                    removed += 1
        if removed:
            log.info("%s: removed %d temporary file(s) left by an interrupted write", self.root, removed)
        return removed

    def stage_dir(self, stage_id: str) -> Path:
        return self.inside(self.root / "stages" / stage_id)

    def clear_stage(self, stage_id: str) -> None:
        """Delete a stage's directory (results of an older config); only ever one inside ``RUN/stages``."""
        sdir = self.stage_dir(stage_id)
        if sdir == self.root / "stages" or not is_within(sdir, self.root / "stages"):
            raise HarnessError(f"{sdir}: not a stage directory of {self.root}; refusing to delete it")
        if sdir.exists():
            shutil.rmtree(sdir)  # never follows a link inside: it removes the link itself

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
        links = links_below(sdir)
        if links:
            warn_damaged(links[0], "a symbolic link inside the stage directory", again)
            return StageState("incomplete", damage="a symbolic link inside the stage directory")
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


#: What a run directory holds before ``config.resolved.json`` is written (the lock, the pre-flight record, jobs).
_EARLY_ENTRIES = {".lock", ".locks", "preflight.json", "stages", "slurm"}


def check_run_target(root: Path, suite_name: str, force: bool = False) -> None:
    """Refuse, in one line, to use ``root`` as the run directory of suite ``suite_name`` when it holds something
    else: another suite's run (whose summary and report this run would overwrite), or files that are not a harness
    run at all (the user's own, in a directory given as --out by mistake). ``force`` skips the check."""
    root = Path(root)
    if force or lstat_kind(root) != "dir":
        return
    entries = {p.name for p in root.iterdir()}
    if not entries:
        return
    if "config.resolved.json" not in entries:
        if entries <= _EARLY_ENTRIES:
            return
        shown = ", ".join(sorted(entries)[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise HarnessError(f"{escape(str(root))}: not a harness run directory (it holds {escape(shown)}), so its "
                           "files could be overwritten; fix: pass an empty or new --out, or --force to use it anyway")
    resolved = read_json_object(root / "config.resolved.json", consequence="the run's suite is not known")
    suite = resolved.get("suite") if resolved else None
    other = (resolved or {}).get("suite_name") or (suite.get("name") if isinstance(suite, dict) else None)
    if isinstance(other, str) and other != suite_name:
        raise HarnessError(f"{escape(str(root))}: holds a run of suite '{escape(other)}', not '{suite_name}'; its "
                           "results and report would be overwritten; fix: pass another --out (each suite its own run "
                           "directory), or --force to reuse it")


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
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EACCES, errno.EROFS):
            kind = {"link": "a symbolic link", "dir": "a directory"}.get(lstat_kind(path) or "", "unusable")
            fix = ("remove it (the run recreates it)" if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO)
                   else "make the run directory writable, or pass another --out")
            raise HarnessError(f"{escape(str(path))}: the lock file of {what} is {kind} ({exc.strerror}); it is never "
                               f"followed or replaced; fix: {fix}") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device opened without following a link
        os.close(fd)
        raise HarnessError(f"{escape(str(path))}: the lock file of {what} is not a regular file; fix: remove it (the "
                           "run recreates it)")
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
