"""Command-line overrides of a suite: ``harness run SUITE attacks.hotflip.flips=8 seeds=[1,2]``.

Each override is ``dotted.key.path=value``; the value is read as YAML (``8`` an integer, ``[1, 2]`` a list, ``true``
a boolean, ``bfloat16`` a string). Overrides are applied after the mode's (``--mode``) and before validation, so a
wrong key or type is the same one-line error as in the file; the resolved suite and the overrides themselves are
saved in ``config.resolved.json``. Entry names may hold dots (``models.base_1.4b.dtype=float16``): a key path
takes the longest existing key at each level.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


def parse_override(text: str, path: Path) -> tuple[str, Any]:
    """``key.path=value`` as (key path, YAML value), or one ConfigError line."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(path, text, "an override must be `key.path=value`",
                          "e.g. `attacks.hotflip.flips=8` or `seeds=[1,2]` (a suite file is a positional argument "
                          "before them)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(path, key, f"override value {raw!r} is not valid YAML ({problem})",
                          "quote it for the shell, e.g. `key='[1, 2]'`") from None
    return key, value


def _split(node: dict[str, Any], parts: list[str]) -> tuple[str, list[str]]:
    """The key at this level (the longest run of parts that is an existing key, else the first part)."""
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in node:
            return candidate, parts[n:]
    return parts[0], parts[1:]


def apply_overrides(data: dict[str, Any], overrides: list[str], path: Path) -> dict[str, Any]:
    """``data`` (a suite after its mode was merged) with every override set; the input is not modified."""
    out = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text, path)
        node: Any = out
        parts, trail = key.split("."), []
        while True:
            name, parts = _split(node, parts)
            trail.append(name)
            if not parts:
                node[name] = value
                break
            child = node.get(name)
            if child is None:
                child = node[name] = {}
            if not isinstance(child, dict):
                raise ConfigError(path, ".".join(trail), f"override {text!r} goes inside a "
                                  f"{type(child).__name__}, not a mapping", "override the key itself, e.g. "
                                  f"`{'.'.join(trail)}=...`")
            node = child
    return out
