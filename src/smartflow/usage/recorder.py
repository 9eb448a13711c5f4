"""The one object the gateway holds for usage: starts builders and emits finished events."""

from __future__ import annotations

import logging

from smartflow.telemetry.metrics import GatewayMetrics
from smartflow.telemetry.tracing import GatewayTracer
from smartflow.usage.builder import UsageBuilder
from smartflow.usage.events import UsageEvent
from smartflow.usage.prices import PriceCatalog
from smartflow.usage.queue import UsageQueue

__all__ = ["UsageRecorder"]

logger = logging.getLogger(__name__)


class UsageRecorder:
    """Prices finished events, queues them for shipping and records their metrics.

    ``queue`` and ``metrics`` are optional, so an instance without a control plane still
    exports metrics. ``emit`` never raises and never waits, so it is safe in a
    ``finally`` block of a request that is being cancelled.
    """

    def __init__(
        self,
        *,
        instance: str,
        site: str,
        prices: PriceCatalog,
        queue: UsageQueue | None = None,
        metrics: GatewayMetrics | None = None,
        tracer: GatewayTracer | None = None,
    ) -> None:
        self.instance = instance
        self.site = site
        self.prices = prices
        self.queue = queue
        self.metrics = metrics
        self.tracer = tracer
        self._rejected = 0

    def start(self, request_id: str, dialect: str, operation: str = "chat") -> UsageBuilder:
        return UsageBuilder(request_id, dialect, self.instance, self.site, operation)

    def emit(self, builder: UsageBuilder, status: int) -> UsageEvent | None:
        """Finish ``builder`` and hand its event to the queue and the metrics.

        Returns the event, or ``None`` if building it failed (logged with its traceback).
        A builder that was already emitted is not emitted again.
        """
        if builder.finished:
            return None
        try:
            event = builder.finish(status, self.prices)
        except Exception:
            logger.exception("usage: building the event of a request failed")
            return None
        if self.metrics is not None:
            try:
                self.metrics.record(event)
            except Exception:
                logger.exception("usage: recording metrics for request %s failed", event.request_id)
        if self.tracer is not None:
            try:
                self.tracer.record(event, builder.request)
            except Exception:
                logger.exception("usage: tracing request %s failed", event.request_id)
        if self.queue is not None and not self.queue.offer(event):
            self._rejected += 1
            # Log the first rejection and then every hundredth; the metrics count each one.
            if self._rejected % 100 == 1:
                logger.warning(
                    "usage: queue rejected the event of request %s (%d rejected so far)",
                    event.request_id,
                    self._rejected,
                )
        return event
