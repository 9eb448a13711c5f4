"""Request traces of a gateway instance, exported over OTLP/HTTP when configured.

Each API request (a path under ``/v1/``) gets a SERVER span. Its parent is the caller's
W3C ``traceparent``, so the caller's trace id is kept. The first upstream HTTP request
of an API request starts a CLIENT span: the inference span of the OpenTelemetry GenAI
semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/).
Attribute names were checked against the constants of opentelemetry-semantic-conventions
0.66b2. The span is named ``{gen_ai.operation.name} {gen_ai.request.model}`` and covers
every try, fallbacks included, until the response has reached the caller. Each upstream
request carries a ``traceparent`` of that span.

Spans carry names, counts and codes only: never prompt or response text, and never a
value that a policy detected. A batch span processor exports them from its own thread,
so a slow or unreachable collector delays no request. Failed exports are logged at most
once a minute.

None of this runs when tracing is off: the middleware and the aiohttp trace
configuration are installed only by ``build_app`` with ``telemetry.otlp`` set.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from smartflow.config.telemetry import OtlpSettings
from smartflow.core.errors import ConfigError
from smartflow.core.types import ChatRequest
from smartflow.telemetry.metrics import PROVIDER_NAMES
from smartflow.transport.fetch import UNTRACED
from smartflow.usage.events import UsageEvent

__all__ = ["GatewayTracer", "parse_headers"]

logger = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
LOG_INTERVAL_S = 60.0
"""Minimum seconds between two log lines about failed exports."""
_TRACED_PREFIX = "/v1/"
# The OTLP exporter logs every failed try itself; these filters keep one line a minute.
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
)


@dataclass(slots=True)
class _RequestTrace:
    server: Span
    client: Span | None = None
    client_ended: bool = False


_current: ContextVar[_RequestTrace | None] = ContextVar("smartflow_request_trace", default=None)


def parse_headers(text: str) -> dict[str, str]:
    """Parse ``name=value,name2=value2`` with percent-encoded values.

    Raises:
        ValueError: an item has no ``=`` or an empty name.
    """
    headers: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, separator, value = item.partition("=")
        if not separator or not name.strip():
            raise ValueError(f"item {len(headers) + 1} is not name=value")
        headers[unquote(name.strip())] = unquote(value.strip())
    return headers


class _RateLimitFilter(logging.Filter):
    """Passes one record per ``interval_s`` seconds and drops the rest."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self._interval = interval_s
        self._next = 0.0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                return False
            self._next = now + self._interval
            return True


