"""Progress bars (rich) for every long loop; quiet when output is not a terminal unless asked."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sized
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
_console = Console(stderr=True)


class Bar:
    """One progress bar. ``set(**fields)`` shows live numbers (loss, success rate, queries...) beside it."""

    def __init__(self, description: str, total: int | None, enabled: bool | None = None) -> None:
        enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=_console, disable=not enabled, transient=False,
        )
        self._task = self._progress.add_task(description, total=total, info="")

    def __enter__(self) -> Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def set(self, **fields: Any) -> None:
        info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self._progress.update(self._task, info=info)


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool | None = None) -> Iterator[T]:
    if total is None and isinstance(items, Sized):
        total = len(items)
    with Bar(description, total, enabled) as bar:
        for item in items:
            yield item
            bar.advance()
