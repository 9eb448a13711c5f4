"""Simulator of Azure OpenAI: deployment-scoped and v1 chat completions and embeddings.

It reuses the OpenAI simulator's validation and rendering and adds what Azure does
differently: ``api-key`` auth, the required ``api-version`` query parameter on
deployment URLs, deployments that map to models, Azure's own error bodies
(``{"error": {"code", "message"}}``), content-filter annotations on every response, and
streams that open with a chunk whose ``choices`` is empty.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Mapping
from typing import Any

import orjson
from aiohttp import web

from smartflow.sim.openai import OpenAISimulator
from smartflow.sim.openai_fields import ApiError, openai_error
from smartflow.sim.openai_models import OpenAIModel
from smartflow.sim.openai_render import ChunkHook
from smartflow.sim.openai_request import ChatRequest

__all__ = ["DEFAULT_API_VERSIONS", "DEFAULT_DEPLOYMENTS", "AzureOpenAISimulator"]

DEFAULT_DEPLOYMENTS: dict[str, str] = {
    "gpt-4o": "gpt-4o",
    "gpt-4o-mini": "gpt-4o-mini",
    "gpt-4.1": "gpt-4.1",
    "chat-prod": "gpt-4.1-mini",
    "o3-mini": "o3-mini",
    "gpt-5-mini": "gpt-5-mini",
    "text-embedding-3-small": "text-embedding-3-small",
}
"""Deployment name to model: most keep the model's name, ``chat-prod`` does not."""

DEFAULT_API_VERSIONS = frozenset(
    {
        "2023-05-15", "2024-02-01", "2024-06-01", "2024-10-21",
        "2024-02-15-preview", "2024-03-01-preview", "2024-05-01-preview",
        "2024-07-01-preview", "2024-08-01-preview", "2024-09-01-preview",
        "2024-10-01-preview", "2024-12-01-preview", "2025-01-01-preview",
        "2025-02-01-preview", "2025-03-01-preview", "2025-04-01-preview",
    }
)  # fmt: skip
"""Dated ``api-version`` values the deployment-scoped routes accept."""

_V1_API_VERSIONS = frozenset({"v1", "preview", "latest"})
_REASONING_MIN_VERSION = "2024-12-01-preview"
_SAFE = {"filtered": False, "severity": "safe"}
_FILTER_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_PROMPT_FILTER_RESULTS = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            **_FILTER_RESULTS,
            "jailbreak": {"filtered": False, "detected": False},
        },
    }
]
_COMPLETION_FILTER_RESULTS = {
    **_FILTER_RESULTS,
    "protected_material_code": {"filtered": False, "detected": False},
    "protected_material_text": {"filtered": False, "detected": False},
}
_STATUS_CODES = {500: "InternalServerError", 503: "ServiceUnavailable"}


def _azure_error(status: int, code: str, message: str) -> ApiError:
    return ApiError(status, {"error": {"code": code, "message": message}})


def _version_key(version: str) -> tuple[str, bool]:
    """Order dated versions by date, with a preview before the GA release of its date."""
    return version.removesuffix("-preview"), not version.endswith("-preview")


def _add_chunk_filter_results(chunk: dict[str, Any]) -> None:
    for choice in chunk["choices"]:
        delta = choice["delta"]
        has_output = bool(delta.get("content")) or ("tool_calls" in delta and "role" not in delta)
        choice["content_filter_results"] = _COMPLETION_FILTER_RESULTS if has_output else {}


