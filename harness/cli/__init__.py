"""The ``harness`` command line: ``main`` is the console script; each subcommand lives in its own module here."""

from .main import main

__all__ = ["main"]
