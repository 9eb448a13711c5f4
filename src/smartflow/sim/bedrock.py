"""Simulator of the Amazon Bedrock runtime API (bedrock-runtime, API version 2023-09-30).

Routes, all ``POST /model/{modelId}/...`` with the model id percent-encoded:

- ``converse`` and ``converse-stream`` (binary ``application/vnd.amazon.eventstream``);
- ``invoke`` and ``invoke-with-response-stream`` with Claude's native Messages body;
- ``invoke`` with Titan Text Embeddings and Cohere Embed v3 bodies.

Every request must carry a SigV4 ``Authorization`` header signed for service
``bedrock`` with one of the configured access keys, or ``Authorization: Bearer`` with a
configured Bedrock API key. Errors use Bedrock's shape: the type in ``x-amzn-ErrorType``
and ``{"message": ...}`` in the body.

Faults: a ``status`` fault returns the exception mapped from that status, and
``error_types`` overrides the mapping (for example ``{429: "ModelNotReadyException"}``).
``error_after`` sends an exception event of type ``stream_error_type`` mid-stream, and
``disconnect_after`` closes the connection after that many stream events.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from smartflow.sim.base import Fault, RecordedRequest, Simulator
from smartflow.sim.bedrock_anthropic import (
    anthropic_message,
    anthropic_stream_chunks,
    parse_anthropic,
    run_anthropic,
)
from smartflow.sim.bedrock_auth import AuthFailure, verify_api_key, verify_sigv4
from smartflow.sim.bedrock_converse_input import parse_converse
from smartflow.sim.bedrock_converse_output import (
    converse_body,
    converse_stream_events,
    run_converse,
)
from smartflow.sim.bedrock_embeddings import cohere_embeddings, titan_embeddings
from smartflow.sim.bedrock_errors import (
    ERROR_STATUS,
    ERROR_TYPE_BY_STATUS,
    STREAM_EXCEPTION_TYPES,
    BedrockError,
    validation_error,
)
from smartflow.sim.bedrock_eventstream import exception_frame
from smartflow.sim.bedrock_models import (
    DEFAULT_MODELS,
    END_OF_LIFE_MODELS,
    ModelSpec,
    resolve_model_id,
    spec_for,
)

__all__ = ["DEFAULT_ACCESS_KEY_ID", "DEFAULT_SECRET_ACCESS_KEY", "BedrockSimulator"]

logger = logging.getLogger(__name__)

# The example key pair from the AWS documentation: fake, and never valid on AWS.
DEFAULT_ACCESS_KEY_ID = "AKIDEXAMPLE"
DEFAULT_SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

_OPERATIONS = ("converse", "converse-stream", "invoke", "invoke-with-response-stream")
_BEDROCK_ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
_AUTH_ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.coral.service/"
_EVENT_STREAM = "application/vnd.amazon.eventstream"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _token(seed: str, length: int) -> str:
    """Return ``length`` base62 characters derived from ``seed``, for ids."""
    number = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(chars)


class BedrockSimulator(Simulator):
    """Serves the bedrock-runtime REST API for the configured models and credentials."""

    name = "bedrock"

    def __init__(
        self,
        *,
        models: Iterable[str | ModelSpec] | None = None,
        credentials: Mapping[str, str] | None = None,
        api_keys: Iterable[str] = (),
        region: str | None = None,
        stream_error_type: str = "modelStreamErrorException",
        error_types: Mapping[int, str] | None = None,
        chunk_delay: float = 0.0,
        record_limit: int = 1000,
    ) -> None:
        """Configure the simulator.

        ``credentials`` maps access key ids to secret keys for SigV4 (default: the AWS
        documentation's example pair). ``api_keys`` lists accepted Bedrock API keys.
        ``region``, when set, is the only region accepted in a credential scope.
        """
        super().__init__(chunk_delay=chunk_delay, record_limit=record_limit)
        if stream_error_type not in STREAM_EXCEPTION_TYPES:
            raise ValueError(f"unknown stream exception type {stream_error_type!r}")
        chosen = models if models is not None else DEFAULT_MODELS.values()
        specs = [spec if isinstance(spec, ModelSpec) else spec_for(spec) for spec in chosen]
        self.models: dict[str, ModelSpec] = {spec.model_id: spec for spec in specs}
        self.credentials = dict(credentials or {DEFAULT_ACCESS_KEY_ID: DEFAULT_SECRET_ACCESS_KEY})
        self.api_keys = frozenset(api_keys)
        self.region = region
        self.stream_error_type = stream_error_type
        self.error_types: dict[int, str] = dict(error_types or {})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/model/{tail:.+}", self._handle)

    # --- errors --------------------------------------------------------------------------

    def error_response(
        self, status: int, message: str, *, retry_after: float | None = None
    ) -> web.Response:
        """Render an error status as the Bedrock exception mapped to it."""
        default = "InternalServerException" if status >= 500 else "ValidationException"
        error_type = self.error_types.get(status) or ERROR_TYPE_BY_STATUS.get(status, default)
        body: dict[str, Any] = {"message": message}
        if error_type == "ModelErrorException":
            body["originalStatusCode"] = 500
        # NOTE: Bedrock does not document a Retry-After header. It is sent only when a
        # fault sets retry_after, so that clients' handling of it can be tested.
        extra = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        return self._json_error(status, error_type, body, _BEDROCK_ERROR_NAMESPACE, extra)

    def _json_error(
        self,
        status: int,
        error_type: str,
        body: dict[str, Any],
        namespace: str,
        extra_headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        headers = {
            "x-amzn-ErrorType": f"{error_type}:{namespace}",
            "x-amzn-RequestId": str(uuid.uuid4()),
            **(extra_headers or {}),
        }
        return web.Response(
            status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
        )

    def _bedrock_error(self, error: BedrockError, entry: RecordedRequest | None) -> web.Response:
        logger.info(
            "bedrock: rejected request %s with %s: %s",
            entry.id if entry else "-",
            error.error_type,
            error.message,
        )
        status = error.status or ERROR_STATUS.get(error.error_type, 400)
        body = {"message": error.message}
        return self._json_error(status, error.error_type, body, _BEDROCK_ERROR_NAMESPACE)

    # --- request handling ----------------------------------------------------------------

    def _authenticate(self, request: web.Request, body: bytes) -> None:
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            verify_api_key(authorization, self.api_keys)
            return
        verify_sigv4(
            method=request.method,
            url=f"{request.scheme}://{request.host}{request.raw_path}",
            headers=request.headers,
            body=body,
            secrets=self.credentials,
            region=self.region,
        )

    def _resolve_model(self, raw_id: str) -> ModelSpec:
        base_id, via_profile = resolve_model_id(raw_id)
        if base_id in END_OF_LIFE_MODELS:
            raise BedrockError(
                "ResourceNotFoundException",
                "This model version has reached the end of its life. Please refer to the AWS "
                "documentation for more details.",
            )
        spec = self.models.get(base_id)
        if spec is None:
            raise validation_error("The provided model identifier is invalid.")
        if spec.profile_only and not via_profile:
            raise validation_error(
                f"Invocation of model ID {base_id} with on-demand throughput isn\u2019t supported. "
                "Retry your request with the ID or ARN of an inference profile that contains "
                "this model."
            )
        return spec

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Authenticate, route and serve one bedrock-runtime request."""
        started = time.monotonic()
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        entry = self.record(request, body)

        try:
            self._authenticate(request, raw)
        except AuthFailure as failure:
            logger.info("bedrock: request %s failed authentication: %s", entry.id, failure)
            error_body = {failure.body_key: failure.message}
            return self._json_error(
                failure.status, failure.error_type, error_body, _AUTH_ERROR_NAMESPACE
            )

        path = request.raw_path.split("?", 1)[0]
        encoded_model, _, operation = path.removeprefix("/model/").rpartition("/")
        raw_id = unquote(encoded_model)
        if operation not in _OPERATIONS or not raw_id:
            logger.info("bedrock: request %s has unknown operation %s", entry.id, request.path)
            message = f"Unknown operation {request.method} {request.path}"
            return self._json_error(
                404, "UnknownOperationException", {"message": message}, _AUTH_ERROR_NAMESPACE
            )

        try:
            spec = self._resolve_model(raw_id)
        except BedrockError as error:
            return self._bedrock_error(error, entry)
        fault = self._take_fault(raw_id, spec.model_id, request.path)
        fault_response = await self.apply_fault_before_response(fault)
        if fault_response is not None:
            logger.info(
                "bedrock: request %s failed by fault with status %s",
                entry.id,
                fault_response.status,
            )
            return fault_response

        try:
            if isinstance(body, str):
                raise self._unreadable_body(operation)
            return await self._dispatch(request, entry, operation, spec, body, fault, started)
        except BedrockError as error:
            return self._bedrock_error(error, entry)

    def _take_fault(self, raw_id: str, base_id: str, path: str) -> Fault | None:
        """Take a fault addressed to the model id as sent or to its base model id."""
        if raw_id != base_id:
            fault = self.take_fault(raw_id, path)
            if fault is not None:
                return fault
        return self.take_fault(base_id, path)

    @staticmethod
    def _unreadable_body(operation: str) -> BedrockError:
        if operation.startswith("converse"):
            # NOTE: Bedrock's message text for an unparsable Converse body is not documented.
            return BedrockError("SerializationException", "The request body is not valid JSON.")
        return validation_error(
            "Malformed input request: #: expected type: JSONObject, found: String, please "
            "reformat your input and try again."
        )

    async def _dispatch(
        self,
        request: web.Request,
        entry: RecordedRequest,
        operation: str,
        spec: ModelSpec,
        body: Any,
        fault: Fault | None,
        started: float,
    ) -> web.StreamResponse:
        if operation == "converse":
            return self._converse(entry, spec, body, started)
        if operation == "converse-stream":
            return await self._converse_stream(request, entry, spec, body, fault, started)
        if operation == "invoke":
            return self._invoke(entry, spec, body, started)
        return await self._invoke_stream(request, entry, spec, body, fault, started)

    # --- Converse ------------------------------------------------------------------------

    def _converse(
        self, entry: RecordedRequest, spec: ModelSpec, body: Any, started: float
    ) -> web.Response:
        call = parse_converse(body, spec, streaming=False)
        result = run_converse(call, id_prefix=f"tooluse_{_token(entry.id, 18)}")
        payload = converse_body(call, result, _elapsed_ms(started))
        return web.Response(
            body=orjson.dumps(payload),
            content_type="application/json",
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )

    async def _converse_stream(
        self,
        request: web.Request,
        entry: RecordedRequest,
        spec: ModelSpec,
        body: Any,
        fault: Fault | None,
        started: float,
    ) -> web.StreamResponse:
        call = parse_converse(body, spec, streaming=True)
        result = run_converse(call, id_prefix=f"tooluse_{_token(entry.id, 18)}")
        events = converse_stream_events(call, result, _elapsed_ms(started))
        return await self._stream(request, entry, events, fault, {})

    async def _stream(
        self,
        request: web.Request,
        entry: RecordedRequest,
        events: list[bytes],
        fault: Fault | None,
        headers: Mapping[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": _EVENT_STREAM,
                "x-amzn-RequestId": str(uuid.uuid4()),
                **headers,
            },
        )
        await response.prepare(request)
        message = (
            fault.message if fault else None
        ) or "The model stream failed. Try your request again."
        error_event = exception_frame(self.stream_error_type, self._stream_error_body(message))
        await self.write_events(request, response, entry, events, fault, error_event)
        return response

    def _stream_error_body(self, message: str) -> dict[str, Any]:
        if self.stream_error_type == "modelStreamErrorException":
            return {"message": message, "originalStatusCode": 500, "originalMessage": message}
        return {"message": message}

    # --- InvokeModel ---------------------------------------------------------------------

    def _invoke(
        self, entry: RecordedRequest, spec: ModelSpec, body: Any, started: float
    ) -> web.Response:
        if spec.family == "anthropic":
            call = parse_anthropic(body, spec)
            result = run_anthropic(call, id_prefix=f"toolu_bdrk_01{_token(entry.id, 20)}")
            message_id = f"msg_bdrk_01{_token('msg' + entry.id, 24)}"
            payload = anthropic_message(result, spec, message_id)
            input_tokens, output_tokens = result.reply.input_tokens, result.output_tokens
        elif spec.family == "titan-embed":
            payload, input_tokens = titan_embeddings(body, spec)
            output_tokens = 0
        elif spec.family == "cohere-embed":
            payload, input_tokens = cohere_embeddings(body, spec)
            output_tokens = 0
        else:
            raise self._native_body_not_simulated(spec)
        headers = {
            "x-amzn-RequestId": str(uuid.uuid4()),
            "X-Amzn-Bedrock-Invocation-Latency": str(_elapsed_ms(started)),
            "X-Amzn-Bedrock-Input-Token-Count": str(input_tokens),
            "X-Amzn-Bedrock-Output-Token-Count": str(output_tokens),
        }
        return web.Response(
            body=orjson.dumps(payload), content_type="application/json", headers=headers
        )

    async def _invoke_stream(
        self,
        request: web.Request,
        entry: RecordedRequest,
        spec: ModelSpec,
        body: Any,
        fault: Fault | None,
        started: float,
    ) -> web.StreamResponse:
        if spec.is_embedding:
            raise validation_error("The model is unsupported for streaming.")
        if spec.family != "anthropic":
            raise self._native_body_not_simulated(spec)
        call = parse_anthropic(body, spec)
        result = run_anthropic(call, id_prefix=f"toolu_bdrk_01{_token(entry.id, 20)}")
        message_id = f"msg_bdrk_01{_token('msg' + entry.id, 24)}"
        chunks = anthropic_stream_chunks(result, spec, message_id, _elapsed_ms(started))
        headers = {"X-Amzn-Bedrock-Content-Type": "application/json"}
        return await self._stream(request, entry, chunks, fault, headers)

    @staticmethod
    def _native_body_not_simulated(spec: ModelSpec) -> BedrockError:
        # TODO: simulate the native InvokeModel bodies of Llama, Mistral, Nova, Titan Text
        # and Command R. Until then only Converse reaches those models.
        return validation_error(
            f"The simulator does not implement the native InvokeModel body of {spec.model_id}. "
            "Use the Converse API for this model."
        )


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