class AzureOpenAISimulator(OpenAISimulator):
    """Azure OpenAI on 127.0.0.1.

    ``deployments`` maps deployment names to model names from the OpenAI catalogue.
    ``api_versions`` lists the dated versions accepted on deployment URLs.
    ``reject_unknown_fields`` answers unknown body fields with the 400 that Azure API
    versions which predate a field send. By default they are accepted and counted.
    """

    name = "azure-openai"
    obfuscation = False
    retry_after_ms = True

    def __init__(
        self,
        *,
        deployments: Mapping[str, str] | None = None,
        api_versions: Collection[str] | None = None,
        api_keys: Collection[str] | None = None,
        extra_response_fields: Mapping[str, Any] | None = None,
        reject_unknown_fields: bool = False,
        region: str = "eastus2",
        chunk_delay: float = 0.0,
        record_limit: int = 1000,
    ) -> None:
        self.deployments = dict(DEFAULT_DEPLOYMENTS if deployments is None else deployments)
        super().__init__(
            models=sorted(set(self.deployments.values())),
            api_keys=api_keys,
            extra_response_fields=extra_response_fields,
            chunk_delay=chunk_delay,
            record_limit=record_limit,
        )
        self.api_versions = frozenset(api_versions or DEFAULT_API_VERSIONS)
        self.reject_unknown_fields = reject_unknown_fields
        self.region = region

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.handle_chat)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", self.handle_embeddings)
        app.router.add_post("/openai/v1/chat/completions", self.handle_chat)
        app.router.add_post("/openai/v1/embeddings", self.handle_embeddings)
        app.router.add_get("/openai/v1/models", self.handle_models)

    # --- hooks --------------------------------------------------------------------------

    def check_auth(self, request: web.Request) -> None:
        key = request.headers.get("api-key", "").strip()
        authorization = request.headers.get("Authorization", "")
        token = authorization[7:].strip() if authorization.startswith("Bearer ") else ""
        credential = key or token
        if not credential or (self.api_keys is not None and credential not in self.api_keys):
            message = (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                "to provide a valid key for an active subscription and use a correct regional "
                "API endpoint for your resource."
            )
            raise _azure_error(401, "401", message)

    def check_route(self, request: web.Request) -> None:
        version = request.query.get("api-version")
        if "deployment" not in request.match_info:
            if version is not None and version not in _V1_API_VERSIONS:
                raise _azure_error(400, "BadRequest", "API version not supported")
            return
        if version is None:
            raise _azure_error(404, "404", "Resource not found")
        if version not in self.api_versions:
            raise _azure_error(400, "BadRequest", "API version not supported")

    def requested_model(self, request: web.Request, body: dict[str, Any]) -> str | None:
        deployment = request.match_info.get("deployment")
        return deployment if deployment is not None else super().requested_model(request, body)

    def resolve_model(self, request: web.Request, name: str | None, kind: str) -> OpenAIModel:
        if name is not None and name not in self.deployments:
            message = (
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again."
            )
            raise _azure_error(404, "DeploymentNotFound", message)
        model_name = self.deployments[name] if name is not None else None
        return super().resolve_model(request, model_name, kind)

    def check_chat(self, request: web.Request, chat: ChatRequest) -> None:
        if self.reject_unknown_fields and chat.unknown_fields:
            message = f"Unrecognized request argument supplied: {chat.unknown_fields[0]}"
            raise openai_error(400, message)
        version = request.query.get("api-version")
        dated = version is not None and version not in _V1_API_VERSIONS
        if (
            chat.model.is_reasoning
            and dated
            and _version_key(version or "") < _version_key(_REASONING_MIN_VERSION)
        ):
            # Azure sends this text with the placeholder left unfilled.
            message = (
                "Model {modelName} is enabled only for api versions 2024-12-01-preview and later"
            )
            raise _azure_error(400, "BadRequest", message)

    def decorate_completion(self, body: dict[str, Any]) -> None:
        body["prompt_filter_results"] = _PROMPT_FILTER_RESULTS
        for choice in body["choices"]:
            choice["content_filter_results"] = _COMPLETION_FILTER_RESULTS

    def chunk_hook(self) -> ChunkHook | None:
        return _add_chunk_filter_results

    def stream_preamble(self) -> list[bytes]:
        chunk = {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": _PROMPT_FILTER_RESULTS,
        }
        return [b"data: " + orjson.dumps(chunk) + b"\n\n"]

    def response_headers(self, request_id: str, started: float, tokens: int) -> dict[str, str]:
        rate = self._rate.headers(tokens)
        elapsed = int((time.monotonic() - started) * 1000)
        return {
            "apim-request-id": str(uuid.uuid4()),
            "x-request-id": str(uuid.uuid4()),
            "x-ms-region": self.region,
            "x-ms-rai-invoked": "true",
            "azureml-model-session": "d001-20250101000000",
            "openai-processing-ms": str(elapsed),
            "x-ratelimit-remaining-requests": rate["x-ratelimit-remaining-requests"],
            "x-ratelimit-remaining-tokens": rate["x-ratelimit-remaining-tokens"],
            "x-ratelimit-limit-requests": rate["x-ratelimit-limit-requests"],
            "x-ratelimit-limit-tokens": rate["x-ratelimit-limit-tokens"],
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        if status == 429 and message.startswith("Simulated"):
            message = (
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API have "
                "exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry "
                "after 1 second."
            )
        return {"error": {"code": _STATUS_CODES.get(status, str(status)), "message": message}}

    async def handle_models(self, request: web.Request) -> web.Response:
        try:
            self.record(request, None)
            self.check_auth(request)
        except ApiError as error:
            return self.render_error(error)
        data = [
            {
                "id": deployment,
                "object": "model",
                "created": self.catalogue[model].created,
                "owned_by": "system",
            }
            for deployment, model in self.deployments.items()
        ]
        return self._json(
            200, {"object": "list", "data": data}, {"x-request-id": str(uuid.uuid4())}
        )
