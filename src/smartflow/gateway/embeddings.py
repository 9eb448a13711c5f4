"""The ``POST /v1/embeddings`` endpoint: OpenAI's embeddings API in front of every provider.

OpenAI and Azure OpenAI deployments get the caller's body with only ``model`` replaced
and return their bytes unchanged, so fields unknown to the gateway survive both ways.
Bedrock, Gemini and Cohere deployments get bodies built by their adapters, in as many
upstream calls as the provider's batch limit needs, and their vectors come back in
OpenAI's shape. Retries and fallback are those of chat requests.

The request rules of the policies in scope read the input texts before any provider call,
and compliance rules narrow the deployments, as on chat (see
``smartflow.policy.embedding_input`` for tokenize and token-array input).
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from smartflow.auth.keys import Caller
from smartflow.core.errors import (
    InternalError,
    InvalidRequest,
    MalformedUpstreamResponse,
    SmartflowError,
    UpstreamError,
)
from smartflow.core.types import ChatRequest
from smartflow.dialects.openai.embeddings import (
    EmbeddingBatch,
    EmbeddingRequest,
    estimate_tokens,
    parse_embedding_request,
    render_embedding_response,
)
from smartflow.gateway.handlers import Gateway
from smartflow.gateway.ids import new_request_id
from smartflow.gateway.ingress import OPENAI
from smartflow.gateway.upstream import Dispatcher, Exchange, _map_transport_error
from smartflow.policy.decision import POLICY_HEADER
from smartflow.policy.embedding_input import EmbeddingPolicyResult, evaluate_embedding_input
from smartflow.policy.hooks import request_context
from smartflow.providers.base import Deployment, Target

__all__ = ["TOKEN_COUNT_HEADER", "EmbeddingsEndpoint", "add_embedding_routes", "select_deployments"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("smartflow.access")

# Set to "estimate" when a provider reported no token count, so usage is an estimate.
TOKEN_COUNT_HEADER = "x-smartflow-token-count"
# NOTE: a guessed bound on the concurrent upstream calls of one request. It matters for
# Titan, whose InvokeModel embeds one text per call.
_MAX_PARALLEL_CALLS = 8


class _PassThroughEmbedder(Protocol):
    name: str

    def embed_target(self, model: str) -> Target: ...

    def passthrough_body(self, body: dict[str, Any], model: str) -> dict[str, Any]: ...


class _TranslatingEmbedder(Protocol):
    name: str

    def embed_target(self, model: str) -> Target: ...

    def build_embed_bodies(self, request: EmbeddingRequest, model: str) -> list[dict[str, Any]]: ...

    def parse_embed_response(
        self, body: dict[str, Any], headers: Mapping[str, str], model: str
    ) -> EmbeddingBatch: ...


def _passes_through(deployment: Deployment) -> bool:
    provider = deployment.provider
    return provider.dialect == "openai" and hasattr(provider, "embed_target")


def _translates(deployment: Deployment) -> bool:
    return hasattr(deployment.provider, "build_embed_bodies")


def select_deployments(
    deployments: list[Deployment], request: EmbeddingRequest
) -> list[Deployment]:
    """Keep the deployments that can serve ``request``, in their fallback order.

    Raises InvalidRequest when none can: the providers have no embeddings API, or the
    input is token arrays and no deployment is OpenAI or Azure OpenAI.
    """
    usable = [d for d in deployments if _passes_through(d) or _translates(d)]
    if not usable:
        labels = ", ".join(d.label for d in deployments)
        raise InvalidRequest(
            f"The model {request.model} does not support embeddings: the gateway has no "
            f"embeddings API for its deployments ({labels}). Use an embedding model.",
            param="model",
        )
    if request.token_arrays:
        usable = [d for d in usable if _passes_through(d)]
        if not usable:
            raise InvalidRequest(
                f"Token arrays in 'input' can only be sent to OpenAI or Azure OpenAI, and "
                f"the model {request.model} is served elsewhere. Send the input as text.",
                param="input",
            )
    skipped = len(deployments) - len(usable)
    if skipped:
        logger.debug("embeddings for %s skip %d deployments", request.model, skipped)
    return usable


@dataclass(slots=True)
class _Served:
    """The caller's response body, the deployment that served it, and whether usage
    is an estimate."""

    body: bytes
    deployment: Deployment
    estimated: bool = False


def _dumps(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        # orjson reads 1024 levels of nesting but writes only about 250.
        raise InvalidRequest(
            "The request body is nested too deeply to forward (more than about 250 levels). "
            "Flatten the deepest field."
        ) from exc


def _first_failure(group: ExceptionGroup[Exception]) -> Exception:
    """Pick the error to report from failed parallel calls: a final one before a retryable one."""
    for error in group.exceptions:
        if not (isinstance(error, UpstreamError) and error.retryable):
            return error
    return group.exceptions[0]


async def _run_all(calls: list[Coroutine[Any, Any, None]]) -> None:
    if len(calls) == 1:
        await calls[0]
        return
    try:
        async with asyncio.TaskGroup() as group:
            for call in calls:
                group.create_task(call)
    except ExceptionGroup as failures:
        # The task group has cancelled the other calls already.
        raise _first_failure(failures) from None


def _malformed(provider: str, detail: str) -> MalformedUpstreamResponse:
    return MalformedUpstreamResponse(
        f"{provider} returned an embeddings response that could not be read: {detail}.",
        provider=provider,
    )


def _check_vectors(vectors: list[Any], expected: int, provider: str) -> None:
    if len(vectors) != expected:
        raise _malformed(provider, f"{len(vectors)} vectors for {expected} inputs")
    for vector in vectors:
        if not isinstance(vector, list) or not vector:
            raise _malformed(provider, "a vector is not a non-empty array")
        try:
            array("d", vector)
        except (TypeError, OverflowError) as exc:
            raise _malformed(provider, "a vector contains a value that is not a number") from exc


class _EmbeddingCall:
    """Sends one embeddings request to a deployment, as ``run_with_fallback`` calls it.

    Batches that succeeded are kept, so a retry of the same deployment resends only the
    batches that failed.
    """

    def __init__(self, dispatcher: Dispatcher, request: EmbeddingRequest, body: dict[str, Any]):
        self._dispatcher = dispatcher
        self._request = request
        self._body = body
        self._done: dict[tuple[str, int], EmbeddingBatch] = {}

    async def __call__(self, deployment: Deployment) -> _Served:
        if _passes_through(deployment):
            return await self._pass_through(deployment)
        return await self._translate(deployment)

    async def _post(
        self, deployment: Deployment, target: Target, payload: bytes
    ) -> tuple[bytes, Mapping[str, str]]:
        provider = deployment.provider
        url: str | URL = target.url
        sign = getattr(provider, "sign", None)
        if sign is not None:
            # SigV4 covers the body, and the path must go out exactly as signed.
            target = sign(target, payload)
            url = URL(target.url, encoded=True)
        try:
            async with self._dispatcher.session.post(
                url, data=payload, headers=target.headers
            ) as response:
                body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_transport_error(exc, deployment, self._dispatcher.read_timeout) from exc
        if response.status >= 400:
            raise provider.parse_error(response.status, body, response.headers)
        return body, response.headers

    async def _pass_through(self, deployment: Deployment) -> _Served:
        provider = cast(_PassThroughEmbedder, deployment.provider)
        target = provider.embed_target(deployment.model)
        payload = _dumps(provider.passthrough_body(self._body, deployment.model))
        body, _ = await self._post(deployment, target, payload)
        return _Served(body, deployment)

    async def _translate(self, deployment: Deployment) -> _Served:
        provider = cast(_TranslatingEmbedder, deployment.provider)
        bodies = provider.build_embed_bodies(self._request, deployment.model)
        target = provider.embed_target(deployment.model)
        limit = asyncio.Semaphore(_MAX_PARALLEL_CALLS)

        async def send(index: int, body: dict[str, Any]) -> None:
            key = (deployment.label, index)
            if key in self._done:
                return
            async with limit:
                raw, headers = await self._post(deployment, target, _dumps(body))
            self._done[key] = self._parse(provider, deployment.model, raw, headers)

        await _run_all([send(index, body) for index, body in enumerate(bodies)])
        batches = [self._done[(deployment.label, index)] for index in range(len(bodies))]
        vectors = [vector for batch in batches for vector in batch.vectors]
        _check_vectors(vectors, self._request.input_count, provider.name)
        counts = [batch.input_tokens for batch in batches]
        estimated = any(count is None for count in counts)
        if estimated:
            tokens = estimate_tokens(self._request.texts)
        else:
            tokens = sum(cast(list[int], counts))
        body = render_embedding_response(
            vectors,
            model=deployment.model,
            encoding_format=self._request.encoding_format,
            prompt_tokens=tokens,
        )
        return _Served(body, deployment, estimated)

    @staticmethod
    def _parse(
        provider: _TranslatingEmbedder, model: str, raw: bytes, headers: Mapping[str, str]
    ) -> EmbeddingBatch:
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("the body is not a JSON object")
            return provider.parse_embed_response(data, headers, model)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # orjson.JSONDecodeError is a ValueError.
            raise _malformed(provider.name, f"{type(exc).__name__}: {exc}") from exc


class EmbeddingsEndpoint:
    """Serves ``POST /v1/embeddings`` with a gateway's keys, routes and dispatcher."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        request_id = new_request_id()
        status = 500
        model = "-"
        served = "-"
        try:
            caller = self.gateway.keys.authenticate(request.headers)
            body = await self.gateway._read_json(request)
            parsed = parse_embedding_request(body)
            model = parsed.model[:100]
            deployments = select_deployments(self.gateway.router.deployments(parsed.model), parsed)
            policy = self._evaluate_policy(caller, parsed, request, request_id)
            if policy is not None:
                body, parsed = _apply_policy(policy, body, parsed)
                deployments = policy.run.allowed_deployments(deployments)
            result = await self._embed(request_id, body, parsed, request.headers, deployments)
            served = result.deployment.label
            status = 200
            headers = {OPENAI.request_id_header: request_id, "x-smartflow-deployment": served}
            if result.estimated:
                headers[TOKEN_COUNT_HEADER] = "estimate"
            if policy is not None:
                headers[POLICY_HEADER] = policy.header()
                _log_decision(policy)
            return web.Response(body=result.body, content_type="application/json", headers=headers)
        except SmartflowError as exc:
            status = exc.status
            return self.gateway._error_response(OPENAI, exc, request_id)
        except asyncio.CancelledError:
            status = 499
            logger.info("request %s: client disconnected; upstream request cancelled", request_id)
            raise
        except Exception:
            logger.exception("request %s: unexpected error while embedding", request_id)
            error = InternalError("The gateway failed to process the embeddings request.")
            return self.gateway._error_response(OPENAI, error, request_id)
        finally:
            if self.gateway.access_log:
                access_logger.info(
                    "%s %s %s model=%s deployment=%s status=%s ms=%.1f",
                    request_id,
                    request.method,
                    request.path,
                    model,
                    served,
                    status,
                    (time.perf_counter() - started) * 1000,
                )

    async def _embed(
        self,
        request_id: str,
        body: dict[str, Any],
        parsed: EmbeddingRequest,
        client_headers: Mapping[str, str],
        deployments: list[Deployment],
    ) -> _Served:
        # Exchange carries a chat request, which only the chat path reads.
        placeholder = ChatRequest(model=parsed.model, messages=[])
        exchange = Exchange(request_id, OPENAI.name, body, placeholder, client_headers)
        call = _EmbeddingCall(self.gateway.dispatcher, parsed, body)
        return await self.gateway.dispatcher.run_with_fallback(exchange, deployments, call)

    def _evaluate_policy(
        self, caller: Caller, parsed: EmbeddingRequest, request: web.Request, request_id: str
    ) -> EmbeddingPolicyResult | None:
        """Run the active policy over the input; None when no document is in scope.

        Raises:
            PolicyViolation: an enforced rule blocks the input.
            PolicyEvaluationFailed: evaluation raised and a policy in scope fails closed.
            InvalidRequest: token arrays, and an enforced request rule would have to read them.
        """
        evaluator = self.gateway.policy
        if evaluator is None:
            return None
        context = request_context(caller, parsed.model, request.headers, self.gateway.site)
        return evaluate_embedding_input(
            evaluator,
            context,
            parsed.texts,
            token_arrays=bool(parsed.token_arrays),
            request_id=request_id,
        )


def _apply_policy(
    policy: EmbeddingPolicyResult, body: dict[str, Any], parsed: EmbeddingRequest
) -> tuple[dict[str, Any], EmbeddingRequest]:
    """Return the body and the parsed request with the input texts the rules rewrote.

    The body keeps the shape of its ``input``: one string stays a string.
    """
    if parsed.token_arrays or policy.texts == parsed.texts:
        return body, parsed
    texts = policy.texts
    new_input: str | list[str] = texts[0] if isinstance(body.get("input"), str) else texts
    return {**body, "input": new_input}, replace(parsed, texts=texts)


def _log_decision(policy: EmbeddingPolicyResult) -> None:
    decision = policy.run.decision
    fired = decision.request_entities or decision.rules or decision.errors or policy.unscanned
    level = logging.INFO if fired else logging.DEBUG
    logger.log(level, "request %s: policy decision %s", policy.run.request_id, policy.header())


def add_embedding_routes(app: web.Application, gateway: Gateway) -> None:
    """Add ``POST /v1/embeddings``, served by ``gateway``, to ``app``."""
    app.router.add_post("/v1/embeddings", EmbeddingsEndpoint(gateway).handle)
