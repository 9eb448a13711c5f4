"""Fitting each attempt's parameters to its target through the normalisation layer.

The dispatcher calls ``fit`` once per attempt with the caller's original request, so a
fallback starts again from what the caller sent plus the first deployment's pins.
When normalisation serves a JSON-schema request with a forced tool, the tool's input
is turned back into reply text here, for whole responses and for streams.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

from smartflow.core.errors import SmartflowError
from smartflow.core.stream import StreamEnd, StreamEvent, TextDelta, ToolCallDelta, ToolCallStart
from smartflow.core.types import ChatRequest, ChatResponse, TextPart
from smartflow.normalize import Normalized, ProfileSet, normalize_detailed
from smartflow.providers.base import Deployment

__all__ = ["JsonToolEncoder", "fit", "json_tool_response"]

# Provider adapter kinds to the provider names of the capability profiles.
_PROFILE_PROVIDER = {
    "openai": "openai",
    "azure_openai": "azure",
    "anthropic": "anthropic",
    "bedrock": "bedrock",
    "gemini": "gemini",
    "vertex_gemini": "gemini",
    "cohere": "cohere",
}


def fit(
    request: ChatRequest,
    deployment: Deployment,
    *,
    primary: Deployment,
    strict: bool,
    profiles: ProfileSet | None,
) -> Normalized:
    """Normalise ``request`` for ``deployment``; pins of ``primary`` carry over to it."""
    pinned: Mapping[str, Any] = deployment.pinned
    if primary is not deployment and primary.pinned:
        pinned = {**primary.pinned, **deployment.pinned}
    return normalize_detailed(
        request,
        deployment.base_model or deployment.model,
        _PROFILE_PROVIDER.get(deployment.provider.kind, deployment.provider.kind),
        pinned=pinned or None,
        strict=strict,
        profiles=profiles,
    )


def json_tool_response(response: ChatResponse, tool: str) -> ChatResponse:
    """Turn the forced JSON tool's call back into the JSON text the caller asked for."""
    calls = [c for c in response.tool_calls if c.name == tool]
    if not calls:
        return response
    text = TextPart(calls[0].arguments)
    finish = "stop" if response.finish_reason == "tool_calls" else response.finish_reason
    others = [c for c in response.tool_calls if c.name != tool]
    return replace(response, content=[text], tool_calls=others, finish_reason=finish)


class _Encoder(Protocol):
    def encode(self, event: StreamEvent) -> bytes: ...

    def encode_error(self, error: SmartflowError) -> bytes: ...


class JsonToolEncoder:
    """Wrap a stream encoder so the forced JSON tool's arguments stream as text."""

    def __init__(self, inner: _Encoder, tool: str) -> None:
        self.inner = inner
        self.tool = tool
        self._index: int | None = None

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, ToolCallStart) and event.name == self.tool:
            self._index = event.index
            return b""
        if isinstance(event, ToolCallDelta) and event.index == self._index:
            return self.inner.encode(TextDelta(event.arguments))
        if (
            isinstance(event, StreamEnd)
            and self._index is not None
            and event.finish_reason == "tool_calls"
        ):
            return self.inner.encode(replace(event, finish_reason="stop"))
        return self.inner.encode(event)

    def encode_error(self, error: SmartflowError) -> bytes:
        return self.inner.encode_error(error)
