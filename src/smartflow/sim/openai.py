"""Simulator of the OpenAI API: chat completions (whole and streamed), embeddings, models.

Requests are validated as api.openai.com validates them (see ``openai_request``), and
replies come from the shared deterministic script. Subclasses (Azure) change the routes,
auth, model resolution and decorations through the hook methods.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

from smartflow.sim.base import Fault, RecordedRequest, Simulator
from smartflow.sim.openai_embeddings import embedding_data, parse_embedding_request
from smartflow.sim.openai_fields import ApiError, openai_error
from smartflow.sim.openai_models import OpenAIModel, build_catalogue
from smartflow.sim.openai_render import ChunkHook, CompletionRenderer, sse_data
from smartflow.sim.openai_request import ChatRequest, parse_chat_request
from smartflow.sim.script import SimReply, count_tokens, reply

__all__ = ["OpenAISimulator"]

logger = logging.getLogger(__name__)

_STATUS_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("request_forbidden", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
}
_REQUESTS_PER_MINUTE = 10_000
_TOKENS_PER_MINUTE = 30_000_000


def _duration(seconds: float) -> str:
    """Format a reset time as OpenAI does: ``6ms``, ``1.5s``, ``2m3s``."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 1)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3g}s"
    return f"{int(minutes)}m{text}" if minutes else text


