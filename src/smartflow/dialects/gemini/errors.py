"""Gemini error bodies (Google RPC style) to canonical upstream errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from smartflow.core.errors import UpstreamError, upstream_error
from smartflow.dialects._headers import retry_after_seconds

__all__ = ["parse_error_object", "parse_upstream_error", "retry_delay"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def retry_delay(details: Any) -> float | None:
    """Return the seconds of a ``google.rpc.RetryInfo`` detail, such as ``"22.5s"``."""
    if not isinstance(details, list):
        return None
    for detail in details:
        if not isinstance(detail, dict):
            continue
        if not str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            continue
        match = _DURATION.match(str(detail.get("retryDelay", "")))
        if match:
            return float(match.group(1))
    return None


def _has_reason(details: Any, reason: str) -> bool:
    """Return whether a ``google.rpc.ErrorInfo`` detail carries ``reason``."""
    if not isinstance(details, list):
        return False
    return any(
        isinstance(d, dict)
        and str(d.get("@type", "")).endswith("google.rpc.ErrorInfo")
        and d.get("reason") == reason
        for d in details
    )


def parse_error_object(
    obj: Any, *, status: int | None, provider: str, retry_after: float | None = None
) -> UpstreamError:
    """Map a Google ``{"code", "message", "status", "details"}`` object.

    ``status`` is None for an error that arrives inside a stream; the object's own
    ``code`` is used then.
    """
    if not isinstance(obj, dict):
        obj = {"message": str(obj)}
    if status is None:
        code = obj.get("code")
        valid = isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600
        status = code if valid else 500
    if _has_reason(obj.get("details"), "API_KEY_INVALID"):
        # The Gemini API returns 400 for a wrong key, which is a credential failure.
        status = 401
    message = obj.get("message") or f"Upstream returned HTTP {status}."
    if retry_after is None:
        retry_after = retry_delay(obj.get("details"))
    upstream_type = obj.get("status") if isinstance(obj.get("status"), str) else None
    return upstream_error(
        status,
        f"{provider} error: {message}",
        provider=provider,
        retry_after=retry_after,
        upstream_type=upstream_type,
    )


def parse_upstream_error(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> UpstreamError:
    """Map a Gemini or Vertex AI error response to the canonical upstream error."""
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = {"error": {"message": body[:200].decode("utf-8", "replace")}}
    if isinstance(data, list) and data:
        # A stream requested without alt=sse reports errors inside a JSON array.
        data = data[0]
    obj = data.get("error") if isinstance(data, dict) else None
    return parse_error_object(
        obj or {"message": f"Upstream returned HTTP {status}."},
        status=status,
        provider=provider,
        retry_after=retry_after_seconds(headers),
    )
