"""Simulator of the Anthropic Messages API: messages (whole and streamed), count_tokens, models.

Auth is ``x-api-key`` (or an ``Authorization: Bearer`` token), the ``anthropic-version``
header is required, and errors use ``{"type": "error", "error": {...}, "request_id"}``.
Streams send ``event:`` names with message_start, per-block start/delta/stop, a ping,
message_delta with cumulative usage and message_stop. The ``error_after`` fault sends an
in-stream ``event: error``.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Collection, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from smartflow.sim.anthropic_models import AnthropicModel, build_anthropic_catalogue
from smartflow.sim.anthropic_request import (
    AnthropicError,
    MessagesRequest,
    check_schema,
    parse_messages_request,
)
from smartflow.sim.base import Fault, RecordedRequest, Simulator
from smartflow.sim.script import SimReply, count_tokens, reply, split_chunks

__all__ = ["DEFAULT_API_VERSIONS", "AnthropicSimulator"]

logger = logging.getLogger(__name__)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
DEFAULT_API_VERSIONS = ("2023-06-01", "2023-01-01", "2026-10-21")
"""Accepted ``anthropic-version`` values. The anthropic SDK 2.17 sends 2026-10-21."""
_MAX_BODY_BYTES = 32 * 1024 * 1024
_STOP_REASONS = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_calls": "tool_use",
}
_JSON_FRAGMENT = 16
"""Characters of tool input per ``input_json_delta`` event."""
_LIMITS = {
    "requests": 4_000,
    "tokens": 2_000_000,
    "input-tokens": 2_000_000,
    "output-tokens": 400_000,
}


def _error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _signature(text: str) -> str:
    return hashlib.sha256(("signature:" + text).encode()).hexdigest()


class AnthropicSimulator(Simulator):
    """Anthropic Messages API on 127.0.0.1.

    ``models`` lists the served models (names from ``DEFAULT_ANTHROPIC_MODELS`` or
    ``AnthropicModel`` entries). ``api_keys``, when given, are the only accepted keys.
    """

    name = "anthropic"

    def __init__(
        self,
        *,
        models: Iterable[str | AnthropicModel] | None = None,
        api_keys: Collection[str] | None = None,
        api_versions: Collection[str] = DEFAULT_API_VERSIONS,
        chunk_delay: float = 0.0,
        record_limit: int = 1000,
    ) -> None:
        super().__init__(chunk_delay=chunk_delay, record_limit=record_limit)
        self.catalogue = build_anthropic_catalogue(models)
        self.api_versions = tuple(api_versions)
        self.api_keys = frozenset(api_keys) if api_keys else None
        self._organization = str(uuid.uuid4())

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.handle_messages)
        app.router.add_post("/v1/messages/count_tokens", self.handle_count_tokens)
        app.router.add_get("/v1/models", self.handle_models)
        app.router.add_get("/v1/models/{model}", self.handle_model)

    # --- errors and headers -------------------------------------------------------------

    def _error_payload(self, error_type: str, message: str, request_id: str) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id,
        }

    def _error(self, error: AnthropicError) -> web.Response:
        request_id = self._request_id()
        payload = self._error_payload(error.error_type, error.message, request_id)
        logger.debug("%s: request rejected with %s: %s", self.name, error.status, error.message)
        return self._json(error.status, payload, {"request-id": request_id})

    def error_response(
        self, status: int, message: str, *, retry_after: float | None = None
    ) -> web.Response:
        request_id = self._request_id()
        headers = {"request-id": request_id}
        if retry_after is not None:
            headers["retry-after"] = (
                str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
            )
        if status == 529 and message.startswith("Simulated"):
            message = "Overloaded"
        payload = self._error_payload(_error_type(status), message, request_id)
        return self._json(status, payload, headers)

    @staticmethod
    def _json(status: int, body: Any, headers: dict[str, str]) -> web.Response:
        return web.Response(
            status=status, body=orjson.dumps(body), headers=headers, content_type="application/json"
        )

    @staticmethod
    def _request_id() -> str:
        return "req_011C" + uuid.uuid4().hex[:20]

    def _headers(self, request_id: str, input_tokens: int, output_tokens: int) -> dict[str, str]:
        reset = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
        used = {"requests": 1, "tokens": input_tokens + output_tokens}
        used |= {"input-tokens": input_tokens, "output-tokens": output_tokens}
        headers = {"request-id": request_id, "anthropic-organization-id": self._organization}
        for name, limit in _LIMITS.items():
            headers[f"anthropic-ratelimit-{name}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{name}-remaining"] = str(max(limit - used[name], 0))
            headers[f"anthropic-ratelimit-{name}-reset"] = reset
        return headers

    # --- intake -------------------------------------------------------------------------

    def _check_headers(self, request: web.Request) -> None:
        key = request.headers.get("x-api-key", "").strip()
        authorization = request.headers.get("Authorization", "")
        token = authorization[7:].strip() if authorization.startswith("Bearer ") else ""
        if not key and not token:
            raise AnthropicError(401, "authentication_error", "x-api-key header is required")
        if self.api_keys is not None and (key or token) not in self.api_keys:
            raise AnthropicError(401, "authentication_error", "invalid x-api-key")
        version = request.headers.get("anthropic-version")
        if version is None:
            raise AnthropicError(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        if version not in self.api_versions:
            raise AnthropicError(
                400,
                "invalid_request_error",
                f"anthropic-version: invalid version '{version}'. Supported versions: "
                + ", ".join(self.api_versions),
            )

    async def _intake(
        self, request: web.Request, *, count_only: bool
    ) -> tuple[dict[str, Any], RecordedRequest, Fault | None, web.Response | None]:
        """Read, record and check a POST, and return the fault's response if one applies."""
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        entry = self.record(request, body if body is not None else raw.decode("utf-8", "replace"))
        if len(raw) > _MAX_BODY_BYTES:
            raise AnthropicError(
                413, "request_too_large", "Request exceeds the maximum allowed number of bytes."
            )
        self._check_headers(request)
        if not isinstance(body, dict):
            raise AnthropicError(
                400, "invalid_request_error", "The request body is not valid JSON."
            )
        name = body.get("model") if isinstance(body.get("model"), str) else None
        fault = self.take_fault(name, request.path)
        failure = await self.apply_fault_before_response(fault)
        if failure is not None:
            return body, entry, fault, failure
        check_schema(body, count_only=count_only)
        return body, entry, fault, None

    def _model(self, name: str) -> AnthropicModel:
        model = self.catalogue.get(name)
        if model is None:
            raise AnthropicError(404, "not_found_error", f"model: {name}")
        return model

    # --- messages -----------------------------------------------------------------------

    async def handle_messages(self, request: web.Request) -> web.StreamResponse:
        try:
            body, entry, fault, failure = await self._intake(request, count_only=False)
            if failure is not None:
                return failure
            parsed = parse_messages_request(body, self._model(body["model"]))
        except AnthropicError as error:
            return self._error(error)
        if fault is not None and fault.disconnect_after is not None and not parsed.stream:
            logger.info("%s: closing the connection of request %s (fault)", self.name, entry.id)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        result = reply(parsed.sim_input, id_prefix=f"toolu_01{entry.id}")
        if parsed.single_tool_call and len(result.tool_calls) > 1:
            del result.tool_calls[1:]
            call = result.tool_calls[0]
            result.output_tokens = count_tokens(call.name) + count_tokens(
                orjson.dumps(call.arguments).decode()
            )
        renderer = _MessageRenderer(parsed, result, "msg_01" + uuid.uuid4().hex[:22])
        request_id = self._request_id()
        headers = self._headers(request_id, result.input_tokens, renderer.output_tokens)
        if not parsed.stream:
            return self._json(200, renderer.message(), headers)
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = "text/event-stream"
        response.charset = "utf-8"
        await response.prepare(request)
        error_event = _event(
            "error", self._error_payload("overloaded_error", "Overloaded", request_id)
        )
        await self.write_events(request, response, entry, renderer.events(), fault, error_event)
        return response

    async def handle_count_tokens(self, request: web.Request) -> web.Response:
        try:
            body, _entry, _fault, failure = await self._intake(request, count_only=True)
            if failure is not None:
                return failure
            parsed = parse_messages_request(body, self._model(body["model"]), count_only=True)
        except AnthropicError as error:
            return self._error(error)
        return self._json(
            200, {"input_tokens": parsed.input_tokens}, {"request-id": self._request_id()}
        )

    # --- models -------------------------------------------------------------------------

    @staticmethod
    def _model_object(model: AnthropicModel) -> dict[str, Any]:
        return {
            "type": "model",
            "id": model.response_name,
            "display_name": model.display_name or model.id,
            "created_at": model.created_at,
        }

    async def handle_models(self, request: web.Request) -> web.Response:
        try:
            self.record(request, None)
            self._check_headers(request)
        except AnthropicError as error:
            return self._error(error)
        listed = [m for m in self.catalogue.values() if m.id == m.response_name]
        listed.sort(key=lambda m: m.created_at, reverse=True)
        data = [self._model_object(model) for model in listed]
        page = {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
        return self._json(200, page, {"request-id": self._request_id()})

    async def handle_model(self, request: web.Request) -> web.Response:
        try:
            self.record(request, None)
            self._check_headers(request)
            model = self._model(request.match_info["model"])
        except AnthropicError as error:
            return self._error(error)
        return self._json(200, self._model_object(model), {"request-id": self._request_id()})


class _MessageRenderer:
    """Render one reply as a Messages API ``message`` or as its stream events."""

    def __init__(self, parsed: MessagesRequest, result: SimReply, message_id: str) -> None:
        self.parsed = parsed
        self.result = result
        self.message_id = message_id
        self.output_tokens = result.output_tokens + parsed.thinking_tokens
        self.stop_reason = _STOP_REASONS.get(result.finish, "end_turn")
        if result.tool_calls:
            self.stop_reason = "tool_use"

    def usage(self, output_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": self.result.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        if self.parsed.thinking is not None:
            usage["output_tokens_details"] = {"thinking_tokens": self.parsed.thinking_tokens}
        return usage

    def blocks(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.parsed.thinking is not None:
            text = self.parsed.thinking_text
            blocks.append({"type": "thinking", "thinking": text, "signature": _signature(text)})
        if self.result.tool_calls:
            for call in self.result.tool_calls:
                blocks.append(
                    {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
                )
        else:
            blocks.append({"type": "text", "text": self.result.text})
        return blocks

    def message(self, *, streaming: bool = False) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.parsed.model.response_name,
            "content": [] if streaming else self.blocks(),
            "stop_reason": None if streaming else self.stop_reason,
            "stop_sequence": None if streaming else self.result.stop_sequence,
            "usage": self.usage(1 if streaming else self.output_tokens),
        }

    def events(self) -> list[bytes]:
        events = [
            _event(
                "message_start", {"type": "message_start", "message": self.message(streaming=True)}
            )
        ]
        for index, block in enumerate(self.blocks()):
            block_events = self._block_events(index, block)
            if index == 0:
                # The API sends its first ping right after the first content_block_start.
                block_events.insert(1, _event("ping", {"type": "ping"}))
            events.extend(block_events)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.result.stop_sequence},
            "usage": {
                "input_tokens": self.result.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": self.output_tokens,
            },
        }
        events.append(_event("message_delta", delta))
        events.append(_event("message_stop", {"type": "message_stop"}))
        return events

    @staticmethod
    def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
        kind = block["type"]
        start: dict[str, Any]
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            start = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": piece} for piece in split_chunks(block["text"])
            ]
        elif kind == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            if block["thinking"]:
                deltas = [
                    {"type": "thinking_delta", "thinking": p}
                    for p in split_chunks(block["thinking"])
                ]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            arguments = orjson.dumps(block["input"]).decode()
            pieces = [
                arguments[i : i + _JSON_FRAGMENT] for i in range(0, len(arguments), _JSON_FRAGMENT)
            ]
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *pieces]]
        events = [
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        ]
        for delta in deltas:
            events.append(
                _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        return events
