"""Simulator of the Google Gemini API (AI Studio) and of Gemini on Vertex AI."""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from smartflow.sim.base import Fault, RecordedRequest, Simulator
from smartflow.sim.gemini_request import (
    GeminiModel,
    GoogleError,
    ParsedRequest,
    gemini_model,
    google_error_body,
    parse_generate_request,
    prompt_token_details,
)
from smartflow.sim.script import SimReply, count_tokens, reply, split_chunks

__all__ = ["DEFAULT_GEMINI_MODELS", "GeminiModel", "GeminiSimulator"]

logger = logging.getLogger(__name__)

DEFAULT_GEMINI_MODELS: tuple[str, ...] = (
    "gemini-2.5-flash",
    "gemini-2.5-pro",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "gemini-3-pro-preview",
    "gemini-3-flash-preview",
    "gemini-embedding-001",
    "text-embedding-004",
)

_HARM_CATEGORIES = (
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
)
_SIGNATURE_PREFIX = b"smartflow-sim-thought-signature:"
_SSE_SEPARATOR = b"\r\n\r\n"
_KEY_MISSING = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
_TOKEN_MISSING = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_TOKEN_INVALID = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_KEY_ON_VERTEX = (
    "API keys are not supported by this API. Expected OAuth2 access token or other "
    "authentication credentials that assert a principal. "
    "See https://cloud.google.com/docs/authentication"
)


@dataclass(slots=True)
class _Surface:
    """The API a request came through: the Gemini API or Vertex AI."""

    vertex: bool
    model: str
    resource: str
    """Model resource name as the surface spells it in messages."""
    version: str = "v1beta"


@dataclass(slots=True)
class _Outcome:
    """The simulated model's output for one request, before wire rendering."""

    pieces: list[dict[str, Any]] = field(default_factory=list)
    finish: str | None = "STOP"
    prompt_tokens: int = 0
    candidate_tokens: int = 0
    thought_tokens: int = 0
    ratings: list[dict[str, Any]] = field(default_factory=list)
    prompt_block: bool = False


