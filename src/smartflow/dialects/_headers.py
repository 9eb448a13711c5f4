"""Reading the retry hints that providers put in response headers."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["retry_after_seconds"]


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Return the delay from ``retry-after-ms`` or ``retry-after`` (seconds), if valid."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw:
        try:
            return max(float(raw), 0.0)
        except ValueError:
            return None  # an HTTP date; the backoff schedule applies instead
    return None
