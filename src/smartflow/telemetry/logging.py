"""Process-wide logging set-up, called once by the command line, never by library code."""

from __future__ import annotations

import logging
import sys

__all__ = ["setup"]


def setup(level: str = "INFO") -> None:
    """Send log records to standard error as one line each: time, level, logger, message."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp logs every request at INFO through its own access logger; ours replaces it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
