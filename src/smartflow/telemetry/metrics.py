"""Prometheus metrics of a gateway instance, recorded from finished usage events.

Where the OpenTelemetry GenAI semantic conventions define a metric (repository
open-telemetry/semantic-conventions, ``docs/gen-ai/gen-ai-metrics.md``), its name, unit,
attributes and bucket boundaries are used. Names are translated as the OpenTelemetry
Prometheus exporter does it: dots become underscores and the unit ``s`` adds ``_seconds``.

- ``gen_ai.client.token.usage`` -> ``gen_ai_client_token_usage``
- ``gen_ai.client.operation.duration`` -> ``gen_ai_client_operation_duration_seconds``
- ``gen_ai.server.time_to_first_token`` -> ``gen_ai_server_time_to_first_token_seconds``

Their labels are ``gen_ai_operation_name``, ``gen_ai_provider_name`` (the attribute that
replaced ``gen_ai.system``), ``gen_ai_request_model``, ``gen_ai_response_model``,
``gen_ai_token_type`` and ``error_type``. Everything else is named ``smartflow_*``.

Label values that come from callers or providers (model names, entity types, parameter
names) are capped per label at ``max_label_values`` distinct values; later values are
counted under ``_other``, so a caller sending random model names cannot grow the series
without bound.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from decimal import Decimal

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from smartflow.usage.events import UsageEvent
from smartflow.usage.queue import UsageQueue
from smartflow.usage.shipper import UsageShipper

__all__ = [
    "DURATION_BUCKETS",
    "PROVIDER_NAMES",
    "TOKEN_BUCKETS",
    "TTFT_BUCKETS",
    "GatewayMetrics",
]

logger = logging.getLogger(__name__)

# Bucket boundaries advised by the OpenTelemetry GenAI semantic conventions.
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

PROVIDER_NAMES = {
    "openai": "openai",
    "azure_openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "bedrock": "aws.bedrock",
    "gemini": "gcp.gemini",
    "vertex_gemini": "gcp.vertex_ai",
    "cohere": "cohere",
}
"""Provider type -> well-known ``gen_ai.provider.name`` value."""

OTHER = "_other"

_GENAI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
# Token-usage events whose counts come from the provider; estimates are not reported
# there, as the conventions ask (they are counted in smartflow_usage_events_total).
_REPORTED_SOURCES = frozenset({"provider", "partial"})


class _LabelCap:
    """Admits up to ``limit`` distinct values per label name, then maps others to ``_other``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: dict[str, set[str]] = {}
        self._overflowed: set[str] = set()

    def __call__(self, label: str, value: str | None) -> str:
        text = value or ""
        seen = self._seen.setdefault(label, set())
        if text in seen:
            return text
        if len(seen) < self._limit:
            seen.add(text)
            return text
        if label not in self._overflowed:
            self._overflowed.add(label)
            logger.warning(
                "metrics: label %s has %d distinct values; further ones are counted as %s",
                label,
                self._limit,
                OTHER,
            )
        return OTHER


