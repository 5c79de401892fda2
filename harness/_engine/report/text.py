"""How the report writes an effect and its interval, in one place: the text summary, the HTML page, the answer
table and the study's write-up all print ``+12.3% [+4.0%, +20.1%]`` the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def pct(value: float) -> str:
    """A signed percentage with one decimal: ``+12.3%``."""
    return f"{value:+.1%}"


def signed(value: float) -> str:
    """A signed number with four significant digits (an absolute difference): ``-0.0123``."""
    return f"{value:+.4g}"


def interval(ci: Sequence[float] | None, fmt: Callable[[float], str] = pct, missing: str = "") -> str:
    """``[low, high]`` written with ``fmt``, or ``missing`` when there is no interval."""
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else missing
