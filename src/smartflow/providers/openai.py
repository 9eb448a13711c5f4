"""OpenAI and Azure OpenAI adapters: both speak the Chat Completions wire format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from smartflow.core.errors import UpstreamError
from smartflow.core.types import ChatRequest, ChatResponse
from smartflow.dialects.openai import errors, requests, responses, streaming
from smartflow.providers.base import Secret, Target
from smartflow.transport.sse import SSEParser

__all__ = ["AzureOpenAIProvider", "OpenAIProvider"]

OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider:
    kind = "openai"
    dialect: str | None = "openai"

    def __init__(self, name: str, *, api_key: Secret, base_url: str | None = None) -> None:
        self.name = name
        self._api_key = api_key
        self.base_url = (base_url or OPENAI_BASE_URL).rstrip("/")
        self._url = self.base_url + "/chat/completions"

    def chat_target(self, model: str, *, stream: bool, client_headers: Mapping[str, str]) -> Target:
        headers = {
            "Authorization": "Bearer " + self._api_key.reveal(),
            "Content-Type": "application/json",
        }
        if stream:
            headers["Accept"] = "text/event-stream"
        return Target(self._url, headers)

    def embed_target(self, model: str) -> Target:
        """Return the embeddings URL and headers. The caller's body passes through."""
        headers = {
            "Authorization": "Bearer " + self._api_key.reveal(),
            "Content-Type": "application/json",
        }
        return Target(self.base_url + "/embeddings", headers)

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


class AzureOpenAIProvider(OpenAIProvider):
    """Azure OpenAI: the deployment name is in the URL, the key in ``api-key``.

    With ``api_version="v1"`` the v1 API path is used, where the body's ``model``
    names the deployment instead.
    """

    kind = "azure_openai"

    def __init__(self, name: str, *, api_key: Secret, base_url: str, api_version: str) -> None:
        super().__init__(name, api_key=api_key, base_url=base_url)
        self.api_version = api_version

    def chat_target(self, model: str, *, stream: bool, client_headers: Mapping[str, str]) -> Target:
        if self.api_version == "v1":
            url = f"{self.base_url}/openai/v1/chat/completions"
        else:
            url = (
                f"{self.base_url}/openai/deployments/{quote(model, safe='')}/chat/completions"
                f"?api-version={quote(self.api_version, safe='')}"
            )
        headers = {"api-key": self._api_key.reveal(), "Content-Type": "application/json"}
        if stream:
            headers["Accept"] = "text/event-stream"
        return Target(url, headers)

    def embed_target(self, model: str) -> Target:
        if self.api_version == "v1":
            url = f"{self.base_url}/openai/v1/embeddings"
        else:
            url = (
                f"{self.base_url}/openai/deployments/{quote(model, safe='')}/embeddings"
                f"?api-version={quote(self.api_version, safe='')}"
            )
        return Target(url, {"api-key": self._api_key.reveal(), "Content-Type": "application/json"})