class GatewayMetrics:
    """The metrics of one instance in their own registry, and the ``/metrics`` handler."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, max_label_values: int = 200
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._cap = _LabelCap(max_label_values)
        self._pipeline: _PipelineCollector | None = None
        self._define_genai()
        self._define_gateway()

    def _define_genai(self) -> None:
        registry = self.registry
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used per request ({token}).",
            [*_GENAI, "gen_ai_response_model", "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of a request through the gateway, retries and fallbacks included.",
            [*_GENAI, "gen_ai_response_model", "error_type"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from receipt of a streaming request to its first bytes for the caller.",
            [*_GENAI, "gen_ai_response_model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )

    def _define_gateway(self) -> None:
        registry = self.registry
        self.token_details = Counter(
            "smartflow_token_details",
            "Detail token counts, each already included in the input or output totals.",
            ["gen_ai_provider_name", "gen_ai_response_model", "type"],
            registry=registry,
        )
        self.cost = Counter(
            "smartflow_usage_cost_usd",
            "Cost of requests in US dollars at catalogue list prices.",
            ["gen_ai_provider_name", "gen_ai_request_model", "team"],
            registry=registry,
        )
        self.unpriced = Counter(
            "smartflow_usage_unpriced_requests",
            "Requests that used tokens of a model without a catalogue price.",
            ["gen_ai_provider_name", "gen_ai_response_model"],
            registry=registry,
        )
        self.events = Counter(
            "smartflow_usage_events",
            "Usage events recorded, by where their token counts come from.",
            ["usage_source"],
            registry=registry,
        )
        self.requests = Counter(
            "smartflow_requests",
            "Requests by ingress dialect, requested model and HTTP status.",
            ["dialect", "gen_ai_request_model", "status", "error_type"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "smartflow_fallbacks",
            "Moves from one deployment to the next within a request.",
            ["gen_ai_request_model"],
            registry=registry,
        )
        self.attempts = Counter(
            "smartflow_upstream_attempts",
            "Tries at upstream deployments, by outcome (ok or the error code).",
            ["deployment", "outcome"],
            registry=registry,
        )
        self.normalization_changes = Counter(
            "smartflow_normalization_changes",
            "Request parameters changed to fit the target model, by parameter and rule.",
            ["param", "rule"],
            registry=registry,
        )
        self.policy_entities = Counter(
            "smartflow_policy_entities",
            "Policy findings by direction (request or response) and entity type.",
            ["direction", "entity_type"],
            registry=registry,
        )
        self.policy_actions = Counter(
            "smartflow_policy_actions",
            "Policy actions taken, by entity type and action.",
            ["entity_type", "action"],
            registry=registry,
        )
        self.policy_blocks = Counter(
            "smartflow_policy_blocked_requests",
            "Requests or responses blocked by a policy.",
            registry=registry,
        )
        self.client_disconnects = Counter(
            "smartflow_client_disconnects",
            "Requests whose caller disconnected before the response was complete.",
            registry=registry,
        )

    # --- recording ----------------------------------------------------------------------

    def record(self, event: UsageEvent) -> None:
        """Update every metric from one finished usage event."""
        provider = PROVIDER_NAMES.get(event.provider_kind or "", event.provider_kind or "")
        requested = self._cap("gen_ai_request_model", event.model_requested)
        served = self._cap("gen_ai_response_model", event.model_served)
        genai = (event.operation, provider, requested)
        error = event.error_type or ""
        self._record_tokens(event, genai, served)
        self.operation_duration.labels(*genai, served, error).observe(event.latency_ms / 1000)
        if event.ttft_ms is not None:
            self.time_to_first_token.labels(*genai, served).observe(event.ttft_ms / 1000)
        self.requests.labels(event.dialect, requested, str(event.status), error).inc()
        self.events.labels(event.usage_source).inc()
        self._record_cost(event, provider, requested, served)
        self._record_routing(event, requested)
        self._record_policy(event)
        if event.client_disconnected:
            self.client_disconnects.inc()

    def _record_tokens(self, event: UsageEvent, genai: tuple[str, str, str], served: str) -> None:
        if event.usage_source not in _REPORTED_SOURCES:
            return
        tokens = event.tokens
        self.token_usage.labels(*genai, served, "input").observe(tokens.input)
        self.token_usage.labels(*genai, served, "output").observe(tokens.output)
        provider = genai[1]
        for kind, count in (
            ("cached_input", tokens.cached_input),
            ("cache_write", tokens.cache_write),
            ("reasoning", tokens.reasoning),
        ):
            if count:
                self.token_details.labels(provider, served, kind).inc(count)

    def _record_cost(self, event: UsageEvent, provider: str, requested: str, served: str) -> None:
        if event.cost_usd is not None:
            team = self._cap("team", event.team)
            self.cost.labels(provider, requested, team).inc(float(Decimal(event.cost_usd)))
        elif event.price_missing:
            self.unpriced.labels(provider, served).inc()

    def _record_routing(self, event: UsageEvent, requested: str) -> None:
        if event.fallbacks:
            self.fallbacks.labels(requested).inc(event.fallbacks)
        for attempt in event.attempts:
            deployment = self._cap("deployment", attempt.deployment)
            self.attempts.labels(deployment, attempt.error or "ok").inc()
        for change in event.normalization:
            param = self._cap("param", str(change.get("param")))
            self.normalization_changes.labels(param, str(change.get("rule"))).inc()

    def _record_policy(self, event: UsageEvent) -> None:
        policy = event.policy
        if policy is None:
            return
        for direction, counts in (
            ("request", policy.request_entities),
            ("response", policy.response_entities),
        ):
            for entity, count in counts.items():
                entity_type = self._cap("entity_type", entity)
                self.policy_entities.labels(direction, entity_type).inc(count)
        for entity, action in policy.actions.items():
            self.policy_actions.labels(self._cap("entity_type", entity), action).inc()
        if policy.blocked_by:
            self.policy_blocks.inc()

    # --- the usage pipeline and exposition ----------------------------------------------

    def watch_pipeline(self, queue: UsageQueue, shipper: UsageShipper | None = None) -> None:
        """Export the queue's depth and drops, and the shipper's counts, at each scrape."""
        if self._pipeline is not None:
            self.registry.unregister(self._pipeline)
        self._pipeline = _PipelineCollector(queue, shipper)
        self.registry.register(self._pipeline)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """Return the exposition body and its content type for an ``Accept`` header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    async def handle(self, request: web.Request) -> web.Response:
        """Serve ``GET /metrics`` in the Prometheus text format, or OpenMetrics on request."""
        body, content_type = self.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})


