"""Importing TextAttack offline, and keeping its components off the network.

``import textattack`` has three side effects that break an offline machine or the rest of the process:

1. On its first import it calls ``nltk.download`` for six corpora (a network attempt per corpus) unless a marker file
   ``post_install_check_3`` exists in its cache directory; it writes the marker even when the downloads failed.
2. It then builds ``StopwordModification()`` at import time, which reads NLTK's ``stopwords`` corpus and crashes
   when the corpus is missing. We ship an English stop-word list (scikit-learn's ``ENGLISH_STOP_WORDS``, BSD-3,
   318 words, one a line, as NLTK's corpus reader expects) in ``nltk_data/corpora/stopwords/english`` and append
   that directory to NLTK's search path, after the user's own NLTK data, which wins when present.
3. With ``TA_CACHE_DIR`` set, the import overwrites ``HF_HOME``, ``XDG_CACHE_HOME``, ``TFHUB_CACHE_DIR`` and
   ``PYTORCH_TRANSFORMERS_CACHE`` (and it always sets ``TOKENIZERS_PARALLELISM``). The Hugging Face libraries read
   their cache variables when they are imported, so they are imported first (from the user's environment) and
   every variable TextAttack touched is restored afterwards.

:func:`import_textattack` does all three in that order; every module of the bridge that needs ``textattack``
calls it before importing from it. Components that need downloads (word embeddings, WordNet, flair, USE, masked
LMs) are built and run under :func:`no_network`: an attempt to connect fails at once instead of waiting on a
timeout, and the bridge turns it into a one-line :class:`harness.HarnessError`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from harness import HarnessError, restored_environ

INSTALL_HINT = "pip install 'harness[textattack]'"
#: NLTK data shipped with the bridge (only the English stop-word list).
NLTK_DATA = Path(__file__).parent / "nltk_data"
#: The file whose presence tells TextAttack that its post-install downloads ran (textattack/shared/utils/install.py).
POST_INSTALL_MARKER = "post_install_check_3"
#: Environment variables ``import textattack`` may overwrite (``set_cache_dir``) or set.
_TOUCHED_BY_IMPORT = ("TFHUB_CACHE_DIR", "PYTORCH_TRANSFORMERS_CACHE", "HF_HOME", "XDG_CACHE_HOME",
                      "TOKENIZERS_PARALLELISM")


def textattack_installed() -> bool:
    """Whether the extra is installed (without importing it: the import costs seconds)."""
    return importlib.util.find_spec("textattack") is not None


def textattack_cache_dir() -> Path:
    """The directory TextAttack itself uses: ``$TA_CACHE_DIR`` or ``~/.cache/textattack`` (its own default), so
    that resources a user downloaded with TextAttack (word embeddings, ...) are found."""
    return Path(os.environ.get("TA_CACHE_DIR") or "~/.cache/textattack").expanduser()


def import_textattack() -> ModuleType:
    """``import textattack`` offline, without a network attempt and without changing the process's cache variables."""
    if "textattack" in sys.modules:
        return sys.modules["textattack"]
    if not textattack_installed():
        raise HarnessError(f"the TextAttack bridge needs the optional TextAttack extra; fix: {INSTALL_HINT} (into a "
                           "venv with transformers < 5, see scripts/setup_textattack.sh)")
    # 1. Libraries whose cache locations must come from the user's environment are imported before TextAttack can
    #    overwrite it (no-ops when the harness imported them already).
    import datasets  # noqa: F401
    import huggingface_hub  # noqa: F401
    import nltk
    import transformers  # noqa: F401

    # 2. Stop words for StopwordModification(), which TextAttack builds at import time.
    if str(NLTK_DATA) not in nltk.data.path:
        nltk.data.path.append(str(NLTK_DATA))
    # 3. The post-install marker: without it the import calls nltk.download six times.
    cache = textattack_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / POST_INSTALL_MARKER).touch()
    # 4. Import, then put back every variable the import overwrote.
    with restored_environ(_TOUCHED_BY_IMPORT), no_network("import textattack"):
        import textattack
    # TextAttack logs at INFO level through its own logger and handler (a line per goal function built...).
    textattack.shared.utils.logger.setLevel(logging.WARNING)
    return textattack


#: Module attributes that put the Hugging Face clients in offline mode.
_OFFLINE_FLAGS = (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("transformers.utils.hub", "_is_offline_mode"))


class NetworkBlocked(OSError):
    """A TextAttack component tried to reach the network while downloads are off."""


@contextmanager
def no_network(what: str) -> Iterator[None]:
    """Make every connection attempt (and name lookup) fail at once with :class:`NetworkBlocked` naming ``what``.

    Libraries that retry on ``OSError`` (requests, huggingface_hub, nltk) fail fast instead of waiting on timeouts;
    files already on disk (a pre-downloaded embedding, a cached model) still load.
    """
    saved = socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo

    def refuse(*args, **kwargs):
        raise NetworkBlocked(f"{what} tried to reach the network (downloads are off)")

    def refuse_inet(original):
        def connect(sock: socket.socket, *args, **kwargs):
            if sock.family == getattr(socket, "AF_UNIX", None):  # local IPC is not the network
                return original(sock, *args, **kwargs)
            return refuse()
        return connect

    socket.socket.connect = refuse_inet(saved[0])  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse_inet(saved[1])  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]
    # The hub clients retry a refused connection with back-off (about 25 s per file); in offline mode they go
    # straight to the local cache. Both flags are read when a download starts (transformers 4.x keeps its own copy).
    flags = [(sys.modules[module], attr) for module, attr in _OFFLINE_FLAGS
             if module in sys.modules and hasattr(sys.modules[module], attr)]
    saved_flags = [getattr(module, attr) for module, attr in flags]
    for module, attr in flags:
        setattr(module, attr, True)
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo = saved
        for (module, attr), value in zip(flags, saved_flags):
            setattr(module, attr, value)
