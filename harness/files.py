"""Opening the user's files and the run's own files safely: only regular files are read (a FIFO would block the
reader forever, a device like ``/dev/zero`` never ends), size limits count the bytes actually read (``stat`` says 0
for a link to ``/dev/zero``), a file inside a run is never reached through a symbolic link, and control characters
from names and arguments are escaped before they reach the terminal.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from pathlib import Path

from .errors import HarnessError


class NotRegularFile(HarnessError):
    """The path is a FIFO, a device, a socket or a directory (or, opened with ``nofollow``, a symbolic link)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        #: What the path is instead ("a FIFO (named pipe)", "a symbolic link", ...).
        self.kind = kind


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], what: str = "file", nofollow: bool = False) -> int:
    """A read-only descriptor of ``path`` after checking it is a regular file (``FileNotFoundError`` when it does not
    exist, :class:`NotRegularFile` with the fix otherwise). ``O_NONBLOCK`` makes opening a FIFO return at once, so the
    check runs before any read could block; ``nofollow`` refuses a symbolic link as the last component."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and nofollow:
            raise NotRegularFile(f"{escape(str(path))}: {what} is a symbolic link, which is never followed inside a "
                                 "run; fix: remove the link", "a symbolic link") from None
        if exc.errno == errno.ENXIO:  # a socket
            raise NotRegularFile(f"{escape(str(path))}: {what} is a socket, not a regular file; fix: point it at a "
                                 "regular file", "a socket") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{escape(str(path))}: {what} is {_kind(mode)}, not a regular file; fix: point it at "
                                 "a regular file", _kind(mode))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str], what: str = "file", limit: int | None = None,
                 nofollow: bool = False) -> bytes:
    """The bytes of a regular file, refusing (one line) a special file, or a file that holds more than ``limit``
    bytes when read (counted on the bytes read, not on ``stat``)."""
    fd = open_regular(path, what, nofollow)
    with os.fdopen(fd, "rb") as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise HarnessError(f"{escape(str(path))}: {what} holds more than {limit:,} bytes (the limit); fix: point it "
                           "at a smaller file")
    return data


def lstat_kind(path: Path) -> str | None:
    """What ``path`` itself is without following a link: ``link``, ``dir``, ``file``, ``other``; None if absent."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control(text: str) -> bool:
    return bool(_CONTROL.search(text))


def escape(text: str) -> str:
    """``text`` with control characters (newlines, terminal escapes) written as ``\\n``, ``\\x1b``...: a message
    that quotes a user's name or argument stays one line and cannot drive the terminal."""
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return _CONTROL.sub(lambda m: named.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                                            else f"\\u{ord(m.group()):04x}"), text)
