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

import itertools
import logging
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from smartflow.usage.events import PolicySummary, UsageEvent
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


def _observe(state: list[float], bounds: tuple[float, ...], amount: float) -> None:
    """Count ``amount`` in a histogram state, as ``_HistogramFamily.observe`` does."""
    # Bucket i counts values v with bounds[i-1] < v <= bounds[i], as Prometheus's le.
    state[bisect_left(bounds, amount)] += 1
    state[-1] += amount


def _go_float(value: float) -> str:
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


class _CounterFamily:
    """A counter with labels, kept as plain floats per label tuple.

    prometheus_client's ``labels()`` lookup and per-child lock cost more than the rest
    of recording an event, so the values live in a dict that ``collect`` turns into a
    metric family at scrape time. Not thread-safe: record and scrape on one event loop.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        # The value of each series is the only item of a list, so a caller that keeps the
        # list can add to it without looking the labels up again.
        self.values: dict[tuple[str, ...], list[float]] = {}
        self.created: dict[tuple[str, ...], float] = {}
        if not self.labelnames:
            self.values[()] = [0.0]
            self.created[()] = time.time()

    def cell(self, labels: tuple[str, ...]) -> list[float]:
        """Return the value of ``labels`` as a one-item list, created at 0 if it is new."""
        cell = self.values.get(labels)
        if cell is None:
            cell = self.values[labels] = [0.0]
            self.created[labels] = time.time()
        return cell

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        self.cell(labels)[0] += amount

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, cell in list(self.values.items()):
            family.add_metric(labels, cell[0], created=self.created.get(labels))
        return family


class _HistogramFamily:
    """A histogram with labels, kept as bucket counts per label tuple; see ``_CounterFamily``."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(bound) for bound in buckets)
        # The ``le`` values exactly as prometheus_client writes them (1.6777216e+07).
        self._bucket_names = [_go_float(bound) for bound in self.bounds] + ["+Inf"]
        # Per label tuple: the count of each bucket (the last is +Inf), then the sum.
        self.values: dict[tuple[str, ...], list[float]] = {}
        self.created: dict[tuple[str, ...], float] = {}

    def state(self, labels: tuple[str, ...]) -> list[float]:
        """Return the bucket counts and sum of ``labels``, created empty if new."""
        state = self.values.get(labels)
        if state is None:
            state = self.values[labels] = [0] * (len(self.bounds) + 1) + [0.0]
            self.created[labels] = time.time()
        return state

    def observe(self, labels: tuple[str, ...], amount: float) -> None:
        _observe(self.state(labels), self.bounds, amount)

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, state in list(self.values.items()):
            counts = state[:-1]
            cumulative = list(itertools.accumulate(counts))
            buckets = list(zip(self._bucket_names, cumulative, strict=True))
            family.add_metric(labels, buckets, sum_value=state[-1])
            created = self.created.get(labels)
            if created is not None:
                family.samples.append(
                    Sample(
                        self.name + "_created",
                        dict(zip(self.labelnames, labels, strict=True)),
                        created,
                    )
                )
        return family


_FAMILY_TYPES = (_CounterFamily, _HistogramFamily)


