"""HTTP handlers of the data plane: chat, models and token counting."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import StreamReader, web
from aiohttp.web_protocol import RequestPayloadError

from smartflow.auth.keys import Caller, KeyStore
from smartflow.core.errors import (
    InternalError,
    InvalidRequest,
    NotFound,
    PolicyViolation,
    RequestTimeout,
    RequestTooLarge,
    SmartflowError,
    UpstreamError,
)
from smartflow.core.types import ChatRequest, ImagePart
from smartflow.dialects.anthropic import requests as anthropic_requests
from smartflow.gateway.ids import new_request_id
from smartflow.gateway.ingress import ANTHROPIC, OPENAI, Ingress
from smartflow.gateway.upstream import Dispatcher, Exchange, OpenStream
from smartflow.normalize import report_header
from smartflow.policy.decision import POLICY_HEADER, PolicyEvaluationFailed
from smartflow.policy.engine import Evaluator
from smartflow.policy.hooks import request_context, rewrite_request_body, rewrite_response_body
from smartflow.policy.run import PolicyRun
from smartflow.policy.stream_rewrite import StreamRewriter, stream_rewriter
from smartflow.providers.anthropic import AnthropicProvider
from smartflow.routing.router import Router
from smartflow.usage.builder import UsageBuilder
from smartflow.usage.recorder import UsageRecorder
from smartflow.usage.tap import (
    ObservingEncoder,
    PassthroughTap,
    observe_render,
    record_passthrough_body,
)

__all__ = ["Gateway"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("smartflow.access")

_JSON = "application/json"

# Lists each parameter changed to fit the target model: name, rule, before and after.
PARAMS_HEADER = "x-smartflow-params"
# A request with this header set to true is rejected rather than changed.
STRICT_HEADER = "x-smartflow-strict-params"


class Gateway:
    """The request path of one instance, independent of how it is served."""

    def __init__(
        self,
        *,
        router: Router,
        keys: KeyStore,
        dispatcher: Dispatcher,
        max_body_bytes: int,
        access_log: bool = True,
        owners: dict[str, str] | None = None,
        body_timeout: float = 30.0,
        strict_params: bool = False,
        policy: Evaluator | None = None,
        site: str = "local",
        usage: UsageRecorder | None = None,
    ) -> None:
        self.usage = usage
        self.policy = policy
        """The active policy version; ``set_policy`` swaps it between requests."""
        self.site = site
        self.strict_params = strict_params
        self.body_timeout = body_timeout
        self.router = router
        self.keys = keys
        self.dispatcher = dispatcher
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        self.owners = owners or {}

    def set_policy(self, evaluator: Evaluator | None) -> None:
        """Make ``evaluator`` the policy for new requests; requests under way keep theirs."""
        self.policy = evaluator
        names = ", ".join(evaluator.names) if evaluator is not None else "none"
        logger.info("policy set: %s", names or "no documents")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/healthz", self.health)

    # --- endpoints -------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._chat(request, OPENAI)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._chat(request, ANTHROPIC)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def list_models(self, request: web.Request) -> web.Response:
        anthropic = (
            "anthropic-version" in request.headers and "Authorization" not in request.headers
        )
        ingress = ANTHROPIC if anthropic else OPENAI
        request_id = new_request_id()
        try:
            self.keys.authenticate(request.headers)
        except SmartflowError as exc:
            return self._error_response(ingress, exc, request_id)
        models = sorted(self.router.models)
        if anthropic:
            data: dict[str, Any] = {
                "data": [
                    {
                        "type": "model",
                        "id": m,
                        "display_name": m,
                        "created_at": "1970-01-01T00:00:00Z",
                    }
                    for m in models
                ],
                "has_more": False,
                "first_id": models[0] if models else None,
                "last_id": models[-1] if models else None,
            }
        else:
            data = {
                "object": "list",
                "data": [
                    {
                        "id": m,
                        "object": "model",
                        "created": 0,
                        "owned_by": self.owners.get(m, "smartflow"),
                    }
                    for m in models
                ],
            }
        return web.Response(
            body=orjson.dumps(data),
            content_type=_JSON,
            headers={ingress.request_id_header: request_id},
        )

    async def count_tokens(self, request: web.Request) -> web.Response:
        """Count input tokens: Anthropic counts for its own models, others get an estimate."""
        request_id = new_request_id()
        try:
            caller = self.keys.authenticate(request.headers)
            body = await self._read_json(request)
            counted = {**body, "max_tokens": body.get("max_tokens") or 1}
            canonical = anthropic_requests.parse_request(counted)
            deployments = self.router.deployments(canonical.model)
            # The text goes to the provider here too, so the request rules apply to it.
            run = self._evaluate_policy(caller, canonical, request, request_id)
            if run is not None:
                canonical = run.request or canonical
                body = rewrite_request_body(run, ANTHROPIC.name, body)
                deployments = run.allowed_deployments(deployments)
            deployment = deployments[0]
            provider = deployment.provider
            if isinstance(provider, AnthropicProvider):
                target = provider.count_tokens_target(request.headers)
                payload = {k: v for k, v in body.items() if k != "max_tokens"}
                payload["model"] = deployment.model
                async with self.dispatcher.session.post(
                    target.url, data=orjson.dumps(payload), headers=target.headers
                ) as upstream:
                    data = await upstream.read()
                    if upstream.status >= 400:
                        raise provider.parse_error(upstream.status, data, upstream.headers)
                return web.Response(
                    body=data, content_type=_JSON, headers={"request-id": request_id}
                )
            estimate = {"input_tokens": _estimate_tokens(canonical)}
            return web.Response(
                body=orjson.dumps(estimate),
                content_type=_JSON,
                headers={"request-id": request_id, "x-smartflow-token-count": "estimate"},
            )
        except SmartflowError as exc:
            return self._error_response(ANTHROPIC, exc, request_id)
        except Exception:
            logger.exception("request %s: unexpected error while counting tokens", request_id)
            error = InternalError("The gateway failed to count the tokens.")
            return self._error_response(ANTHROPIC, error, request_id)

    @web.middleware
    async def dialect_errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Render aiohttp's own 404 and 405 responses in the caller's dialect."""
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPException as exc:
            if exc.status not in (404, 405):
                raise
            anthropic = (
                request.path.startswith("/v1/messages") or "anthropic-version" in request.headers
            )
            ingress = ANTHROPIC if anthropic else OPENAI
            if exc.status == 404:
                error: SmartflowError = NotFound(
                    f"No endpoint {request.method} {request.path[:200]}. This gateway serves "
                    "/v1/chat/completions, /v1/messages, /v1/messages/count_tokens and /v1/models."
                )
            else:
                error = InvalidRequest(
                    f"Method {request.method} is not allowed on {request.path[:200]}; use "
                    f"{', '.join(sorted(exc.headers.get('Allow', '').split(',')))}."
                )
                error.status = 405
            return self._error_response(ingress, error, new_request_id())

    # --- the chat path ---------------------------------------------------------------

    async def _chat(self, request: web.Request, ingress: Ingress) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = new_request_id()
        status = 500
        model = "-"
        served = "-"
        usage = self.usage.start(request_id, ingress.name) if self.usage else None
        exchange: Exchange | None = None
        run: PolicyRun | None = None
        try:
            caller = self.keys.authenticate(request.headers)
            if usage:
                usage.set_caller(caller)
            body = await self._read_json(request)
            canonical = ingress.parse_request(body)
            if usage:
                usage.set_request(canonical, estimate=_estimate_tokens)
            model = canonical.model[:100]
            deployments = self.router.deployments(canonical.model)
            run = self._evaluate_policy(caller, canonical, request, request_id)
            if run is not None:
                canonical = run.request or canonical
                body = rewrite_request_body(run, ingress.name, body)
                deployments = run.allowed_deployments(deployments)
            exchange = Exchange(request_id, ingress.name, body, canonical, request.headers)
            exchange.strict_params = (
                self.strict_params
                or caller.strict_params
                or request.headers.get(STRICT_HEADER, "").lower() in ("1", "true")
            )
            if canonical.stream:
                response = await self._stream(request, ingress, exchange, deployments, run, usage)
                served = response.headers.get("x-smartflow-deployment", "-")
                status = response.status
                return response
            render = ingress.render_response
            if usage:
                render = observe_render(render, usage)
            payload, deployment = await self.dispatcher.complete(exchange, deployments, render)
            served = deployment.label
            if usage:
                usage.set_deployment(deployment)
                if not usage.has_usage:
                    record_passthrough_body(usage, deployment.provider, payload)
            headers = {
                ingress.request_id_header: request_id,
                "x-smartflow-deployment": served,
                PARAMS_HEADER: _params_report(exchange),
            }
            if run is not None:
                if run.checks_response:
                    payload = rewrite_response_body(run, ingress.name, payload)
                headers[POLICY_HEADER] = run.header()
                _log_decision(run)
            status = 200
            return web.Response(body=payload, content_type=_JSON, headers=headers)
        except SmartflowError as exc:
            status = exc.status
            if usage:
                usage.record_error(exc)
            return self._error_response(ingress, exc, request_id)
        except asyncio.CancelledError:
            status = 499
            if usage:
                usage.mark_client_disconnected()
            logger.info("request %s: client disconnected; upstream request cancelled", request_id)
            raise
        except Exception as exc:
            logger.exception("request %s: unexpected error", request_id)
            if usage:
                usage.record_error(exc)
            return self._error_response(
                ingress, InternalError("The gateway failed to process the request."), request_id
            )
        finally:
            if usage and self.usage:
                _finish_usage(self.usage, usage, exchange, run, status)
            if self.access_log:
                access_logger.info(
                    "%s %s %s model=%s deployment=%s status=%s ms=%.1f",
                    request_id,
                    request.method,
                    _printable(request.path),
                    _printable(model),
                    served,
                    status,
                    (time.perf_counter() - started) * 1000,
                )

    async def _stream(
        self,
        request: web.Request,
        ingress: Ingress,
        exchange: Exchange,
        deployments: list[Any],
        run: PolicyRun | None,
        usage: UsageBuilder | None = None,
    ) -> web.StreamResponse:
        canonical: ChatRequest = exchange.request

        def make_encoder() -> Any:
            encoder = ingress.make_encoder(canonical)
            return ObservingEncoder(encoder, usage) if usage else encoder

        stream = await self.dispatcher.open_stream(exchange, deployments, make_encoder)
        tap: PassthroughTap | None = None
        if usage:
            usage.set_deployment(stream.deployment)
            usage.mark_first_byte()
            if stream.passthrough:
                tap = PassthroughTap(usage, stream.deployment.provider)
                tap.feed(stream.first)
        headers = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            ingress.request_id_header: exchange.request_id,
            "x-smartflow-deployment": stream.deployment.label,
            PARAMS_HEADER: _params_report(exchange),
        }
        rewriter: StreamRewriter | None = None
        if run is not None:
            # Sent before the response, so it reports the request side only.
            headers[POLICY_HEADER] = run.header()
            if run.checks_response:
                rewriter = stream_rewriter(run, ingress.name)
        response = web.StreamResponse(status=200, headers=headers)
        try:
            await response.prepare(request)
            try:
                await _relay(response, stream, rewriter, tap.feed if tap else None)
            except PolicyViolation as exc:
                if usage:
                    usage.record_error(exc)
                logger.info(
                    "request %s: stream stopped by policy: %s", exchange.request_id, exc.message
                )
                await response.write(ingress.make_encoder(canonical).encode_error(exc))
            except PolicyEvaluationFailed as exc:
                await response.write(ingress.make_encoder(canonical).encode_error(exc))
            except UpstreamError as exc:
                if usage:
                    usage.record_error(exc)
                logger.warning(
                    "request %s: stream from %s failed after it started: %s",
                    exchange.request_id,
                    stream.deployment.label,
                    exc.message,
                )
                await response.write(ingress.make_encoder(canonical).encode_error(exc))
            await response.write_eof()
        except ConnectionError:
            # Writing to a caller that has gone away; the upstream is closed below.
            if usage:
                usage.mark_client_disconnected()
            logger.info(
                "request %s: client disconnected mid-stream; upstream request cancelled",
                exchange.request_id,
            )
        finally:
            stream.close()
            if run is not None:
                _log_decision(run)
        return response

    def _evaluate_policy(
        self, caller: Caller, canonical: ChatRequest, request: web.Request, request_id: str
    ) -> PolicyRun | None:
        """Run the active policy over the request; None when no document is in scope.

        Raises:
            PolicyViolation: an enforced rule blocks the request.
            PolicyEvaluationFailed: evaluation raised and a policy in scope fails closed.
        """
        evaluator = self.policy
        if evaluator is None:
            return None
        context = request_context(caller, canonical.model, request.headers, self.site)
        run = evaluator.evaluate_request(context, canonical, request_id=request_id)
        return run if run.active else None

    # --- helpers ---------------------------------------------------------------------

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise _too_large(self.max_body_bytes)
        content = request.content
        raw: bytes | bytearray
        try:
            if content.is_eof():
                # The whole body came with the headers, as it does for most requests: take
                # it without arming the body timeout.
                raw = content.read_nowait()
                if len(raw) > self.max_body_bytes:
                    raise _too_large(self.max_body_bytes)
            else:
                raw = await self._read_slow_body(content)
        except RequestPayloadError:
            # Nothing more of this body can be read, so the connection is closed after the
            # error. Marking the body finished stops aiohttp from trying to drain it.
            content.feed_eof()
            encoding = request.headers.get("Content-Encoding", "none")[:40]
            error = InvalidRequest(
                f"The request body could not be decoded as Content-Encoding "
                f"{_printable(encoding)!r}. Send the body uncompressed, or compressed the way "
                "Content-Encoding says.",
                param="Content-Encoding",
            )
            error.close_connection = True
            raise error from None
        if not raw:
            raise InvalidRequest("The request body is empty. Send a JSON object.")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(
                f"The request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
                f"{exc.colno}). Send a JSON object."
            ) from exc
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        return body

    async def _read_slow_body(self, content: StreamReader) -> bytearray:
        """Read a body that arrives in pieces, within the body timeout and size limit."""
        raw = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout):
                async for chunk in content.iter_any():
                    raw += chunk
                    if len(raw) > self.max_body_bytes:
                        raise _too_large(self.max_body_bytes)
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {self.body_timeout:g} s. Send the whole "
                "body at once."
            ) from None
        return raw

    def _error_response(
        self, ingress: Ingress, error: SmartflowError, request_id: str
    ) -> web.Response:
        logger.log(error.log_level, "request %s: %s (%s)", request_id, error.message, error.code)
        status, body, headers = ingress.render_error(error)
        headers[ingress.request_id_header] = request_id
        response = web.Response(status=status, body=body, content_type=_JSON, headers=headers)
        if error.close_connection:
            response.force_close()
        return response


