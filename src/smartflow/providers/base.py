"""The provider adapter interface and the credential wrapper."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from smartflow.core.errors import UpstreamError
from smartflow.core.stream import StreamEvent
from smartflow.core.types import ChatRequest, ChatResponse

__all__ = ["Deployment", "FrameParser", "Provider", "Secret", "StreamDecoder", "Target"]


class Secret:
    """A credential value that never shows itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(slots=True, frozen=True)
class Target:
    """URL and headers of one upstream request."""

    url: str
    headers: dict[str, str]


class StreamDecoder(Protocol):
    """Turns one upstream stream event (its name, if the framing has one, and its
    payload text) into canonical events; ``close`` checks the stream ended properly."""

    def feed(self, data: str, event: str | None = None) -> list[StreamEvent]: ...

    def close(self) -> list[StreamEvent]: ...


class FrameParser(Protocol):
    """Splits a response byte stream into (event name, payload text) pairs.

    Server-sent events by default; a provider with another framing (such as AWS
    event streams) supplies its own through ``Provider.frame_parser``.
    """

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]: ...

    def close(self) -> list[tuple[str | None, str]]: ...


class Provider(Protocol):
    """One configured upstream account.

    ``dialect`` names the ingress dialect whose bodies this provider takes unchanged
    (pass-through), or is None when every request must be translated.
    """

    name: str
    kind: str
    dialect: str | None

    def chat_target(
        self, model: str, *, stream: bool, client_headers: Mapping[str, str]
    ) -> Target: ...

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]: ...

    def passthrough_body(self, body: dict[str, Any], model: str) -> dict[str, Any]: ...

    def parse_response(self, body: dict[str, Any]) -> ChatResponse: ...

    def stream_decoder(self) -> StreamDecoder: ...

    def frame_parser(self) -> FrameParser: ...

    def parse_error(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError: ...


@dataclass(slots=True, frozen=True)
class Deployment:
    """A public model name served by ``model`` at ``provider``."""

    public_model: str
    provider: Provider
    model: str
    site: str = "local"
    base_model: str | None = None
    """The model name capability profiles know, when ``model`` is a deployment name."""
    pinned: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.model}"