class _ReportingExporter(SpanExporter):
    """Counts failed exports and logs them at most once per ``LOG_INTERVAL_S``."""

    def __init__(self, inner: SpanExporter, url: str) -> None:
        self._inner = inner
        self._url = url
        self._failures = 0
        self._next_log = 0.0
        self.exported = 0
        self.failed_spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # noqa: BLE001 - the exporter thread must survive any failure
            logger.warning("tracing: export to %s raised %r", self._url, exc)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
            return result
        self._failures += 1
        self.failed_spans += len(spans)
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + LOG_INTERVAL_S
            logger.warning(
                "tracing: export to %s failed; %d spans lost in %d failed exports so far",
                self._url,
                self.failed_spans,
                self._failures,
            )
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class GatewayTracer:
    """Starts, annotates and ends the spans of one instance; see the module docstring."""

    def __init__(
        self,
        provider: TracerProvider,
        *,
        instance: str,
        site: str,
        exporter: _ReportingExporter | None = None,
    ) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("smartflow.gateway")
        self._propagator = TraceContextTextMapPropagator()
        self._exporter = exporter
        self.instance = instance
        self.site = site

    @classmethod
    def from_settings(
        cls, settings: OtlpSettings, *, instance: str, site: str, environ: Mapping[str, str]
    ) -> GatewayTracer:
        """Build a tracer that exports to ``settings.endpoint``.

        Raises:
            ConfigError: ``headers_env`` names a missing or malformed variable.
        """
        headers: dict[str, str] = {}
        if settings.headers_env is not None:
            text = environ.get(settings.headers_env)
            if text is None:
                raise ConfigError(
                    f"telemetry.otlp.headers_env: variable {settings.headers_env} is not set; "
                    "set it to name=value pairs separated by commas, or remove headers_env"
                )
            try:
                headers = parse_headers(text)
            except ValueError as exc:
                # The message names the item's position only: the values may be secrets.
                raise ConfigError(
                    f"telemetry.otlp.headers_env: variable {settings.headers_env} is invalid "
                    f"({exc}); write name=value pairs separated by commas"
                ) from None
        url = settings.endpoint.rstrip("/") + TRACES_PATH
        exporter = _ReportingExporter(
            OTLPSpanExporter(endpoint=url, headers=headers, timeout=settings.timeout_s), url
        )
        resource = Resource.create(
            {
                "service.name": settings.service_name,
                "service.instance.id": instance,
                "smartflow.site": site,
            }
        )
        provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio))
        )
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=settings.max_queue_spans,
                max_export_batch_size=min(512, settings.max_queue_spans),
                export_timeout_millis=int(settings.timeout_s * 1000),
            )
        )
        for name in _EXPORTER_LOGGERS:
            library_logger = logging.getLogger(name)
            if not any(isinstance(f, _RateLimitFilter) for f in library_logger.filters):
                library_logger.addFilter(_RateLimitFilter(LOG_INTERVAL_S))
        logger.info(
            "tracing: exporting spans to %s as service %s, sample ratio %g",
            url,
            settings.service_name,
            settings.sample_ratio,
        )
        return cls(provider, instance=instance, site=site, exporter=exporter)

    # --- the ingress (SERVER) span --------------------------------------------------------

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Wrap each API request in a SERVER span whose parent is the caller's traceparent."""
        if not request.path.startswith(_TRACED_PREFIX):
            return await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else None
        parent = self._propagator.extract(request.headers)
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "url.path": request.path,
            "smartflow.instance": self.instance,
            "smartflow.site": self.site,
        }
        if route is not None:
            attributes["http.route"] = route
        span = self._tracer.start_span(
            f"{request.method} {route}" if route is not None else request.method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        trace = _RequestTrace(span)
        token = _current.set(trace)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            _current.reset(token)
            self._end_request(trace, status)

    def _end_request(self, trace: _RequestTrace, status: int) -> None:
        if trace.client is not None and not trace.client_ended:
            # No usage event was recorded, so the request stopped before it finished.
            trace.client.end()
        server = trace.server
        server.set_attribute("http.response.status_code", status)
        if status >= 500:
            server.set_attribute("error.type", str(status))
            server.set_status(Status(StatusCode.ERROR))
        server.end()

    # --- the upstream (CLIENT) span -------------------------------------------------------

    def trace_config(self) -> aiohttp.TraceConfig:
        """Return the hook that starts the CLIENT span and sends its ``traceparent``."""
        config = aiohttp.TraceConfig()
        config.on_request_start.append(self._on_request_start)
        return config

    async def _on_request_start(
        self,
        _session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        # Image fetches share the provider session but are not provider calls: no CLIENT
        # span for them, and no traceparent to the image host.
        trace = _current.get()
        if trace is None or context.trace_request_ctx is UNTRACED:
            return
        if trace.client is None:
            trace.client = self._tracer.start_span(
                "chat",
                context=set_span_in_context(trace.server),
                kind=SpanKind.CLIENT,
            )
        self._propagator.inject(params.headers, context=set_span_in_context(trace.client))

    # --- the outcome ----------------------------------------------------------------------

    def record(self, event: UsageEvent, request: ChatRequest | None) -> None:
        """Set the attributes of the current request's spans from its usage event, and end
        the CLIENT span. Does nothing outside a traced request."""
        trace = _current.get()
        if trace is None:
            return
        server = trace.server
        if server.is_recording():
            server.set_attributes(
                {
                    "smartflow.request_id": event.request_id,
                    "gen_ai.operation.name": event.operation,
                    "gen_ai.request.model": event.model_requested or "",
                }
            )
        client = trace.client
        if client is None or trace.client_ended:
            return
        trace.client_ended = True
        if client.is_recording():
            client.update_name(f"{event.operation} {event.model_requested or ''}".rstrip())
            client.set_attributes(genai_attributes(event, request))
            if event.error_type:
                client.set_status(Status(StatusCode.ERROR))
        client.end()

    async def shutdown(self) -> None:
        """Export the spans still queued, waiting at most the export timeout."""
        await asyncio.to_thread(self._provider.shutdown)
        if self._exporter is not None:
            logger.info(
                "tracing: stopped; %d spans exported, %d lost",
                self._exporter.exported,
                self._exporter.failed_spans,
            )


def genai_attributes(event: UsageEvent, request: ChatRequest | None) -> dict[str, Any]:
    """Return the attributes of a GenAI CLIENT span: names, counts and codes only."""
    kind = event.provider_kind or ""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": event.operation,
        "gen_ai.provider.name": PROVIDER_NAMES.get(kind, kind),
        "gen_ai.request.model": event.model_requested or "",
        "gen_ai.usage.input_tokens": event.tokens.input,
        "gen_ai.usage.output_tokens": event.tokens.output,
        "gen_ai.request.stream": event.stream,
        "smartflow.request_id": event.request_id,
        "smartflow.instance": event.instance,
        "smartflow.site": event.site,
        "smartflow.usage_source": event.usage_source,
        "smartflow.attempts": len(event.attempts),
        "smartflow.fallbacks": event.fallbacks,
        "smartflow.status": event.status,
    }
    optional: dict[str, Any] = {
        "gen_ai.response.model": event.model_served,
        "gen_ai.usage.cache_read.input_tokens": event.tokens.cached_input or None,
        "gen_ai.usage.cache_creation.input_tokens": event.tokens.cache_write or None,
        "gen_ai.usage.reasoning.output_tokens": event.tokens.reasoning or None,
        "error.type": event.error_type,
        "smartflow.provider": event.provider,
        "smartflow.deployment": event.deployment,
        "smartflow.cost_usd": event.cost_usd,
    }
    if event.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [event.finish_reason]
    if request is not None:
        sampling = request.sampling
        optional["gen_ai.request.temperature"] = sampling.temperature
        optional["gen_ai.request.top_p"] = sampling.top_p
        optional["gen_ai.request.max_tokens"] = sampling.max_tokens
    attributes.update({name: value for name, value in optional.items() if value is not None})
    policy = event.policy
    if policy is not None:
        attributes["smartflow.policy.request_entity_types"] = sorted(policy.request_entities)
        attributes["smartflow.policy.request_entity_count"] = sum(policy.request_entities.values())
        attributes["smartflow.policy.response_entity_types"] = sorted(policy.response_entities)
        attributes["smartflow.policy.response_entity_count"] = sum(
            policy.response_entities.values()
        )
        if policy.blocked_by:
            attributes["smartflow.policy.blocked_by"] = policy.blocked_by
    return attributes
