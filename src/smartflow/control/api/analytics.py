"""Event ingest (``POST /v1/events``) and the analytics API over the stored events.

The analytics endpoints are described for the dashboard in ``docs/analytics-api.md``.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from smartflow.control.api.metrics import METRICS_KEY
from smartflow.control.api.routing import Call, Operation
from smartflow.control.services.analytics import (
    BUCKETS,
    DIMENSIONS,
    MAX_BUCKETS,
    EventFilter,
    event_view,
    flatten,
    rfc3339,
)
from smartflow.control.services.errors import ObjectInvalid
from smartflow.control.services.ingest import MAX_BATCH_EVENTS, IngestResult
from smartflow.control.services.prices import PriceCatalogIn, PriceCatalogOut
from smartflow.core.errors import AuthenticationError, SmartflowError

__all__ = ["ANALYTICS_OPERATIONS", "EVENTS_PATH"]

EVENTS_PATH = "/v1/events"
_DAY_MS = 86_400_000
# Short and ASCII, so that every parameter together fits aiohttp's 8190-byte request line.
_NAMES = Field(
    None,
    max_length=300,
    pattern=r"^[A-Za-z0-9_.,:@/+-]*$",
    description="Comma-separated names to keep.",
)


# --- request and response models ------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventBatchIn(BaseModel):
    """A batch of events from one instance, as ``smartflow.usage.shipper`` sends it."""

    model_config = ConfigDict(extra="allow")

    schema_version: int
    instance: str
    site: str | None = None
    batch_id: str | None = None
    sent_at: str | None = None
    events: list[dict[str, Any]] = Field(max_length=MAX_BATCH_EVENTS)


class IngestOut(_Out):
    received: int
    stored: int
    """Events not stored before; the others were repeats of stored event ids."""
    duplicates: int


class FilterQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    from_: AwareDatetime | None = Field(None, alias="from")
    to: AwareDatetime | None = None
    site: str | None = _NAMES
    instance: str | None = _NAMES
    team: str | None = _NAMES
    model: str | None = _NAMES
    provider: str | None = _NAMES
    key: str | None = _NAMES
    format: Literal["json", "csv"] = "json"

    @model_validator(mode="after")
    def _check_window(self) -> FilterQuery:
        if self.from_ is not None and self.to is not None and self.from_ >= self.to:
            raise ValueError("'from' must be before 'to'")
        return self

    def event_filter(self, group_by: tuple[str, ...] = (), bucket: str = "none") -> EventFilter:
        end_ms = _epoch_ms(self.to) if self.to is not None else int(time.time() * 1000)
        start_ms = _epoch_ms(self.from_) if self.from_ is not None else end_ms - _DAY_MS
        filters = {}
        for name in ("site", "instance", "team", "model", "provider", "key"):
            value = getattr(self, name)
            if value:
                filters[name] = tuple(part.strip() for part in value.split(",") if part.strip())
        return EventFilter(start_ms, end_ms, filters, group_by, bucket)


class OverviewQuery(FilterQuery):
    format: Literal["json"] = "json"


class GroupedQuery(FilterQuery):
    group_by: str | None = Field(
        None,
        max_length=100,
        pattern=r"^[a-z_,]*$",
        description="Up to 3 of: " + ", ".join(DIMENSIONS),
    )
    bucket: Literal["none", "minute", "hour", "day"] = "none"

    @field_validator("group_by")
    @classmethod
    def _check_group_by(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = [part.strip() for part in value.split(",") if part.strip()]
        unknown = [name for name in names if name not in DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown dimension {unknown[0]!r:.40}; use {', '.join(DIMENSIONS)}")
        if len(names) > 3 or len(set(names)) != len(names):
            raise ValueError("give at most 3 different dimensions")
        return ",".join(names)

    def grouped_filter(self) -> EventFilter:
        group_by = tuple(self.group_by.split(",")) if self.group_by else ()
        query = self.event_filter(group_by, self.bucket)
        width = BUCKETS[self.bucket]
        if width is not None and (query.end_ms - query.start_ms) / width > MAX_BUCKETS:
            # The handler turns this into a 422 whose issue names the bucket parameter.
            raise ValueError(
                f"bucket: the window contains more than {MAX_BUCKETS} {self.bucket} buckets. "
                "Choose a wider bucket or a shorter window."
            )
        return query


class EventsQuery(FilterQuery):
    limit: int = Field(100, ge=1, le=1000)
    before: str | None = Field(None, min_length=1, max_length=36)


class Window(_Out):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    bucket: str


class Tokens(_Out):
    input: int
    output: int
    cached_input: int
    cache_write: int
    reasoning: int
    total: int


class Distribution(_Out):
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    max: float


class Feedback(_Out):
    count: int
    mean_score: float | None
    min_score: float | None
    max_score: float | None


class _Row(_Out):
    group: dict[str, str | None]
    """The ``group_by`` dimensions and their values; empty when not grouped."""
    bucket: str | None
    """Start of the time bucket; null when ``bucket`` is ``none``."""


class UsageRow(_Row):
    requests: int
    errors: int
    tokens: Tokens
    cost_usd: str
    unpriced_requests: int


class ComplianceRow(_Row):
    requests: int
    requests_with_detections: int
    detections: dict[str, int]
    response_detections: dict[str, int]
    redactions: dict[str, int]
    actions: dict[str, int]
    blocked_requests: int
    blocks: dict[str, int]
    rules_fired: dict[str, int]
    residency_routes: int
    residency_rules: dict[str, int]
    audit_only_requests: int


class QualityRow(_Row):
    requests: int
    errors: int
    error_rate: float | None
    upstream_errors: int
    error_types: dict[str, int]
    latency_ms: Distribution | None
    ttft_ms: Distribution | None
    streams: int
    fallbacks: int
    fallback_rate: float | None
    cache: dict[str, int]
    cache_hit_rate: float | None
    finish_reasons: dict[str, int]
    truncation_rate: float | None
    client_disconnects: int
    feedback: Feedback


class UsageReport(_Out):
    window: Window
    group_by: list[str]
    rows: list[UsageRow]
    totals: UsageRow


class ComplianceReport(_Out):
    window: Window
    group_by: list[str]
    rows: list[ComplianceRow]
    totals: ComplianceRow


class QualityReport(_Out):
    window: Window
    group_by: list[str]
    rows: list[QualityRow]
    totals: QualityRow


class Overview(_Out):
    window: Window
    usage: UsageRow
    compliance: ComplianceRow
    quality: QualityRow
    last_event_at: str | None


class EventOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    event_id: str
    request_id: str
    started_at: str
    instance: str
    site: str
    tokens: dict[str, int]
    cost_usd: str | None
    status: int


class EventPage(_Out):
    items: list[EventOut]
    next_before: str | None


# --- handlers -------------------------------------------------------------------------------


def _epoch_ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


async def _ingest(call: Call) -> IngestOut:
    metrics = call.request.app.get(METRICS_KEY)
    started = time.perf_counter()
    try:
        result = await _ingest_batch(call)
    except SmartflowError as exc:
        if metrics is not None:
            metrics.record_rejected(time.perf_counter() - started, exc.code)
        raise
    if metrics is not None:
        metrics.record_ingest(time.perf_counter() - started, result.stored, result.duplicates)
    return IngestOut(received=result.received, stored=result.stored, duplicates=result.duplicates)


async def _ingest_batch(call: Call) -> IngestResult:
    scheme, _, credential = call.request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise AuthenticationError(
            "missing instance credential: send 'Authorization: Bearer <credential>'"
        )
    instance = await call.plane.access.authenticate_instance(credential.strip())
    return await call.plane.ingest.ingest(call.body, instance)


def _grouped_filter(call: Call) -> EventFilter:
    try:
        return call.query.grouped_filter()  # type: ignore[no-any-return]
    except ValueError as exc:
        raise ObjectInvalid.one("bucket", str(exc).removeprefix("bucket: ")) from None


def _csv(report: str, rows: list[dict[str, Any]]) -> web.Response:
    columns, flat_rows = flatten(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for flat in flat_rows:
        writer.writerow(_cell(flat.get(column)) for column in columns)
    return web.Response(
        text=buffer.getvalue(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{report}.csv"'},
    )


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


async def _usage(call: Call) -> UsageReport | web.Response:
    report = await call.plane.analytics.usage(_grouped_filter(call))
    if call.query.format == "csv":
        return _csv("usage", report["rows"])
    return UsageReport.model_validate(report)


async def _compliance(call: Call) -> ComplianceReport | web.Response:
    report = await call.plane.analytics.compliance(_grouped_filter(call))
    if call.query.format == "csv":
        return _csv("compliance", report["rows"])
    return ComplianceReport.model_validate(report)


async def _quality(call: Call) -> QualityReport | web.Response:
    report = await call.plane.analytics.quality(_grouped_filter(call))
    if call.query.format == "csv":
        return _csv("quality", report["rows"])
    return QualityReport.model_validate(report)


async def _overview(call: Call) -> Overview:
    query = call.query.event_filter()
    analytics = call.plane.analytics
    last = await analytics.last_event_ms(query)
    return Overview.model_validate(
        {
            "window": query.window(),
            "usage": (await analytics.usage(query))["totals"],
            "compliance": (await analytics.compliance(query))["totals"],
            "quality": (await analytics.quality(query))["totals"],
            "last_event_at": rfc3339(last) if last is not None else None,
        }
    )


async def _events(call: Call) -> EventPage | web.Response:
    query: EventsQuery = call.query
    rows, next_before = await call.plane.analytics.events(
        query.event_filter(), limit=query.limit, before=query.before
    )
    items = [event_view(row) for row in rows]
    if query.format == "csv":
        return _csv("events", items)
    return EventPage.model_validate({"items": items, "next_before": next_before})


async def _get_prices(call: Call) -> PriceCatalogOut:
    return await call.plane.prices.get()


async def _put_prices(call: Call) -> PriceCatalogOut:
    return await call.plane.prices.put(call.body, call.signed_in)


_FILTERS = (
    " Filters: from and to (RFC 3339, default the last 24 hours), and comma-separated "
    "site, instance, team, model (the requested model), provider and key names."
)
_CSV = " format=csv returns text/csv with nested fields flattened to dotted columns."


ANALYTICS_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/v1/price-catalog",
        "getPriceCatalog",
        "Get the central price catalogue overlay",
        "prices",
        _get_prices,
        response=PriceCatalogOut,
    ),
    Operation(
        "PUT",
        "/v1/price-catalog",
        "putPriceCatalog",
        "Replace the central price catalogue overlay",
        "prices",
        _put_prices,
        role="admin",
        body=PriceCatalogIn,
        response=PriceCatalogOut,
        description="Entries replace or add to the packaged prices.yaml entry by entry. "
        "A change makes a new snapshot version, so every instance prices usage with it; "
        "each event records the catalogue version as price_version (central-N).",
    ),
    Operation(
        "POST",
        EVENTS_PATH,
        "ingestEvents",
        "Store a batch of usage events and feedback scores from an instance",
        "events",
        _ingest,
        "instance",
        body=EventBatchIn,
        parse_body=False,
        response=IngestOut,
        errors=(403,),
        description="Authenticated with the instance credential (Bearer). Each event is "
        "stored once by its event_id, so a repeated batch stores nothing twice. 422 names "
        "every invalid field as events[i].field; 403 means an event names another instance.",
    ),
    Operation(
        "GET",
        "/v1/analytics/overview",
        "getAnalyticsOverview",
        "Totals of usage, compliance and quality in a window",
        "analytics",
        _overview,
        query=OverviewQuery,
        response=Overview,
        description=_FILTERS.strip(),
    ),
    Operation(
        "GET",
        "/v1/analytics/usage",
        "getAnalyticsUsage",
        "Requests, tokens and cost, grouped and bucketed",
        "analytics",
        _usage,
        query=GroupedQuery,
        response=UsageReport,
        csv=True,
        description=(_FILTERS + _CSV).strip(),
    ),
    Operation(
        "GET",
        "/v1/analytics/compliance",
        "getAnalyticsCompliance",
        "Detections, redactions, blocks and residency routes, grouped and bucketed",
        "analytics",
        _compliance,
        query=GroupedQuery,
        response=ComplianceReport,
        csv=True,
        description=(_FILTERS + _CSV).strip(),
    ),
    Operation(
        "GET",
        "/v1/analytics/quality",
        "getAnalyticsQuality",
        "Errors, latency, fallbacks, cache, finish reasons and feedback, grouped and bucketed",
        "analytics",
        _quality,
        query=GroupedQuery,
        response=QualityReport,
        csv=True,
        description=(_FILTERS + _CSV).strip(),
    ),
    Operation(
        "GET",
        "/v1/analytics/events",
        "listAnalyticsEvents",
        "List stored usage events, newest first",
        "analytics",
        _events,
        query=EventsQuery,
        response=EventPage,
        csv=True,
        description=(_FILTERS + _CSV).strip(),
    ),
)
