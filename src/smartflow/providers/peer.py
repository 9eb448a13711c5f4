"""A provider account of another site, reached through the instance that serves that site.

Linked routing sends such a request to the peer instance in the caller's own dialect
(``/v1/chat/completions`` or ``/v1/messages``). The caller's body passes through, without
a round trip through the canonical model. The peer instance calls the provider and
returns its reply in the same dialect, which passes through here unchanged.

Headers of a forwarded request (the receiving side is ``smartflow.gateway.peering``):

- ``x-smartflow-peer-token``: the peer credential of the sending instance.
- ``x-smartflow-peer-caller``: the caller's identity as JSON (key name, team, user,
  labels, strict flag). The receiving instance reads it only after the credential checks.
- ``x-smartflow-peer-hop``: the sending instance's name. A request carrying it is served
  only by the receiving instance's own deployments, never forwarded again.
- ``x-smartflow-peer-deployment``: the deployment (``provider/model``) chosen by the
  sending instance, whose residency rules already allowed it.
- ``x-smartflow-peer-request-id``: the request id at the sending instance. The
  receiving instance records its usage event under this id.
- ``x-smartflow-peer-usage``: JSON with the sending instance's site, its policy decision
  as names and counts (never matched values), and the attempts it made before this one.
  The receiving instance copies them into its usage event.

Header of the peer's response:

- ``x-smartflow-peer-recorded``: the receiving instance's name, sent with a successful
  response when that instance records the request's usage event. The sending instance
  then records none, so a forwarded request has exactly one event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from smartflow.core.errors import InternalError, UpstreamError, UpstreamHTTPError, upstream_error
from smartflow.core.types import ChatRequest, ChatResponse
from smartflow.dialects._headers import retry_after_seconds
from smartflow.dialects.anthropic import responses as anthropic_responses
from smartflow.dialects.anthropic import streaming as anthropic_streaming
from smartflow.dialects.openai import responses as openai_responses
from smartflow.dialects.openai import streaming as openai_streaming
from smartflow.providers.base import Secret, StreamDecoder, Target
from smartflow.transport.sse import SSEParser

__all__ = [
    "PEER_CALLER_HEADER",
    "PEER_DEPLOYMENT_HEADER",
    "PEER_HOP_HEADER",
    "PEER_RECORDED_HEADER",
    "PEER_REQUEST_ID_HEADER",
    "PEER_TOKEN_HEADER",
    "PEER_USAGE_HEADER",
    "PeerProvider",
]

PEER_TOKEN_HEADER = "x-smartflow-peer-token"
PEER_CALLER_HEADER = "x-smartflow-peer-caller"
PEER_HOP_HEADER = "x-smartflow-peer-hop"
PEER_DEPLOYMENT_HEADER = "x-smartflow-peer-deployment"
PEER_REQUEST_ID_HEADER = "x-smartflow-peer-request-id"
PEER_USAGE_HEADER = "x-smartflow-peer-usage"
PEER_RECORDED_HEADER = "x-smartflow-peer-recorded"

_PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}

# Caller headers that select API behaviour at the provider behind the peer.
_FORWARDED = ("anthropic-version", "anthropic-beta", "x-smartflow-strict-params")


class PeerProvider:
    """One provider of another site, as this instance reaches it: through the peer.

    ``name`` and ``kind`` are those of the provider at the other site, so compliance
    rules that name a provider or a provider kind match the deployment as they would
    there. ``dialect`` is None on the copy in the routes. The dispatcher uses the copy
    from ``bound``, whose dialect is the caller's, so the body passes through.
    """

    def __init__(
        self,
        name: str,
        *,
        kind: str,
        site: str,
        url: str,
        token: Secret,
        instance: str,
        dialect: str | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.site = site
        self.url = url.rstrip("/")
        self.instance = instance
        """This instance's name, sent as the hop header."""
        self.dialect = dialect
        self._token = token
        self._bound: dict[str, PeerProvider] = {}

    def bound(self, dialect: str) -> PeerProvider:
        """Return the copy of this provider that speaks ``dialect`` to the peer."""
        copy = self._bound.get(dialect)
        if copy is None:
            if dialect not in _PATHS:
                raise InternalError(f"no peer endpoint for the {dialect} dialect")
            copy = PeerProvider(
                self.name,
                kind=self.kind,
                site=self.site,
                url=self.url,
                token=self._token,
                instance=self.instance,
                dialect=dialect,
            )
            self._bound[dialect] = copy
        return copy

    def peer_target(
        self,
        deployment_label: str,
        *,
        stream: bool,
        client_headers: Mapping[str, str],
        caller: str,
        request_id: str,
        usage: str | None = None,
    ) -> Target:
        """Return the URL and headers of a forwarded request.

        ``caller`` and ``usage`` are the values of the caller and usage headers, already
        encoded; the usage header is left out when ``usage`` is None.
        """
        headers = {
            "Content-Type": "application/json",
            PEER_TOKEN_HEADER: self._token.reveal(),
            PEER_CALLER_HEADER: caller,
            PEER_HOP_HEADER: self.instance,
            PEER_DEPLOYMENT_HEADER: deployment_label,
            PEER_REQUEST_ID_HEADER: request_id,
        }
        if usage is not None:
            headers[PEER_USAGE_HEADER] = usage
        for name in _FORWARDED:
            value = client_headers.get(name)
            if value:
                headers[name] = value
        if stream:
            headers["Accept"] = "text/event-stream"
        return Target(self.url + _PATHS[self.dialect or "openai"], headers)

    # --- the Provider protocol ---------------------------------------------------------

    def chat_target(self, model: str, *, stream: bool, client_headers: Mapping[str, str]) -> Target:
        # The dispatcher for peers calls ``peer_target``, which needs the caller's identity.
        raise InternalError("a peer deployment was dispatched without linked routing")

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        raise InternalError("a request to a peer instance passes through; it is never built")

    def passthrough_body(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        if body.get("model") == model:
            return body
        return {**body, "model": model}

    def parse_response(self, body: dict[str, Any]) -> ChatResponse:
        if self.dialect == "anthropic":
            return anthropic_responses.parse_response(body, provider=self.name)
        return openai_responses.parse_response(body, provider=self.name)

    def stream_decoder(self) -> StreamDecoder:
        if self.dialect == "anthropic":
            return anthropic_streaming.StreamDecoder(self.name)
        return openai_streaming.StreamDecoder(self.name)

    def frame_parser(self) -> SSEParser:
        return SSEParser()

    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        """Relay the peer's error, whose message is already written for the caller."""
        message, kind = _error_message(body)
        if status in (401, 403):
            error = UpstreamHTTPError(message, upstream_status=status, provider=self.name)
            error.message = (
                f"The instance serving site {self.site} at {self.url} rejected this "
                f"instance's peer credential (HTTP {status}): {message} Check "
                f"peering.sites.{self.site} here and peering.accept there."
            )
            error.args = (error.message,)
            return error
        return upstream_error(
            status,
            message or f"The instance serving site {self.site} returned HTTP {status}.",
            provider=self.name,
            retry_after=retry_after_seconds(headers),
            upstream_type=kind,
        )


def _error_message(body: bytes) -> tuple[str, str | None]:
    """Return the message and type of an OpenAI or Anthropic error body."""
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace"), None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return "", None
    message = error.get("message")
    kind = error.get("type") or error.get("code")
    return (
        message if isinstance(message, str) else "",
        kind if isinstance(kind, str) else None,
    )
