"""Simulator of the Cohere v2 API: ``POST /v2/chat`` (streamed and not) and ``POST /v2/embed``."""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import struct
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from smartflow.sim.base import Simulator
from smartflow.sim.cohere_request import (
    CohereError,
    CohereModel,
    EmbedRequest,
    ParsedChat,
    cohere_model,
    parse_chat_request,
    parse_embed_request,
)
from smartflow.sim.script import SimReply, count_tokens, reply, split_chunks

__all__ = ["DEFAULT_COHERE_MODELS", "CohereModel", "CohereSimulator"]

logger = logging.getLogger(__name__)

DEFAULT_COHERE_MODELS: tuple[str, ...] = (
    "command-a-03-2025",
    "command-a-vision-07-2025",
    "command-a-reasoning-08-2025",
    "command-r7b-12-2024",
    "command-r-plus-08-2024",
    "command-r-08-2024",
    "embed-v4.0",
    "embed-english-v3.0",
    "embed-multilingual-v3.0",
)

# Estimate of the tokens Cohere's prompt template adds to the billed input, so that the raw
# ``usage.tokens.input_tokens`` exceeds ``usage.billed_units.input_tokens`` as in real replies.
_TEMPLATE_TOKENS = 200
_FINISH_REASONS = {
    "stop": "COMPLETE",
    "length": "MAX_TOKENS",
    "stop_sequence": "STOP_SEQUENCE",
    "tool_calls": "TOOL_CALL",
}
_DEFAULT_MESSAGES = {
    429: (
        "You are using a Trial key, which is limited to 20 API calls / minute. You can continue "
        "to use the Trial key for free or upgrade to a Production key with higher rate limits."
    ),
    500: "internal server error, this has been reported to our developers",
    503: "service unavailable: the model is overloaded, please try again later",
}


@dataclass(slots=True)
class _ChatOutput:
    """The assistant message of one chat request, before wire rendering."""

    reply: SimReply
    thinking: str = ""
    tool_plan: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    citations: list[dict[str, Any]] = field(default_factory=list)


