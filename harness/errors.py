"""Errors the user sees: one line that names the file, the key and the fix. The CLI prints them without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HarnessError(Exception):
    """An error caused by the user's input or environment; `str()` is the one line the CLI prints (exit code 2)."""


class ConfigError(HarnessError):
    def __init__(self, file: object, key: str, problem: str, fix: str = "") -> None:
        self.file, self.key, self.problem, self.fix = str(file), key, problem, fix
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(f"{where}{problem}" + (f"; fix: {fix}" if fix else ""))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class NonFiniteLoss(HarnessError):
    """Training or scoring produced NaN/inf; raised so the last good checkpoint stays the newest one."""
