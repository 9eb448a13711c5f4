"""OpenAI error bodies: rendering ours for callers and reading the upstream's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from smartflow.core.errors import RateLimited, SmartflowError, UpstreamError, upstream_error
from smartflow.dialects._headers import retry_after_seconds

__all__ = ["error_body", "parse_error_object", "parse_upstream_error", "render_error"]

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout",
}

_CODES = {
    "authentication_failed": "invalid_api_key",
    "not_found": "model_not_found",
}


def _public_status(error: SmartflowError) -> int:
    # 529 is Anthropic's own status; OpenAI callers know 503 for an overloaded service.
    return 503 if error.status == 529 else error.status


def error_body(error: SmartflowError) -> dict[str, Any]:
    status = _public_status(error)
    return {
        "error": {
            "message": error.message,
            "type": _TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": error.param,
            "code": _CODES.get(error.code, error.code),
        }
    }


def render_error(error: SmartflowError) -> tuple[int, bytes, dict[str, str]]:
    """Return the status, JSON body and headers for an error sent to an OpenAI caller."""
    headers = {}
    retry_after = getattr(error, "retry_after", None)
    if isinstance(error, RateLimited | UpstreamError) and retry_after is not None:
        headers["retry-after"] = str(max(1, round(retry_after)))
    return _public_status(error), orjson.dumps(error_body(error)), headers


def parse_error_object(
    obj: Any, *, status: int, provider: str, retry_after: float | None = None
) -> UpstreamError:
    if not isinstance(obj, dict):
        obj = {"message": str(obj)}
    message = obj.get("message") or f"Upstream returned HTTP {status}."
    param = obj.get("param") if isinstance(obj.get("param"), str) else None
    return upstream_error(
        status,
        f"{provider} error: {message}",
        provider=provider,
        retry_after=retry_after,
        param=param,
        upstream_type=obj.get("type") or obj.get("code"),
    )


def parse_upstream_error(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> UpstreamError:
    """Map an OpenAI-format error response to the canonical upstream error."""
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = {"error": {"message": body[:200].decode("utf-8", "replace")}}
    obj = data.get("error") if isinstance(data, dict) else None
    return parse_error_object(
        obj or {"message": f"Upstream returned HTTP {status}."},
        status=status,
        provider=provider,
        retry_after=retry_after_seconds(headers),
    )