class CohereSimulator(Simulator):
    """Cohere Chat v2 and Embed v2 simulator.

    ``api_keys`` lists the accepted bearer keys; ``None`` accepts any non-empty key.
    """

    name = "cohere"

    def __init__(
        self,
        *,
        models: Iterable[str | CohereModel] = DEFAULT_COHERE_MODELS,
        api_keys: Collection[str] | None = None,
        chunk_delay: float = 0.0,
        record_limit: int = 1000,
    ) -> None:
        super().__init__(chunk_delay=chunk_delay, record_limit=record_limit)
        resolved = [m if isinstance(m, CohereModel) else cohere_model(m) for m in models]
        self.models: dict[str, CohereModel] = {m.name: m for m in resolved}
        self.api_keys = None if api_keys is None else frozenset(api_keys)
        self._call_count = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/chat", self._chat)
        app.router.add_post("/v2/embed", self._embed)

    def error_response(
        self, status: int, message: str, *, retry_after: float | None = None
    ) -> web.Response:
        headers = _headers()
        if retry_after is not None:
            headers["Retry-After"] = str(max(0, math.ceil(retry_after)))
        text = (
            _DEFAULT_MESSAGES.get(status, message) if message.startswith("Simulated") else message
        )
        body = {"id": str(uuid.uuid4()), "message": text}
        return web.Response(
            status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
        )

    # --- handlers ------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not token:
            return self.error_response(401, "no api key supplied")
        if self.api_keys is not None and token not in self.api_keys:
            return self.error_response(401, "invalid api token")
        return None

    async def _read(self, request: web.Request) -> tuple[Any, web.Response | None]:
        raw = await request.read()
        try:
            return orjson.loads(raw), None
        except orjson.JSONDecodeError:
            self.record(request, raw.decode("utf-8", "replace"))
            return None, self.error_response(400, "invalid request: the body is not valid JSON.")

    def _find_model(self, body: Any) -> CohereModel:
        name = body.get("model") if isinstance(body, dict) else None
        if not name:
            raise CohereError(400, "invalid request: model is required.")
        model = self.models.get(name)
        if model is None:
            raise CohereError(
                404,
                f"model '{name}' not found, make sure the correct model ID was used and that you "
                "have access to the model.",
            )
        return model

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        failure = self._authenticate(request)
        if failure is not None:
            return failure
        body, failure = await self._read(request)
        if failure is not None:
            return failure
        entry = self.record(request, body)
        model_name = body.get("model") if isinstance(body, dict) else None
        fault = self.take_fault(model_name, request.path)
        failure = await self.apply_fault_before_response(fault)
        if failure is not None:
            return failure

        try:
            parsed = parse_chat_request(body, self._find_model(body))
        except CohereError as error:
            logger.info("cohere: request %s rejected: %s", entry.id, error.message)
            return self.error_response(error.status, error.message)
        output = self._run_model(parsed)
        message_id = str(uuid.uuid4())
        if not parsed.stream:
            return self._json(_full_response(message_id, output))

        events = [_sse(event) for event in _stream_events(message_id, output)]
        error_message = (fault.message if fault else None) or "internal server error"
        error_event = _sse(
            {
                "type": "message-end",
                "delta": {"error": error_message, "finish_reason": "ERROR", "usage": None},
            }
        )
        response = web.StreamResponse(status=200, headers=_headers())
        response.content_type = "text/event-stream"
        await response.prepare(request)
        await self.write_events(request, response, entry, events, fault, error_event)
        return response

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        failure = self._authenticate(request)
        if failure is not None:
            return failure
        body, failure = await self._read(request)
        if failure is not None:
            return failure
        entry = self.record(request, body)
        model_name = body.get("model") if isinstance(body, dict) else None
        failure = await self.apply_fault_before_response(self.take_fault(model_name, request.path))
        if failure is not None:
            return failure
        try:
            parsed = parse_embed_request(body, self._find_model(body))
        except CohereError as error:
            logger.info("cohere: request %s rejected: %s", entry.id, error.message)
            return self.error_response(error.status, error.message)
        return self._json(_embed_response(parsed))

    def _json(self, body: Any) -> web.Response:
        return web.Response(
            body=orjson.dumps(body), content_type="application/json", headers=_headers()
        )

    # --- the simulated model -------------------------------------------------------

    def _run_model(self, parsed: ParsedChat) -> _ChatOutput:
        result = reply(parsed.sim_input, id_prefix="call", call_offset=self._call_count)
        self._call_count += len(result.tool_calls)
        output = _ChatOutput(reply=result)
        if parsed.thinking:
            output.thinking = (
                f"The user asked: {parsed.sim_input.last_user_text[:80]}. I will answer."
            )
            if parsed.thinking_budget is not None:
                words = output.thinking.split(" ")
                while len(words) > 1 and count_tokens(" ".join(words)) > parsed.thinking_budget:
                    words.pop()
                output.thinking = " ".join(words)
        if result.tool_calls:
            names = sorted({call.name for call in result.tool_calls})
            output.tool_plan = f"I will use the {' and '.join(names)} tool to answer the request."
            for call in result.tool_calls:
                digest = hashlib.sha256(call.id.encode()).hexdigest()[:12]
                output.tool_calls.append(
                    {
                        "id": f"{call.name}_{digest}",
                        "type": "function",
                        "function": {
                            "name": call.name,
                            "arguments": orjson.dumps(call.arguments).decode(),
                        },
                    }
                )
        elif parsed.documents and parsed.citations and result.text:
            output.citations.append(_citation(result.text, parsed.documents[0]))
        extra = count_tokens(output.thinking) + count_tokens(output.tool_plan)
        result.output_tokens += extra
        return output


# --- rendering -----------------------------------------------------------------------


def _headers() -> dict[str, str]:
    return {"x-debug-trace-id": uuid.uuid4().hex}


def _sse(event: dict[str, Any]) -> bytes:
    name = str(event["type"]).encode()
    return b"event: " + name + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _usage(output: _ChatOutput) -> dict[str, Any]:
    result = output.reply
    return {
        "billed_units": {
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
        },
        "tokens": {
            "input_tokens": result.input_tokens + _TEMPLATE_TOKENS,
            "output_tokens": result.output_tokens,
        },
        "cached_tokens": 0,
    }


def _citation(text: str, document: dict[str, Any]) -> dict[str, Any]:
    end = min(len(text), text.find(".") + 1 if "." in text else len(text))
    identifier = str(document.get("id", "doc:0"))
    return {
        "start": 0,
        "end": end,
        "text": text[:end],
        "sources": [{"type": "document", "id": identifier, "document": document}],
        "type": "TEXT_CONTENT",
        "content_index": 0,
    }


