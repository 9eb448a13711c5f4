"""Anthropic Messages API adapter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from smartflow.core.errors import UpstreamError
from smartflow.core.types import ChatRequest, ChatResponse
from smartflow.dialects.anthropic import errors, requests, responses, streaming
from smartflow.providers.base import Secret, Target
from smartflow.transport.sse import SSEParser

__all__ = ["AnthropicProvider"]

ANTHROPIC_BASE_URL = "https://api.anthropic.com"

# Caller headers that select API behaviour and so must reach Anthropic unchanged.
_FORWARDED = ("anthropic-version", "anthropic-beta")


class AnthropicProvider:
    kind = "anthropic"
    dialect: str | None = "anthropic"

    def __init__(
        self,
        name: str,
        *,
        api_key: Secret,
        base_url: str | None = None,
        anthropic_version: str = "2023-06-01",
    ) -> None:
        self.name = name
        self._api_key = api_key
        self.base_url = (base_url or ANTHROPIC_BASE_URL).rstrip("/")
        self.anthropic_version = anthropic_version
        self._url = self.base_url + "/v1/messages"

    def chat_target(self, model: str, *, stream: bool, client_headers: Mapping[str, str]) -> Target:
        headers = {
            "x-api-key": self._api_key.reveal(),
            "anthropic-version": self.anthropic_version,
            "Content-Type": "application/json",
        }
        for name in _FORWARDED:
            value = client_headers.get(name)
            if value:
                headers[name] = value
        if stream:
            headers["Accept"] = "text/event-stream"
        return Target(self._url, headers)

    def count_tokens_target(self, client_headers: Mapping[str, str]) -> Target:
        target = self.chat_target("", stream=False, client_headers=client_headers)
        return Target(self._url + "/count_tokens", target.headers)

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        return requests.build_request(request, model)

    def passthrough_body(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        if body.get("model") == model:
            return body
        return {**body, "model": model}

    def parse_response(self, body: dict[str, Any]) -> ChatResponse:
        return responses.parse_response(body, provider=self.name)

    def stream_decoder(self) -> streaming.StreamDecoder:
        return streaming.StreamDecoder(self.name)

    def frame_parser(self) -> SSEParser:
        return SSEParser()

    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return errors.parse_upstream_error(status, body, headers, provider=self.name)