class GeminiSimulator(Simulator):
    """Gemini API and Vertex AI ``generateContent`` simulator with the real wire format.

    ``api_keys`` and ``access_tokens`` list the accepted credentials; ``None`` accepts any
    non-empty value. A user prompt containing a key of ``prompt_block_words`` is blocked
    with ``promptFeedback.blockReason: SAFETY`` for the mapped harm category. One containing
    a key of ``response_block_words`` gets a candidate that stops with ``finishReason:
    SAFETY``. A request whose ``safetySettings`` sets that category to ``BLOCK_NONE`` or
    ``OFF`` is not blocked.
    """

    name = "gemini"

    def __init__(
        self,
        *,
        models: Iterable[str | GeminiModel] = DEFAULT_GEMINI_MODELS,
        api_keys: Collection[str] | None = None,
        access_tokens: Collection[str] | None = None,
        prompt_block_words: Mapping[str, str] | None = None,
        response_block_words: Mapping[str, str] | None = None,
        function_call_ids: bool = True,
        chunk_delay: float = 0.0,
        record_limit: int = 1000,
    ) -> None:
        super().__init__(chunk_delay=chunk_delay, record_limit=record_limit)
        resolved = [m if isinstance(m, GeminiModel) else gemini_model(m) for m in models]
        self.models: dict[str, GeminiModel] = {m.name: m for m in resolved}
        self.api_keys = None if api_keys is None else frozenset(api_keys)
        self.access_tokens = None if access_tokens is None else frozenset(access_tokens)
        self.prompt_block_words = dict(
            prompt_block_words
            if prompt_block_words is not None
            else {"sim-block-prompt": "HARM_CATEGORY_DANGEROUS_CONTENT"}
        )
        self.response_block_words = dict(
            response_block_words
            if response_block_words is not None
            else {"sim-block-response": "HARM_CATEGORY_HARASSMENT"}
        )
        self.function_call_ids = function_call_ids
        self._call_count = 0

    # --- routes --------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        for version in ("v1beta", "v1"):
            app.router.add_post(f"/{version}/models/{{name}}", self._gemini_api_post)
            app.router.add_get(f"/{version}/models", self._list_models)
            app.router.add_get(f"/{version}/models/{{name}}", self._get_model)
        vertex = (
            "/{version}/projects/{project}/locations/{location}/publishers/google/models/{name}"
        )
        app.router.add_post(vertex, self._vertex_post)

    def error_response(
        self, status: int, message: str, *, retry_after: float | None = None
    ) -> web.Response:
        details: list[dict[str, Any]] = []
        if retry_after is not None:
            if status == 429:
                message = f"{message} Please retry in {retry_after:g}s."
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{retry_after:g}s",
                }
            )
        return self._error(GoogleError(status, message, details))

    def _error(self, error: GoogleError) -> web.Response:
        return web.Response(
            status=error.status,
            body=orjson.dumps(google_error_body(error)),
            content_type="application/json",
            charset="UTF-8",
            headers=_common_headers(),
        )

    # --- authentication ------------------------------------------------------------

    def _check_api_key(self, request: web.Request) -> GoogleError | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return GoogleError(403, _KEY_MISSING)
        if self.api_keys is not None and key not in self.api_keys:
            return _invalid_key_error()
        return None

    def _check_bearer(self, request: web.Request) -> GoogleError | None:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not token:
            if request.headers.get("x-goog-api-key") or request.query.get("key"):
                return _auth_error(_KEY_ON_VERTEX, "CREDENTIALS_MISSING")
            return _auth_error(_TOKEN_MISSING, "CREDENTIALS_MISSING")
        if self.access_tokens is not None and token not in self.access_tokens:
            return _auth_error(_TOKEN_INVALID, "ACCESS_TOKEN_TYPE_UNSUPPORTED")
        return None

    # --- handlers ------------------------------------------------------------------

    async def _gemini_api_post(self, request: web.Request) -> web.StreamResponse:
        failure = self._check_api_key(request)
        if failure is not None:
            return self._error(failure)
        model, _, method = request.match_info["name"].partition(":")
        version = request.path.split("/")[1]
        surface = _Surface(vertex=False, model=model, resource=f"models/{model}", version=version)
        return await self._dispatch(request, surface, method)

    async def _vertex_post(self, request: web.Request) -> web.StreamResponse:
        failure = self._check_bearer(request)
        if failure is not None:
            return self._error(failure)
        info = request.match_info
        model, _, method = info["name"].partition(":")
        location = f"projects/{info['project']}/locations/{info['location']}"
        resource = f"{location}/publishers/google/models/{model}"
        surface = _Surface(vertex=True, model=model, resource=resource)
        if method not in ("generateContent", "streamGenerateContent", "countTokens"):
            # NOTE: Vertex embeddings (``:predict`` and ``:embedContent``) are not simulated.
            return self._error(GoogleError(404, f"Method {method} is not found for {resource}."))
        return await self._dispatch(request, surface, method)

    async def _dispatch(
        self, request: web.Request, surface: _Surface, method: str
    ) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            self.record(request, raw.decode("utf-8", "replace"))
            return self._error(GoogleError(400, f"Invalid JSON payload received. {exc}"))
        entry = self.record(request, body)
        fault = self.take_fault(surface.model, request.path)
        failure = await self.apply_fault_before_response(fault)
        if failure is not None:
            return failure
        try:
            model = self._find_model(surface, method)
            if not isinstance(body, dict):
                raise GoogleError(400, "Invalid JSON payload received. Expected an object.")
            if method in ("generateContent", "streamGenerateContent"):
                parsed = parse_generate_request(body, model, vertex=surface.vertex)
                outcome = self._run_model(parsed, model)
                if method == "generateContent":
                    return self._json(self._render_full(outcome, parsed, surface))
                return await self._stream(request, entry, fault, outcome, parsed, surface)
            if method == "countTokens":
                return self._json(_count_tokens(body, model, surface.vertex))
            if method == "embedContent":
                return self._json({"embedding": _embed_one(body, model, "")})
            if method == "batchEmbedContents":
                return self._json(_embed_batch(body, model, surface.model))
        except GoogleError as error:
            logger.info("gemini: request %s rejected: %s", entry.id, error.message)
            return self._error(error)
        return self._error(
            GoogleError(404, f"Method {method} is not found for {surface.resource}.")
        )

    def _find_model(self, surface: _Surface, method: str) -> GeminiModel:
        model = self.models.get(surface.model)
        embedding_method = method in ("embedContent", "batchEmbedContents")
        supported = (
            model is not None and (model.embedding_dimensions is not None) == embedding_method
        )
        if model is not None and method == "countTokens":
            supported = True
        if model is None or not supported:
            if surface.vertex:
                raise GoogleError(
                    404,
                    f"Publisher Model `{surface.resource}` was not found or your project does "
                    "not have access to it. Please ensure you are using a valid model version. "
                    "For more information, see: "
                    "https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions",
                )
            raise GoogleError(
                404,
                f"{surface.resource} is not found for API version {surface.version}, or is not "
                f"supported for {method}. Call ListModels to see the list of available models "
                "and their supported methods.",
            )
        return model

    async def _list_models(self, request: web.Request) -> web.Response:
        failure = self._check_api_key(request)
        if failure is not None:
            return self._error(failure)
        self.record(request, None)
        try:
            size = int(request.query.get("pageSize", "50"))
            offset = int(request.query.get("pageToken") or 0)
        except ValueError:
            return self._error(GoogleError(400, "Invalid value for pageSize or pageToken."))
        size = max(1, min(size, 1000))
        names = list(self.models)
        body: dict[str, Any] = {
            "models": [self.models[n].describe() for n in names[offset : offset + size]]
        }
        if offset + size < len(names):
            body["nextPageToken"] = str(offset + size)
        return self._json(body)

    async def _get_model(self, request: web.Request) -> web.Response:
        failure = self._check_api_key(request)
        if failure is not None:
            return self._error(failure)
        self.record(request, None)
        model = self.models.get(request.match_info["name"])
        if model is None:
            name = request.match_info["name"]
            version = request.path.split("/")[1]
            return self._error(
                GoogleError(404, f"models/{name} is not found for API version {version}.")
            )
        return self._json(model.describe())

    def _json(self, body: Any) -> web.Response:
        return web.Response(
            body=orjson.dumps(body),
            content_type="application/json",
            charset="UTF-8",
            headers=_common_headers(),
        )

    # --- the simulated model -------------------------------------------------------

    def _run_model(self, parsed: ParsedRequest, model: GeminiModel) -> _Outcome:
        outcome = _Outcome(ratings=_negligible_ratings())
        blocked = self._blocked_category(parsed, self.prompt_block_words)
        text_tokens = sum(count_tokens(t) for t in parsed.sim_input.texts)
        outcome.prompt_tokens = max(1, text_tokens + 3 * parsed.sim_input.image_count)
        if blocked is not None:
            outcome.prompt_block = True
            outcome.finish = None
            outcome.ratings = _ratings_with(blocked, blocked=False)
            return outcome

        result = reply(parsed.sim_input, id_prefix="fc_", call_offset=self._call_count)
        self._call_count += len(result.tool_calls)
        outcome.prompt_tokens = result.input_tokens
        thought = _thought_text(parsed, model)
        outcome.thought_tokens = count_tokens(thought) if thought else 0
        budget = parsed.max_output_tokens
        if budget is not None and outcome.thought_tokens:
            # Thinking tokens count against maxOutputTokens on thinking models.
            _limit_reply(result, parsed, budget - outcome.thought_tokens)
        if thought and parsed.include_thoughts:
            outcome.pieces.append({"text": thought, "thought": True})
        outcome.pieces.extend(self._answer_pieces(result, parsed, model))
        outcome.finish = "MAX_TOKENS" if result.finish == "length" else "STOP"
        outcome.candidate_tokens = result.output_tokens

        unsafe = self._blocked_category(parsed, self.response_block_words)
        if unsafe is not None:
            visible = [p for p in outcome.pieces if not p.get("thought")]
            partial = visible[: max(1, len(visible) // 2)] if visible else []
            outcome.pieces = partial
            outcome.candidate_tokens = sum(count_tokens(p.get("text", "")) for p in partial)
            outcome.finish = "SAFETY"
            outcome.ratings = _ratings_with(unsafe, blocked=True)
        return outcome

    def _answer_pieces(
        self, result: SimReply, parsed: ParsedRequest, model: GeminiModel
    ) -> list[dict[str, Any]]:
        if result.tool_calls:
            pieces = []
            for number, call in enumerate(result.tool_calls):
                function_call: dict[str, Any] = {"name": call.name, "args": call.arguments}
                if self.function_call_ids:
                    function_call["id"] = call.id
                part: dict[str, Any] = {"functionCall": function_call}
                if model.signatures and number == 0:
                    signature = _SIGNATURE_PREFIX + call.id.encode()
                    part["thoughtSignature"] = base64.b64encode(signature).decode()
                pieces.append(part)
            return pieces
        text = result.text
        if parsed.enum_values:
            text = parsed.enum_values[0]
            result.output_tokens = count_tokens(text)
        if not text:
            return []
        return [{"text": chunk} for chunk in split_chunks(text)]

    def _blocked_category(self, parsed: ParsedRequest, words: Mapping[str, str]) -> str | None:
        prompt = parsed.user_text.lower()
        for word, category in words.items():
            if word.lower() in prompt:
                threshold = parsed.safety_thresholds.get(category, "")
                if threshold in ("BLOCK_NONE", "OFF"):
                    return None
                return category
        return None

    # --- rendering -----------------------------------------------------------------

    def _envelope(self, parsed: ParsedRequest, surface: _Surface) -> dict[str, Any]:
        response_id = _response_id(self.next_id())
        envelope: dict[str, Any] = {"modelVersion": surface.model, "responseId": response_id}
        if surface.vertex:
            envelope["createTime"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        return envelope

    def _usage(
        self, outcome: _Outcome, parsed: ParsedRequest, surface: _Surface, candidates: int | None
    ) -> dict[str, Any]:
        output = (
            outcome.candidate_tokens * parsed.candidate_count if candidates is None else candidates
        )
        usage: dict[str, Any] = {"promptTokenCount": outcome.prompt_tokens}
        if output:
            usage["candidatesTokenCount"] = output
        usage["totalTokenCount"] = outcome.prompt_tokens + output + outcome.thought_tokens
        usage["promptTokensDetails"] = prompt_token_details(parsed, outcome.prompt_tokens)
        if outcome.thought_tokens:
            usage["thoughtsTokenCount"] = outcome.thought_tokens
        if surface.vertex:
            usage["trafficType"] = "ON_DEMAND"
        return usage

    def _render_full(
        self, outcome: _Outcome, parsed: ParsedRequest, surface: _Surface
    ) -> dict[str, Any]:
        envelope = self._envelope(parsed, surface)
        if outcome.prompt_block:
            return {
                "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": outcome.ratings},
                "usageMetadata": self._usage(outcome, parsed, surface, 0),
                **envelope,
            }
        parts = [] if outcome.finish == "SAFETY" else _merge_text_parts(outcome.pieces)
        candidates = [
            _candidate(index, parts, outcome.finish, outcome.ratings)
            for index in range(parsed.candidate_count)
        ]
        return {
            "candidates": candidates,
            "usageMetadata": self._usage(outcome, parsed, surface, None),
            **envelope,
        }

    def _stream_chunks(
        self, outcome: _Outcome, parsed: ParsedRequest, surface: _Surface
    ) -> list[dict[str, Any]]:
        envelope = self._envelope(parsed, surface)
        if outcome.prompt_block:
            return [self._render_full(outcome, parsed, surface)]
        groups: list[list[dict[str, Any]]] = []
        for piece in outcome.pieces:
            if "functionCall" in piece and groups and "functionCall" in groups[-1][-1]:
                groups[-1].append(piece)
            else:
                groups.append([piece])
        if outcome.finish == "SAFETY" or not groups:
            groups.append([])
        chunks: list[dict[str, Any]] = []
        emitted = 0
        for number, group in enumerate(groups):
            last = number == len(groups) - 1
            emitted += sum(count_tokens(p.get("text", "")) for p in group if not p.get("thought"))
            finish = outcome.finish if last else None
            ratings = outcome.ratings if last else None
            candidates = [
                _candidate(index, group, finish, ratings) for index in range(parsed.candidate_count)
            ]
            output = (outcome.candidate_tokens if last else emitted) * parsed.candidate_count
            chunks.append(
                {
                    "candidates": candidates,
                    "usageMetadata": self._usage(outcome, parsed, surface, output),
                    **envelope,
                }
            )
        return chunks

    async def _stream(
        self,
        request: web.Request,
        entry: RecordedRequest,
        fault: Fault | None,
        outcome: _Outcome,
        parsed: ParsedRequest,
        surface: _Surface,
    ) -> web.StreamResponse:
        chunks = self._stream_chunks(outcome, parsed, surface)
        error_body = google_error_body(
            GoogleError(500, (fault.message if fault else None) or "Internal error encountered.")
        )
        sse = request.query.get("alt") == "sse"
        headers = _common_headers()
        if sse:
            headers["Content-Type"] = "text/event-stream"
            events = [b"data: " + orjson.dumps(c) + _SSE_SEPARATOR for c in chunks]
            error_event = b"data: " + orjson.dumps(error_body) + _SSE_SEPARATOR
        else:
            # Without alt=sse the API streams one JSON array, element by element.
            headers["Content-Type"] = "application/json; charset=UTF-8"
            events = [
                (b"[" if i == 0 else b",\r\n") + orjson.dumps(c) for i, c in enumerate(chunks)
            ]
            events.append(b"]")
            error_event = b",\r\n" + orjson.dumps(error_body) + b"]"
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        await self.write_events(request, response, entry, events, fault, error_event)
        return response


# --- helpers -------------------------------------------------------------------------


def _common_headers() -> dict[str, str]:
    return {"Vary": "Origin, X-Origin, Referer", "Server-Timing": "gfet4t7; dur=42"}


def _invalid_key_error() -> GoogleError:
    message = "API key not valid. Please pass a valid API key."
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": message,
        },
    ]
    return GoogleError(400, message, details)


