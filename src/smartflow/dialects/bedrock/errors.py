"""Bedrock runtime errors, from a response or an event-stream exception, as canonical errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from smartflow.core.errors import UpstreamError, UpstreamOverloaded, upstream_error
from smartflow.dialects._headers import retry_after_seconds

__all__ = ["ERROR_STATUS", "error_from_type", "parse_stream_exception", "parse_upstream_error"]

# HTTP status of each bedrock-runtime exception (botocore service model 2023-09-30),
# used when the type arrives without a status, as in an event stream.
ERROR_STATUS: dict[str, int] = {
    "ValidationException": 400,
    "SerializationException": 400,
    "ConflictException": 400,
    "ServiceQuotaExceededException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ModelStreamErrorException": 424,
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}

# The status that picks the canonical error class where Bedrock's own status would pick
# the wrong one. Quota and not-ready errors clear with time, as a 429 does. A model
# error (424) is the model failing, not the caller, so it counts as a retryable 5xx.
_CANONICAL_STATUS: dict[str, int] = {
    "ServiceQuotaExceededException": 429,
    "ModelNotReadyException": 429,
    "ModelErrorException": 500,
    "ModelStreamErrorException": 500,
}


def _error_type(raw: str) -> str:
    """Reduce ``Type:namespace`` (header) or ``namespace#Type`` (``__type``) to ``Type``."""
    name = raw.split(":", 1)[0].rsplit("#", 1)[-1].strip()
    return name[:1].upper() + name[1:]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    for key, item in headers.items():
        if key.lower() == name.lower():
            return item
    return None


def error_from_type(
    error_type: str,
    message: str,
    *,
    status: int | None,
    provider: str,
    retry_after: float | None = None,
) -> UpstreamError:
    """Build the canonical error for a Bedrock exception type and its HTTP status.

    ``status`` is None for an exception that arrived inside a stream. The error keeps
    Bedrock's status in ``upstream_status`` and its type in ``upstream_type``.
    """
    bedrock_status = status if status is not None else ERROR_STATUS.get(error_type, 500)
    text = f"{provider} error ({error_type}): {message}" if error_type else message
    if error_type == "ServiceUnavailableException":
        # Bedrock's "try again shortly" means overloaded, so OpenAI callers get 503 and
        # Anthropic callers 529, as for Anthropic's own overloaded error.
        return UpstreamOverloaded(
            text,
            provider=provider,
            upstream_status=bedrock_status,
            retry_after=retry_after,
            upstream_type=error_type,
        )
    error = upstream_error(
        _CANONICAL_STATUS.get(error_type, bedrock_status),
        text,
        provider=provider,
        retry_after=retry_after,
        upstream_type=error_type or None,
    )
    error.upstream_status = bedrock_status
    return error


def _message(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    for key in ("message", "Message", "originalMessage"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def parse_upstream_error(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> UpstreamError:
    """Map a Bedrock error response (``x-amzn-ErrorType`` plus ``{"message"}``)."""
    try:
        data: Any = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = {"message": body[:200].decode("utf-8", "replace")}
    raw_type = _header(headers, "x-amzn-ErrorType")
    if not raw_type and isinstance(data, dict):
        raw_type = data.get("__type") or data.get("code")
    error_type = _error_type(str(raw_type)) if raw_type else ""
    message = _message(data) or f"Upstream returned HTTP {status}."
    return error_from_type(
        error_type,
        message,
        status=status,
        provider=provider,
        retry_after=retry_after_seconds(headers),
    )


def parse_stream_exception(exception_type: str, payload: str, *, provider: str) -> UpstreamError:
    """Map an event-stream exception such as ``throttlingException`` and its JSON payload."""
    try:
        data: Any = orjson.loads(payload) if payload else {}
    except orjson.JSONDecodeError:
        data = {"message": payload[:200]}
    error_type = _error_type(exception_type)
    message = _message(data) or "The stream failed with no message."
    return error_from_type(error_type, message, status=None, provider=provider)
