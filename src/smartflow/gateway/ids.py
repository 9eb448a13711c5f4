"""Request ids of the gateway, shared by every handler so callers see one format."""

from __future__ import annotations

import itertools
import secrets

__all__ = ["new_request_id"]

# A random prefix chosen once per process and a counter: unique across instances like a
# UUID, without reading the system's random source on every request.
_PREFIX = secrets.token_hex(8)
_counter = itertools.count(1)


def new_request_id() -> str:
    """Return a new request id, ``req_`` and 32 hex digits."""
    return f"req_{_PREFIX}{next(_counter):016x}"