class _PipelineCollector(Collector):
    """Reads the usage queue's and shipper's in-memory counters at scrape time."""

    def __init__(self, queue: UsageQueue, shipper: UsageShipper | None) -> None:
        self._queue = queue
        self._shipper = shipper

    def collect(self) -> Iterable[Metric]:
        stats = self._queue.stats()
        yield GaugeMetricFamily(
            "smartflow_usage_queue_depth", "Usage events on disk, not yet shipped.", stats.depth
        )
        yield GaugeMetricFamily(
            "smartflow_usage_queue_bytes", "JSON bytes of the usage events on disk.", stats.bytes
        )
        yield GaugeMetricFamily(
            "smartflow_usage_queue_buffered",
            "Usage events in memory, not yet written to disk.",
            stats.buffered,
        )
        yield GaugeMetricFamily(
            "smartflow_usage_queue_backpressure",
            "1 when the usage queue is dropping or about to drop events, else 0.",
            1 if stats.backpressure else 0,
        )
        dropped = CounterMetricFamily(
            "smartflow_usage_events_dropped",
            "Usage events lost or set aside, by reason.",
            labels=["reason"],
        )
        dropped.add_metric(["oldest_dropped"], stats.dropped_oldest)
        dropped.add_metric(["disk_full_rejected"], stats.rejected_full)
        dropped.add_metric(["buffer_full"], stats.buffer_overflow)
        dropped.add_metric(["dead_lettered"], stats.dead_lettered)
        yield dropped
        if self._shipper is not None:
            yield from self._shipper_metrics(self._shipper)

    @staticmethod
    def _shipper_metrics(shipper: UsageShipper) -> Iterable[Metric]:
        stats = shipper.stats
        yield CounterMetricFamily(
            "smartflow_usage_shipped_events",
            "Usage events the control plane acknowledged.",
            stats.shipped,
        )
        yield CounterMetricFamily(
            "smartflow_usage_ship_failures",
            "Failed sends of usage batches, each retried later.",
            stats.failures,
        )
        if stats.last_success_unix is not None:
            yield GaugeMetricFamily(
                "smartflow_usage_last_shipped_timestamp_seconds",
                "Unix time of the last acknowledged usage batch.",
                stats.last_success_unix,
            )