async def _relay(
    response: web.StreamResponse,
    stream: OpenStream,
    rewriter: StreamRewriter | None,
    tap_chunk: Callable[[bytes], None] | None = None,
) -> None:
    """Write the upstream stream to the caller, through the policy rewriter if there is one.

    ``tap_chunk`` receives each chunk of ``stream.rest`` as it comes, for the usage tap.
    """
    if rewriter is None:
        await response.write(stream.first)
        if tap_chunk is None:
            async for chunk in stream.rest:
                await response.write(chunk)
            return
        async for chunk in stream.rest:
            tap_chunk(chunk)
            await response.write(chunk)
        return
    out = rewriter.feed(stream.first)
    if out:
        await response.write(out)
    async for chunk in stream.rest:
        if tap_chunk is not None:
            tap_chunk(chunk)
        out = rewriter.feed(chunk)
        if out:
            await response.write(out)
    out = rewriter.close()
    if out:
        await response.write(out)


def _log_decision(run: PolicyRun) -> None:
    decision = run.decision
    fired = decision.request_entities or decision.response_entities or decision.rules
    level = logging.INFO if fired or decision.errors else logging.DEBUG
    if logger.isEnabledFor(level):
        logger.log(level, "request %s: policy decision %s", run.request_id, decision.header())


