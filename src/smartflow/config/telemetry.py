"""The ``telemetry:`` section: request metrics, and export of request traces over OTLP/HTTP."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["OtlpSettings", "TelemetrySettings"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OtlpSettings(_Strict):
    """Destination and limits of span export to an OpenTelemetry collector."""

    endpoint: str = Field(pattern=r"^https?://[^/\s]+(/\S*)?$")
    """Base URL of the collector's OTLP/HTTP receiver, such as http://127.0.0.1:4318.
    Spans are sent with POST to ``/v1/traces`` under it, as protobuf."""
    headers_env: str | None = None
    """Variable with headers for the collector, such as an API key, written as
    ``name=value,name2=value2`` (the form of ``OTEL_EXPORTER_OTLP_HEADERS``)."""
    service_name: str = Field("smartflow-gateway", min_length=1)
    """The ``service.name`` resource attribute of every span."""
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Share of traces started here that are recorded. A caller's ``traceparent`` decides
    for its own traces: sampled ones are recorded, others not."""
    timeout_s: float = Field(10.0, gt=0)
    """Time allowed for one export, retries included; it also bounds the wait for the
    last export when the instance stops."""
    max_queue_spans: int = Field(2048, ge=1)
    """Spans kept in memory while the collector is slow or unreachable; later ones are
    dropped until the queue drains."""


class TelemetrySettings(_Strict):
    metrics: bool = True
    """Request, token, cost and latency series for ``GET /metrics``, recorded with usage
    events on or off. Off saves their cost, about 14% of a pass-through gateway's
    saturation rate in ``bench/RESULTS-usage.md``."""
    otlp: OtlpSettings | None = None
    """Export a trace of each API request over OTLP/HTTP. Off when absent."""