def _full_response(message_id: str, output: _ChatOutput) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant"}
    if output.tool_calls:
        message["tool_plan"] = output.tool_plan
        message["tool_calls"] = output.tool_calls
    else:
        content = []
        if output.thinking:
            content.append({"type": "thinking", "thinking": output.thinking})
        content.append({"type": "text", "text": output.reply.text})
        message["content"] = content
        if output.citations:
            message["citations"] = output.citations
    return {
        "id": message_id,
        "message": message,
        "finish_reason": _FINISH_REASONS[output.reply.finish],
        "usage": _usage(output),
    }


def _content_events(index: int, kind: str, text: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {
            "type": "content-start",
            "index": index,
            "delta": {"message": {"content": {"type": kind, kind: ""}}},
        }
    ]
    for piece in split_chunks(text) if text else []:
        events.append(
            {
                "type": "content-delta",
                "index": index,
                "delta": {"message": {"content": {kind: piece}}},
            }
        )
    return events


def _stream_events(message_id: str, output: _ChatOutput) -> list[dict[str, Any]]:
    start = {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}
    events: list[dict[str, Any]] = [
        {"id": message_id, "type": "message-start", "delta": {"message": start}}
    ]
    if output.tool_calls:
        for piece in split_chunks(output.tool_plan, size=2):
            events.append({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": piece}}})
        for index, call in enumerate(output.tool_calls):
            head = {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            events.append(
                {
                    "type": "tool-call-start",
                    "index": index,
                    "delta": {"message": {"tool_calls": head}},
                }
            )
            arguments = call["function"]["arguments"]
            for offset in range(0, len(arguments), 8):
                fragment = {"function": {"arguments": arguments[offset : offset + 8]}}
                events.append(
                    {
                        "type": "tool-call-delta",
                        "index": index,
                        "delta": {"message": {"tool_calls": fragment}},
                    }
                )
            events.append({"type": "tool-call-end", "index": index})
    else:
        index = 0
        if output.thinking:
            events.extend(_content_events(index, "thinking", output.thinking))
            events.append({"type": "content-end", "index": index})
            index += 1
        events.extend(_content_events(index, "text", output.reply.text))
        for number, citation in enumerate(output.citations):
            cited = citation | {"content_index": index}
            events.append(
                {
                    "type": "citation-start",
                    "index": number,
                    "delta": {"message": {"citations": cited}},
                }
            )
            events.append({"type": "citation-end", "index": number})
        events.append({"type": "content-end", "index": index})
    finish = _FINISH_REASONS[output.reply.finish]
    events.append(
        {"type": "message-end", "delta": {"finish_reason": finish, "usage": _usage(output)}}
    )
    return events


def _embed_vector(text: str, dimensions: int) -> list[float]:
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((byte - 127.5) / 127.5 for byte in digest)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _pack_bits(vector: list[float], signed: bool) -> list[int]:
    packed = []
    for offset in range(0, len(vector), 8):
        byte = 0
        for value in vector[offset : offset + 8]:
            byte = (byte << 1) | (1 if value > 0 else 0)
        packed.append(byte - 128 if signed else byte)
    return packed


def _embed_response(request: EmbedRequest) -> dict[str, Any]:
    inputs = request.texts + request.images
    vectors = [_embed_vector(item, request.dimensions) for item in inputs]
    embeddings: dict[str, Any] = {}
    for kind in request.types:
        if kind == "float":
            embeddings["float"] = vectors
        elif kind == "int8":
            embeddings["int8"] = [
                [max(-128, min(127, round(v * 127))) for v in vec] for vec in vectors
            ]
        elif kind == "uint8":
            embeddings["uint8"] = [
                [max(0, min(255, round(v * 127) + 128)) for v in vec] for vec in vectors
            ]
        elif kind in ("binary", "ubinary"):
            embeddings[kind] = [_pack_bits(vec, kind == "binary") for vec in vectors]
        else:
            embeddings["base64"] = [
                base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() for vec in vectors
            ]
    billed: dict[str, Any] = {"input_tokens": sum(count_tokens(t) for t in request.texts)}
    if request.images:
        billed["images"] = len(request.images)
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "embeddings": embeddings,
        "texts": request.texts,
        "meta": {"api_version": {"version": "2"}, "billed_units": billed},
        "response_type": "embeddings_by_type",
    }
    if request.images:
        body["images"] = [
            {"width": 1, "height": 1, "format": "png", "bit_depth": 8} for _ in request.images
        ]
    return body
