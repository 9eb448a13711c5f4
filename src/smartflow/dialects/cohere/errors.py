"""Cohere error bodies (``{"id", "message"}``) to canonical upstream errors."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from smartflow.core.errors import UpstreamError, upstream_error
from smartflow.dialects._headers import retry_after_seconds

__all__ = ["parse_upstream_error"]

# Cohere's non-standard 498 means a blocked token in the input or output. Callers get
# a standard 400 for it.
_BLOCKED_CONTENT = 498


def parse_upstream_error(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> UpstreamError:
    """Map a Cohere error response to the canonical upstream error."""
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = {"message": body[:200].decode("utf-8", "replace")}
    message = data.get("message") if isinstance(data, dict) else None
    if not isinstance(message, str) or not message:
        message = f"Upstream returned HTTP {status}."
    upstream_type = None
    if status == _BLOCKED_CONTENT:
        status, upstream_type = 400, "blocked_content"
    return upstream_error(
        status,
        f"{provider} error: {message}",
        provider=provider,
        retry_after=retry_after_seconds(headers),
        upstream_type=upstream_type,
    )