def _auth_error(message: str, reason: str) -> GoogleError:
    detail = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": "aiplatform.googleapis.com"},
    }
    return GoogleError(401, message, [detail])


def _response_id(serial: str) -> str:
    digest = hashlib.sha256(f"gemini-sim-{serial}".encode()).digest()
    return base64.urlsafe_b64encode(digest)[:23].decode()


def _negligible_ratings() -> list[dict[str, Any]]:
    # NOTE: Gemini 2.5 and newer often omit safetyRatings on unflagged candidates; the
    # simulator always sends them so that clients must accept both.
    return [{"category": c, "probability": "NEGLIGIBLE"} for c in _HARM_CATEGORIES]


def _ratings_with(category: str, *, blocked: bool) -> list[dict[str, Any]]:
    names = (
        list(_HARM_CATEGORIES) if category in _HARM_CATEGORIES else [*_HARM_CATEGORIES, category]
    )
    ratings = []
    for name in names:
        rating: dict[str, Any] = {"category": name, "probability": "NEGLIGIBLE"}
        if name == category:
            rating["probability"] = "HIGH"
            if blocked:
                rating["blocked"] = True
        ratings.append(rating)
    return ratings


def _candidate(
    index: int,
    parts: list[dict[str, Any]],
    finish: str | None,
    ratings: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    candidate: dict[str, Any] = {}
    if parts or finish != "SAFETY":
        candidate["content"] = {"parts": parts, "role": "model"} if parts else {"role": "model"}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = index
    if ratings is not None:
        candidate["safetyRatings"] = ratings
    return candidate


def _merge_text_parts(pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for piece in pieces:
        previous = parts[-1] if parts else None
        same_kind = previous is not None and set(previous) == set(piece)
        if (
            same_kind
            and previous is not None
            and "text" in piece
            and "thoughtSignature" not in piece
        ):
            previous["text"] += piece["text"]
        else:
            parts.append(dict(piece))
    return parts


def _thought_text(parsed: ParsedRequest, model: GeminiModel) -> str:
    if not model.thinks(parsed.thinking_budget, parsed.thinking_level):
        return ""
    topic = parsed.sim_input.last_user_text[:80] or "the request"
    text = f"**Considering the request**\n\nThe user asked about: {topic}. I will answer directly."
    if parsed.thinking_budget is not None and parsed.thinking_budget > 0:
        words = text.split(" ")
        while len(words) > 1 and count_tokens(" ".join(words)) > parsed.thinking_budget:
            words.pop()
        text = " ".join(words)
    return text


def _limit_reply(result: SimReply, parsed: ParsedRequest, limit: int) -> None:
    """Truncate the visible reply to ``limit`` tokens, the part of the budget thinking left."""
    if result.tool_calls or count_tokens(result.text) <= limit:
        return
    if limit <= 0:
        result.text = ""
    else:
        tokens = list(re.finditer(r"\w+|[^\w\s]", result.text))
        result.text = result.text[: tokens[limit - 1].end()]
    result.finish = "length"
    result.output_tokens = count_tokens(result.text)


def _count_tokens(body: dict[str, Any], model: GeminiModel, vertex: bool) -> dict[str, Any]:
    inner = body.get("generateContentRequest") or body.get("generate_content_request")
    request_body = inner if isinstance(inner, dict) else {"contents": body.get("contents")}
    if not request_body.get("contents"):
        raise GoogleError(400, "* CountTokensRequest.contents: contents is not specified\n")
    parsed = parse_generate_request(
        {k: v for k, v in request_body.items() if k != "model"}, model, vertex=vertex
    )
    total = sum(count_tokens(t) for t in parsed.sim_input.texts) + 3 * parsed.sim_input.image_count
    return {"totalTokens": total, "promptTokensDetails": prompt_token_details(parsed, total)}


def _embed_values(text: str, dimensions: int) -> list[float]:
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((byte - 127.5) / 127.5 for byte in digest)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _embed_one(body: Any, model: GeminiModel, where: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise GoogleError(400, f"Invalid value at '{where or 'request'}' (TYPE_MESSAGE).")
    content = body.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not parts:
        raise GoogleError(400, f"* EmbedContentRequest.{where}content: content is not specified\n")
    text = " ".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
    dimensions = model.embedding_dimensions or 768
    requested = body.get("outputDimensionality", body.get("output_dimensionality"))
    if requested is not None:
        if (
            not isinstance(requested, int)
            or isinstance(requested, bool)
            or not 1 <= requested <= dimensions
        ):
            raise GoogleError(
                400,
                f"* EmbedContentRequest.{where}output_dimensionality: must be between 1 and "
                f"{dimensions}, got {requested!r}.\n",
            )
        dimensions = requested
    return {"values": _embed_values(text, dimensions)}


def _embed_batch(body: dict[str, Any], model: GeminiModel, name: str) -> dict[str, Any]:
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise GoogleError(400, "* BatchEmbedContentsRequest.requests: requests is not specified\n")
    embeddings = []
    for index, item in enumerate(requests):
        item_model = item.get("model") if isinstance(item, dict) else None
        if item_model not in (None, f"models/{name}", name):
            raise GoogleError(
                400,
                f"* BatchEmbedContentsRequest.requests[{index}].model: the model of every "
                f"request must be models/{name}, got {item_model!r}.\n",
            )
        embeddings.append(_embed_one(item, model, f"requests[{index}]."))
    return {"embeddings": embeddings}