class _FamiliesCollector(Collector):
    def __init__(self, families: list[_CounterFamily | _HistogramFamily]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        for family in self._families:
            yield family.collect()


_MAX_SERIES_KEYS = 10_000
"""Event keys whose resolved series are kept; the cache starts over when it is full."""


@dataclass(slots=True)
class _Series:
    """The label values and series of one combination of an event's labelled fields."""

    labels: tuple[str, str, str, str, str]
    """Operation, provider name, requested model, served model and error type, capped."""
    input_tokens: list[float] | None
    output_tokens: list[float] | None
    duration: list[float]
    requests: list[float]
    events: list[float]
    """The counts of ``smartflow_requests`` and ``smartflow_usage_events``, as one-item lists."""
    ttft: list[float] | None = None
    """The time-to-first-token histogram, created by the first event that has one."""
    unpriced: list[float] | None = None
    """The count of ``smartflow_usage_unpriced_requests``, created by the first such event."""


class GatewayMetrics:
    """The metrics of one instance in their own registry, and the ``/metrics`` handler."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_label_values: int = 200,
        requests: bool = True,
    ) -> None:
        """``requests=False`` leaves the request series out of the exposition, for an
        instance that does not record them (``telemetry.metrics: false``)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self._cap = _LabelCap(max_label_values)
        # Resolved labels and series per event key, so that recording an event whose labels
        # were seen before skips the label caps and the lookups by label tuple.
        self._series: dict[tuple[object, ...], _Series] = {}
        # The attempts count of the successful tries per deployment label, for the same reason.
        self._succeeded_attempts: dict[str, list[float]] = {}
        self._pipeline: _PipelineCollector | None = None
        self._define_genai()
        self._define_gateway()
        if requests:
            self.registry.register(
                _FamiliesCollector([v for v in vars(self).values() if isinstance(v, _FAMILY_TYPES)])
            )

    def _define_genai(self) -> None:
        self.token_usage = _HistogramFamily(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used per request ({token}).",
            [*_GENAI, "gen_ai_response_model", "gen_ai_token_type"],
            TOKEN_BUCKETS,
        )
        self.operation_duration = _HistogramFamily(
            "gen_ai_client_operation_duration_seconds",
            "Duration of a request through the gateway, retries and fallbacks included.",
            [*_GENAI, "gen_ai_response_model", "error_type"],
            DURATION_BUCKETS,
        )
        self.time_to_first_token = _HistogramFamily(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from receipt of a streaming request to its first bytes for the caller.",
            [*_GENAI, "gen_ai_response_model"],
            TTFT_BUCKETS,
        )

    def _define_gateway(self) -> None:
        self.token_details = _CounterFamily(
            "smartflow_token_details",
            "Detail token counts, each already included in the input or output totals.",
            ["gen_ai_provider_name", "gen_ai_response_model", "type"],
        )
        self.cost = _CounterFamily(
            "smartflow_usage_cost_usd",
            "Cost of requests in US dollars at catalogue list prices.",
            ["gen_ai_provider_name", "gen_ai_request_model", "team"],
        )
        self.unpriced = _CounterFamily(
            "smartflow_usage_unpriced_requests",
            "Requests that used tokens of a model without a catalogue price.",
            ["gen_ai_provider_name", "gen_ai_response_model"],
        )
        self.events = _CounterFamily(
            "smartflow_usage_events",
            "Requests counted, by where their token counts come from (the usage event's "
            "usage_source, whether or not events are queued).",
            ["usage_source"],
        )
        self.requests = _CounterFamily(
            "smartflow_requests",
            "Requests by ingress dialect, requested model and HTTP status.",
            ["dialect", "gen_ai_request_model", "status", "error_type"],
        )
        self.fallbacks = _CounterFamily(
            "smartflow_fallbacks",
            "Moves from one deployment to the next within a request.",
            ["gen_ai_request_model"],
        )
        self.attempts = _CounterFamily(
            "smartflow_upstream_attempts",
            "Tries at upstream deployments, by outcome (ok or the error code).",
            ["deployment", "outcome"],
        )
        self.normalization_changes = _CounterFamily(
            "smartflow_normalization_changes",
            "Request parameters changed to fit the target model, by parameter and rule.",
            ["param", "rule"],
        )
        self.policy_entities = _CounterFamily(
            "smartflow_policy_entities",
            "Policy findings by direction (request or response) and entity type.",
            ["direction", "entity_type"],
        )
        self.policy_actions = _CounterFamily(
            "smartflow_policy_actions",
            "Policy actions taken, by entity type and action.",
            ["entity_type", "action"],
        )
        self.policy_blocks = _CounterFamily(
            "smartflow_policy_blocked_requests",
            "Requests or responses blocked by a policy.",
        )
        self.client_disconnects = _CounterFamily(
            "smartflow_client_disconnects",
            "Requests whose caller disconnected before the response was complete.",
        )

    # --- recording ----------------------------------------------------------------------

    def record(self, event: UsageEvent) -> None:
        """Update every metric from one finished usage event."""
        key = (
            event.operation,
            event.provider_kind,
            event.model_requested,
            event.model_served,
            event.error_type,
            event.dialect,
            event.status,
            event.usage_source,
        )
        series = self._series.get(key)
        if series is None:
            series = self._new_series(*key)
        labels = series.labels
        # The histograms are counted as _observe counts them, written out here because a
        # call would cost as much as the counting.
        input_state = series.input_tokens
        output_state = series.output_tokens
        if input_state is not None and output_state is not None:
            tokens = event.tokens
            input_state[bisect_left(TOKEN_BUCKETS, tokens.input)] += 1
            input_state[-1] += tokens.input
            output_state[bisect_left(TOKEN_BUCKETS, tokens.output)] += 1
            output_state[-1] += tokens.output
            if tokens.cached_input or tokens.cache_write or tokens.reasoning:
                self._record_token_details(event, labels[1], labels[3])
        seconds = event.latency_ms / 1000
        duration = series.duration
        duration[bisect_left(DURATION_BUCKETS, seconds)] += 1
        duration[-1] += seconds
        if event.ttft_ms is not None:
            if series.ttft is None:
                series.ttft = self.time_to_first_token.state(labels[:4])
            seconds = event.ttft_ms / 1000
            series.ttft[bisect_left(TTFT_BUCKETS, seconds)] += 1
            series.ttft[-1] += seconds
        series.requests[0] += 1
        series.events[0] += 1
        if event.cost_usd is not None:
            team = self._cap("team", event.team)
            self.cost.inc((labels[1], labels[2], team), float(event.cost_usd))
        elif event.price_missing:
            if series.unpriced is None:
                series.unpriced = self.unpriced.cell((labels[1], labels[3]))
            series.unpriced[0] += 1
        attempts = event.attempts
        if len(attempts) == 1 and attempts[0].error is None:
            deployment = attempts[0].deployment
            cell = self._succeeded_attempts.get(deployment)
            if cell is None:
                cell = self._succeeded_attempt(deployment)
            cell[0] += 1
        elif attempts:
            self._record_attempts(event, labels[2])
        if event.normalization:
            self._record_normalization(event.normalization)
        if event.policy is not None:
            self._record_policy(event.policy)
        if event.client_disconnected:
            self.client_disconnects.inc()

    def _new_series(
        self,
        operation: str,
        kind: str | None,
        requested_model: str | None,
        served_model: str | None,
        error_type: str | None,
        dialect: str,
        status: int,
        source: str,
    ) -> _Series:
        """Resolve the labels of an event key and create its series."""
        if len(self._series) >= _MAX_SERIES_KEYS:
            self._series.clear()
        provider = PROVIDER_NAMES.get(kind or "", kind or "")
        requested = self._cap("gen_ai_request_model", requested_model)
        served = self._cap("gen_ai_response_model", served_model)
        error = error_type or ""
        labels = (operation, provider, requested, served, error)
        reported = source in _REPORTED_SOURCES
        series = _Series(
            labels=labels,
            input_tokens=self.token_usage.state((*labels[:4], "input")) if reported else None,
            output_tokens=self.token_usage.state((*labels[:4], "output")) if reported else None,
            duration=self.operation_duration.state(labels),
            requests=self.requests.cell((dialect, requested, str(status), error)),
            events=self.events.cell((source,)),
        )
        key = (operation, kind, requested_model, served_model, error_type, dialect, status, source)
        self._series[key] = series
        return series

    def _record_token_details(self, event: UsageEvent, provider: str, served: str) -> None:
        tokens = event.tokens
        if tokens.cached_input:
            self.token_details.inc((provider, served, "cached_input"), tokens.cached_input)
        if tokens.cache_write:
            self.token_details.inc((provider, served, "cache_write"), tokens.cache_write)
        if tokens.reasoning:
            self.token_details.inc((provider, served, "reasoning"), tokens.reasoning)

    def _succeeded_attempt(self, deployment: str) -> list[float]:
        """Return the ``attempts`` count of the successful tries at ``deployment``, and
        keep it for later events."""
        if len(self._succeeded_attempts) >= _MAX_SERIES_KEYS:
            self._succeeded_attempts.clear()
        cell = self.attempts.cell((self._cap("deployment", deployment), "ok"))
        self._succeeded_attempts[deployment] = cell
        return cell

    def _record_attempts(self, event: UsageEvent, requested: str) -> None:
        attempts = event.attempts
        if len(attempts) > 1 and event.fallbacks:
            self.fallbacks.inc((requested,), event.fallbacks)
        for attempt in attempts:
            deployment = self._cap("deployment", attempt.deployment)
            self.attempts.inc((deployment, attempt.error or "ok"))

    def _record_normalization(self, changes: list[dict[str, Any]]) -> None:
        for change in changes:
            param = self._cap("param", str(change.get("param")))
            self.normalization_changes.inc((param, str(change.get("rule"))))

    def _record_policy(self, policy: PolicySummary) -> None:
        for direction, counts in (
            ("request", policy.request_entities),
            ("response", policy.response_entities),
        ):
            for entity, count in counts.items():
                entity_type = self._cap("entity_type", entity)
                self.policy_entities.inc((direction, entity_type), count)
        for entity, action in policy.actions.items():
            self.policy_actions.inc((self._cap("entity_type", entity), action))
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
