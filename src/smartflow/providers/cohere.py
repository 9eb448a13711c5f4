"""Cohere adapter: Chat v2 at ``{base_url}/v2/chat`` with a bearer key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from smartflow.core.errors import InternalError, UpstreamError
from smartflow.core.types import ChatRequest, ChatResponse
from smartflow.dialects.cohere import embeddings, errors, requests, responses, streaming
from smartflow.dialects.openai.embeddings import EmbeddingBatch, EmbeddingRequest
from smartflow.providers.base import Secret, Target
from smartflow.transport.sse import SSEParser

__all__ = ["CohereProvider"]

COHERE_BASE_URL = "https://api.cohere.com"


class CohereProvider:
    """One Cohere account, where ``base_url`` is the host only."""

    kind = "cohere"
    dialect: str | None = None

    def __init__(self, name: str, *, api_key: Secret, base_url: str | None = None) -> None:
        self.name = name
        self._api_key = api_key
        self.base_url = (base_url or COHERE_BASE_URL).rstrip("/")
        self._url = self.base_url + "/v2/chat"

    def chat_target(self, model: str, *, stream: bool, client_headers: Mapping[str, str]) -> Target:
        headers = {
            "Authorization": "Bearer " + self._api_key.reveal(),
            "Content-Type": "application/json",
        }
        if stream:
            headers["Accept"] = "text/event-stream"
        return Target(self._url, headers)

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        return requests.build_request(request, model)

    def embed_target(self, model: str) -> Target:
        headers = {
            "Authorization": "Bearer " + self._api_key.reveal(),
            "Content-Type": "application/json",
        }
        return Target(self.base_url + "/v2/embed", headers)

    def build_embed_bodies(self, request: EmbeddingRequest, model: str) -> list[dict[str, Any]]:
        return embeddings.build_embedding_bodies(request, model)

    def parse_embed_response(
        self, body: dict[str, Any], headers: Mapping[str, str], model: str
    ) -> EmbeddingBatch:
        return embeddings.parse_embedding_response(body)

    def passthrough_body(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        raise InternalError(
            f"Provider {self.name} has no pass-through dialect; its requests are translated."
        )

    def parse_response(self, body: dict[str, Any]) -> ChatResponse:
        return responses.parse_response(body, provider=self.name)

    def stream_decoder(self) -> streaming.StreamDecoder:
        return streaming.StreamDecoder(self.name)

    def frame_parser(self) -> SSEParser:
        return SSEParser()

    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return errors.parse_upstream_error(status, body, headers, provider=self.name)