def _retry_after_value(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


class _RateWindow:
    """Counts requests and tokens per minute to fill the ``x-ratelimit-*`` headers.

    It only reports: limits are not enforced (inject a 429 ``Fault`` for that).
    """

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.requests = 0
        self.tokens = 0

    def headers(self, tokens: int) -> dict[str, str]:
        now = time.monotonic()
        if now - self.start >= 60:
            self.start, self.requests, self.tokens = now, 0, 0
        self.requests += 1
        self.tokens += tokens
        reset = 60 - (now - self.start)
        return {
            "x-ratelimit-limit-requests": str(_REQUESTS_PER_MINUTE),
            "x-ratelimit-limit-tokens": str(_TOKENS_PER_MINUTE),
            "x-ratelimit-remaining-requests": str(max(_REQUESTS_PER_MINUTE - self.requests, 0)),
            "x-ratelimit-remaining-tokens": str(max(_TOKENS_PER_MINUTE - self.tokens, 0)),
            "x-ratelimit-reset-requests": _duration(reset / _REQUESTS_PER_MINUTE * self.requests),
            "x-ratelimit-reset-tokens": _duration(reset / _TOKENS_PER_MINUTE * self.tokens),
        }


class OpenAISimulator(Simulator):
    """OpenAI API on 127.0.0.1.

    ``models`` lists the served models (names from ``DEFAULT_OPENAI_MODELS`` or
    ``OpenAIModel`` entries). ``api_keys``, when given, are the only accepted keys.
    ``extra_response_fields`` are merged into every response body and stream chunk, as
    an upstream that adds a field of its own would.
    """

    name = "openai"
    obfuscation = True
    """Whether stream chunks carry ``obfuscation`` padding unless the request turns it off."""
    retry_after_ms = False
    """Whether a 429 with a retry delay also carries ``retry-after-ms`` (Azure sends it)."""

    def __init__(
        self,
        *,
        models: Iterable[str | OpenAIModel] | None = None,
        api_keys: Collection[str] | None = None,
        extra_response_fields: Mapping[str, Any] | None = None,
        chunk_delay: float = 0.0,
        record_limit: int = 1000,
    ) -> None:
        super().__init__(chunk_delay=chunk_delay, record_limit=record_limit)
        self.catalogue = build_catalogue(models)
        self.api_keys = frozenset(api_keys) if api_keys else None
        self.extra_response_fields: dict[str, Any] = dict(extra_response_fields or {})
        self.unknown_fields: Counter[str] = Counter()
        """How often each top-level request field outside the documented set arrived."""
        self._rate = _RateWindow()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.handle_chat)
        app.router.add_post("/v1/embeddings", self.handle_embeddings)
        app.router.add_get("/v1/models", self.handle_models)
        app.router.add_get("/v1/models/{model}", self.handle_model)

    # --- hooks for subclasses -----------------------------------------------------------

    def check_auth(self, request: web.Request) -> None:
        """Raise the provider's 401 unless the request carries an accepted key."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            raise openai_error(401, message)
        key = header[7:].strip()
        if self.api_keys is not None and key not in self.api_keys:
            masked = key[:3] + "*" * max(len(key) - 7, 0) + key[-4:]
            message = f"Incorrect API key provided: {masked}."
            raise openai_error(401, message, code="invalid_api_key")

    def check_route(self, request: web.Request) -> None:
        """Check route-level requirements such as Azure's ``api-version``."""

    def requested_model(self, request: web.Request, body: dict[str, Any]) -> str | None:
        """Return the name that selects the model: the body's ``model`` here."""
        model = body.get("model")
        return model if isinstance(model, str) else None

    def resolve_model(self, request: web.Request, name: str | None, kind: str) -> OpenAIModel:
        if name is None:
            raise openai_error(
                400,
                "Missing required parameter: 'model'.",
                param="model",
                code="missing_required_parameter",
            )
        model = self.catalogue.get(name)
        if model is None:
            message = f"The model `{name}` does not exist or you do not have access to it."
            raise openai_error(404, message, code="model_not_found")
        if kind == "chat" and model.kind != "chat":
            message = (
                "This is not a chat model and thus not supported in the v1/chat/completions "
                "endpoint. Did you mean to use v1/completions?"
            )
            raise openai_error(404, message, param="model")
        if kind == "embedding" and model.kind != "embedding":
            message = f"The model `{name}` does not support embeddings."
            raise openai_error(400, message, param="model", code="invalid_model")
        return model

    def check_chat(self, request: web.Request, chat: ChatRequest) -> None:
        """Apply extra checks to a validated chat request, such as Azure's api-version rules."""

    def decorate_completion(self, body: dict[str, Any]) -> None:
        """Add provider-specific fields to a whole chat completion."""

    def chunk_hook(self) -> ChunkHook | None:
        return None

    def stream_preamble(self) -> list[bytes]:
        """Return events sent before the first choice chunk."""
        return []

    def response_headers(self, request_id: str, started: float, tokens: int) -> dict[str, str]:
        elapsed = int((time.monotonic() - started) * 1000)
        headers = {
            "x-request-id": request_id,
            "openai-processing-ms": str(elapsed),
            "openai-version": "2020-10-01",
            "openai-organization": "smartflow-simulator",
        }
        headers.update(self._rate.headers(tokens))
        return headers

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        error_type, code = _STATUS_ERRORS.get(status, ("server_error", None))
        if status == 400 and message.startswith("Simulated"):
            code = None
        return {"error": {"message": message, "type": error_type, "param": None, "code": code}}

    # --- errors -------------------------------------------------------------------------

    def error_response(
        self, status: int, message: str, *, retry_after: float | None = None
    ) -> web.Response:
        headers = {"x-request-id": "req_" + uuid.uuid4().hex}
        if retry_after is not None:
            headers["retry-after"] = _retry_after_value(retry_after)
            if self.retry_after_ms:
                headers["retry-after-ms"] = str(int(retry_after * 1000))
        return self._json(status, self.error_body(status, message), headers)

    def render_error(self, error: ApiError) -> web.Response:
        headers = {"x-request-id": "req_" + uuid.uuid4().hex}
        logger.debug("%s: request rejected with %s: %s", self.name, error.status, error.body)
        return self._json(error.status, error.body, headers)

    @staticmethod
    def _json(status: int, body: Any, headers: dict[str, str]) -> web.Response:
        return web.Response(
            status=status, body=orjson.dumps(body), headers=headers, content_type="application/json"
        )

    # --- request intake -----------------------------------------------------------------

    async def _intake(
        self, request: web.Request, kind: str
    ) -> tuple[dict[str, Any], RecordedRequest, Fault | None, OpenAIModel]:
        """Read, record, authenticate and resolve a POST request.

        Raises ``ApiError`` for a rejected request and ``_FaultResponse`` for an injected
        error status.
        """
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        entry = self.record(request, body if body is not None else raw.decode("utf-8", "replace"))
        self.check_auth(request)
        self.check_route(request)
        if not isinstance(body, dict):
            message = (
                "We could not parse the JSON body of your request. The API expects a JSON "
                "object as the request body."
            )
            raise openai_error(400, message)
        name = self.requested_model(request, body)
        fault = self.take_fault(name, request.path)
        failure = await self.apply_fault_before_response(fault)
        if failure is not None:
            raise _FaultResponse(failure)
        return body, entry, fault, self.resolve_model(request, name, kind)

    # --- chat completions ---------------------------------------------------------------

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            body, entry, fault, model = await self._intake(request, "chat")
            chat = parse_chat_request(body, model)
            self.check_chat(request, chat)
        except _FaultResponse as fault_response:
            return fault_response.response
        except ApiError as error:
            return self.render_error(error)
        for field in chat.unknown_fields:
            self.unknown_fields[field] += 1
        if fault is not None and fault.disconnect_after is not None and not chat.stream:
            return self._drop_connection(request, entry)

        result = _compute_reply(chat, entry)
        renderer = CompletionRenderer(
            chat,
            result,
            completion_id="chatcmpl-" + uuid.uuid4().hex[:29],
            created=int(time.time()),
            extra_fields=self.extra_response_fields,
            chunk_hook=self.chunk_hook(),
        )
        tokens = result.input_tokens + result.output_tokens
        headers = self.response_headers("req_" + uuid.uuid4().hex, started, tokens)
        if not chat.stream:
            completion = renderer.completion()
            self.decorate_completion(completion)
            return self._json(200, completion, headers)
        if not self.obfuscation:
            chat.include_obfuscation = False
        events = self.stream_preamble() + renderer.stream_events()
        error_event = sse_data(
            self.error_body(500, "The server had an error while processing your request.")
        )
        return await self._stream(request, entry, events, fault, headers, error_event)

    async def _stream(
        self,
        request: web.Request,
        entry: RecordedRequest,
        events: list[bytes],
        fault: Fault | None,
        headers: dict[str, str],
        error_event: bytes,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = "text/event-stream"
        response.charset = "utf-8"
        await response.prepare(request)
        await self.write_events(request, response, entry, events, fault, error_event)
        return response

    def _drop_connection(self, request: web.Request, entry: RecordedRequest) -> web.Response:
        logger.info("%s: closing the connection of request %s (fault)", self.name, entry.id)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)

    # --- embeddings ---------------------------------------------------------------------

    async def handle_embeddings(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            body, entry, fault, model = await self._intake(request, "embedding")
            embeddings = parse_embedding_request(body, model)
        except _FaultResponse as fault_response:
            return fault_response.response
        except ApiError as error:
            return self.render_error(error)
        if fault is not None and fault.disconnect_after is not None:
            return self._drop_connection(request, entry)
        tokens = embeddings.tokens
        response = {
            "object": "list",
            "data": embedding_data(embeddings, model),
            "model": model.response_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        response.update(self.extra_response_fields)
        headers = self.response_headers("req_" + uuid.uuid4().hex, started, tokens)
        return self._json(200, response, headers)

    # --- models -------------------------------------------------------------------------

    def model_object(self, model: OpenAIModel) -> dict[str, Any]:
        return {
            "id": model.id,
            "object": "model",
            "created": model.created,
            "owned_by": model.owned_by,
        }

    async def handle_models(self, request: web.Request) -> web.Response:
        try:
            self.record(request, None)
            self.check_auth(request)
        except ApiError as error:
            return self.render_error(error)
        data = [self.model_object(model) for model in self.catalogue.values()]
        return self._json(
            200, {"object": "list", "data": data}, {"x-request-id": "req_" + uuid.uuid4().hex}
        )

    async def handle_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        try:
            self.record(request, None)
            self.check_auth(request)
            model = self.catalogue.get(name)
            if model is None:
                message = f"The model '{name}' does not exist"
                raise openai_error(404, message, param="model", code="model_not_found")
        except ApiError as error:
            return self.render_error(error)
        return self._json(
            200, self.model_object(model), {"x-request-id": "req_" + uuid.uuid4().hex}
        )


def _compute_reply(chat: ChatRequest, entry: RecordedRequest) -> SimReply:
    result = reply(chat.sim_input, id_prefix=f"call_{entry.id}")
    if len(result.tool_calls) > 1 and not chat.parallel_tool_calls:
        # With parallel_tool_calls false the model makes at most one call per turn.
        del result.tool_calls[1:]
        call = result.tool_calls[0]
        arguments = orjson.dumps(call.arguments).decode()
        result.output_tokens = count_tokens(call.name) + count_tokens(arguments)
    return result


class _FaultResponse(Exception):
    """Carries an injected fault's error response out of the intake step."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response
