"""``--stage`` selections: an exact stage id, a prefix (``train/monotonic``: every seed of it) or a glob
(``attacks/*/tiny/*``, ``train/monotonic*``). A selection that matches nothing is one short line with at most five
suggestions, never the list of every stage."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from pathlib import Path

from ..errors import HarnessError

MAX_SUGGESTIONS = 5
_GLOB = set("*?[")


def _matches(pattern: str, stage_id: str) -> bool:
    if _GLOB & set(pattern):
        return fnmatch.fnmatchcase(stage_id, pattern)
    return stage_id == pattern or stage_id.startswith(pattern.rstrip("/") + "/")


def suggestions(pattern: str, known: Iterable[str]) -> list[str]:
    """Up to five ids or id prefixes (``attacks/hotflip/tiny``) close to ``pattern``, closest first."""
    known = list(known)
    prefixes: list[str] = []
    for stage_id in known:
        parts = stage_id.split("/")
        prefixes += ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    candidates = list(dict.fromkeys(prefixes))
    depth = pattern.count("/") + 1  # prefer candidates as deep as the pattern
    same_depth = [c for c in candidates if c.count("/") + 1 == depth] or candidates
    close = difflib.get_close_matches(pattern, same_depth, n=MAX_SUGGESTIONS, cutoff=0.5)
    if len(close) < MAX_SUGGESTIONS:
        close += [c for c in difflib.get_close_matches(pattern, candidates, n=MAX_SUGGESTIONS, cutoff=0.5)
                  if c not in close]
    return close[:MAX_SUGGESTIONS]


def select_stages(patterns: list[str], known: list[str], suite_path: Path | str) -> list[str]:
    """The stage ids (in graph order) that ``patterns`` select; raises one :class:`HarnessError` line for a pattern
    that selects nothing."""
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [s for s in known if _matches(pattern, s)]
        if not hits:
            close = suggestions(pattern, known)
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise HarnessError(f"{suite_path}: --stage '{pattern}' matches none of the {len(known)} stages{hint}; "
                               "fix: give a stage id, a prefix such as `train/monotonic` (every seed) or a glob such "
                               "as `attacks/*/tiny/*` (`harness plan SUITE` lists the stages)")
        chosen.update(hits)
    return [s for s in known if s in chosen]
