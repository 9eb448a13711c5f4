"""Prometheus metrics of the control plane and its ``GET /metrics`` operation.

``/metrics`` needs an admin token of any role (``Authorization: Bearer``), unlike a
gateway's. The control plane is reached by instances from other sites and networks,
and its metrics name routes and ingest failure codes, so it does not serve them to
anyone who can connect. Prometheus sends the token with ``authorization.credentials``
(or ``credentials_file``) in the scrape configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from smartflow.control.api.routing import PLANE_KEY, Call, Operation
from smartflow.control.api.sync import STREAMS_KEY

__all__ = ["METRICS_KEY", "METRICS_OPERATION", "ControlMetrics"]

logger = logging.getLogger(__name__)

INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Bucket bounds in seconds, from 1 ms to 10 s."""
_UNMATCHED_ROUTE = "unmatched"


class ControlMetrics:
    """The counters of one control-plane process, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.http_requests = Counter(
            "smartflow_control_http_requests",
            "HTTP requests served, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.ingest_events = Counter(
            "smartflow_control_ingest_events",
            "Usage events and feedback scores in accepted batches, by whether they were "
            "stored or were duplicates of stored ones.",
            ["result"],
            registry=self.registry,
        )
        self.ingest_rejected = Counter(
            "smartflow_control_ingest_rejected_batches",
            "Event batches rejected whole after JSON decoding, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.ingest_duration = Histogram(
            "smartflow_control_ingest_duration_seconds",
            "Time to check and store one event batch, rejected batches included.",
            buckets=INGEST_BUCKETS,
            registry=self.registry,
        )
        self._state: _StateCollector | None = None

    def watch(self, app: web.Application) -> None:
        """Export the app's sync streams and snapshot versions at each scrape."""
        if self._state is not None:
            self.registry.unregister(self._state)
        self._state = _StateCollector(app)
        self.registry.register(self._state)

    def record_ingest(self, seconds: float, stored: int, duplicates: int) -> None:
        self.ingest_duration.observe(seconds)
        self.ingest_events.labels("stored").inc(stored)
        self.ingest_events.labels("duplicate").inc(duplicates)

    def record_rejected(self, seconds: float, code: str) -> None:
        self.ingest_duration.observe(seconds)
        self.ingest_rejected.labels(code).inc()

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """Return the exposition body and its content type for an ``Accept`` header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Count each request by its route template, so ids in paths add no series."""
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.http_requests.labels(request.method, _route(request), str(status)).inc()


METRICS_KEY = web.AppKey("control_metrics", ControlMetrics)


def _route(request: web.Request) -> str:
    # 404 and 405 responses have a system route without a resource.
    resource = request.match_info.route.resource
    if resource is None:
        return _UNMATCHED_ROUTE
    return resource.canonical


class _StateCollector(Collector):
    """Reads the open sync streams and the snapshot counters at scrape time."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterable[Metric]:
        streams = self._app.get(STREAMS_KEY)
        if streams is not None:
            yield GaugeMetricFamily(
                "smartflow_control_sync_streams",
                "Instances with an open sync stream to this process.",
                streams.connected_count,
            )
        plane = self._app.get(PLANE_KEY)
        if plane is None:
            return
        yield CounterMetricFamily(
            "smartflow_control_snapshot_versions_made",
            "Snapshot versions made by this process since it started.",
            plane.store.versions_made,
        )
        yield GaugeMetricFamily(
            "smartflow_control_snapshot_head_version",
            "Newest snapshot version this process knows of.",
            plane.notifier.version,
        )


async def _metrics(call: Call) -> web.Response:
    metrics = call.request.app[METRICS_KEY]
    body, content_type = metrics.render(call.request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


METRICS_OPERATION = Operation(
    "GET",
    "/metrics",
    "getMetrics",
    "Prometheus metrics of this control-plane process",
    "system",
    _metrics,
    description=(
        "The Prometheus text format, or OpenMetrics when the Accept header asks for it. "
        "Needs an admin token of any role."
    ),
)
