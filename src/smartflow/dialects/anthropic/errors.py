"""Anthropic error bodies: rendering ours for callers and reading the upstream's."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from smartflow.core.errors import SmartflowError, UpstreamError, upstream_error
from smartflow.dialects._headers import retry_after_seconds

__all__ = ["error_body", "parse_error_object", "parse_upstream_error", "render_error"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# Statuses of errors that arrive inside a stream, where no HTTP status exists.
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def error_body(error: SmartflowError) -> dict[str, Any]:
    kind = _TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    return {
        "type": "error",
        "error": {"type": kind, "message": error.message},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }


def render_error(error: SmartflowError) -> tuple[int, bytes, dict[str, str]]:
    """Return the status, JSON body and headers for an error sent to an Anthropic caller."""
    headers = {}
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["retry-after"] = str(max(1, round(retry_after)))
    return error.status, orjson.dumps(error_body(error)), headers


def parse_error_object(
    obj: Any, *, status: int | None, provider: str, retry_after: float | None = None
) -> UpstreamError:
    if not isinstance(obj, dict):
        obj = {"message": str(obj)}
    kind = obj.get("type") or "api_error"
    if status is None:
        status = _STATUS_OF_TYPE.get(kind, 500)
    message = obj.get("message") or f"Upstream returned HTTP {status}."
    return upstream_error(
        status,
        f"{provider} error: {message}",
        provider=provider,
        retry_after=retry_after,
        upstream_type=kind,
    )


def parse_upstream_error(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> UpstreamError:
    """Map an Anthropic-format error response to the canonical upstream error."""
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = {"error": {"message": body[:200].decode("utf-8", "replace")}}
    obj = data.get("error") if isinstance(data, dict) else None
    return parse_error_object(
        obj or {}, status=status, provider=provider, retry_after=retry_after_seconds(headers)
    )