def _finish_usage(
    recorder: UsageRecorder,
    usage: UsageBuilder,
    exchange: Exchange | None,
    run: PolicyRun | None,
    status: int,
) -> None:
    if exchange is not None:
        usage.set_attempts(exchange.attempts)
        if exchange.normalized is not None:
            usage.set_normalization(exchange.normalized.changes)
    if run is not None:
        usage.set_policy(run.decision)
    recorder.emit(usage, status)


def _params_report(exchange: Exchange) -> str:
    """Render the parameters that were not passed as is, or ``none``."""
    if exchange.normalized is None or not exchange.normalized.changes:
        return "none"
    return report_header(exchange.normalized.changes)


def _printable(text: str) -> str:
    """Return ``text`` with line breaks and other control characters escaped, for logs."""
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"The request body is larger than the limit of {limit} bytes. Send a smaller request, "
        "or raise server.max_body_bytes."
    )


def _estimate_tokens(request: ChatRequest) -> int:
    """Estimate input tokens at four characters each, plus fixed costs per turn and image."""
    characters = 0
    images = 0
    for message in request.messages:
        characters += len(message.text())
        images += sum(1 for p in message.content if isinstance(p, ImagePart))
        for call in message.tool_calls:
            characters += len(call.name) + len(call.arguments)
    for tool in request.tools:
        characters += (
            len(tool.name) + len(tool.description or "") + len(orjson.dumps(tool.parameters))
        )
    return math.ceil(characters / 4) + 4 * len(request.messages) + 1500 * images
