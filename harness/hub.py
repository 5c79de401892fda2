"""Cheap checks of the Hugging Face hub before a long load: is it reachable, is a repo in the local cache?

Without them an unreachable hub costs ~45 s of retries and a page of logs before the one-line error.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def datasets_offline() -> bool:
    return offline_mode() or os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hf_home() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(os.environ.get("HF_HOME", default)).expanduser()


def hub_cache_dir() -> Path:
    """The hub cache as the environment names it now (libraries read it once, at import)."""
    return Path(os.environ.get("HF_HUB_CACHE") or _hf_home() / "hub").expanduser()


def datasets_cache_dir() -> Path:
    return Path(os.environ.get("HF_DATASETS_CACHE") or _hf_home() / "datasets").expanduser()


def cached_locally(repo_id: str, filename: str = "config.json", revision: str | None = None,
                   repo_type: str = "model") -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(), revision=revision,
                                   repo_type=repo_type)
    return isinstance(found, str)


def dataset_cached(repo_id: str) -> bool:
    """Whether ``datasets`` can load hub dataset ``repo_id`` offline: it needs the prepared copy a non-streaming
    ``load_dataset`` left in its cache (``<org>___<name>/<config>/<version>/<hash>``)."""
    from datasets.naming import camelcase_to_snakecase

    parts = repo_id.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = datasets_cache_dir() / "___".join(parts)
    return any(p.is_dir() for p in root.glob("*/*/*"))
