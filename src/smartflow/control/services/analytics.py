"""Aggregates of the stored usage events: usage and cost, compliance, quality.

Usage sums run in SQL. Compliance and quality read the matching rows' few columns and
aggregate in Python, because entity counts sit in a JSON column and percentiles have no
common SQL function in SQLite and PostgreSQL; percentiles interpolate linearly as
PostgreSQL's ``percentile_cont`` does.

NOTE: compliance and quality read every event in the window, so their time grows with
the window's event count. They were run on test volumes only (up to a few thousand events).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.sql.elements import KeyedColumnElement

from smartflow.control.services.ingest import PICO_PER_USD
from smartflow.control.services.transactions import Store
from smartflow.control.store.tables import EventRow, FeedbackRow

__all__ = [
    "BUCKETS",
    "DIMENSIONS",
    "MAX_BUCKETS",
    "AnalyticsService",
    "EventFilter",
    "percentile",
    "rfc3339",
]

DIMENSIONS: dict[str, KeyedColumnElement[Any]] = {
    "site": EventRow.site,  # type: ignore[dict-item]
    "instance": EventRow.instance,  # type: ignore[dict-item]
    "provider": EventRow.provider,  # type: ignore[dict-item]
    "model": EventRow.model_requested,  # type: ignore[dict-item]
    "model_served": EventRow.model_served,  # type: ignore[dict-item]
    "deployment": EventRow.deployment,  # type: ignore[dict-item]
    "team": EventRow.team,  # type: ignore[dict-item]
    "key": EventRow.key_name,  # type: ignore[dict-item]
}
"""Group-by and filter names of the API, and the column each one reads."""

BUCKETS: dict[str, int | None] = {
    "none": None,
    "minute": 60_000,
    "hour": 3_600_000,
    "day": 86_400_000,
}
"""Bucket names and their width in milliseconds."""

MAX_BUCKETS = 2000
PERCENTILES = (50, 90, 95, 99)
REDACTING_ACTIONS = frozenset({"redact", "mask", "tokenize"})
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "refusal", "error")
_CLIENT_CLOSED = 499


def rfc3339(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if epoch_ms % 1000:
        text += f".{epoch_ms % 1000:03d}"
    return text + "Z"


def percentile(ordered: Sequence[float], share: float) -> float:
    """Interpolate the ``share`` (0 to 1) percentile of sorted values, like percentile_cont."""
    position = share * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = position - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


def _distribution(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    values.sort()
    summary = {f"p{p}": round(percentile(values, p / 100), 3) for p in PERCENTILES}
    summary["mean"] = round(math.fsum(values) / len(values), 3)
    summary["max"] = values[-1]
    return summary


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _usd(picodollars: int) -> str:
    # Fixed-point format: str() of a zero Decimal with 12 places would give "0E-12".
    return f"{Decimal(picodollars) / PICO_PER_USD:.12f}"


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The window, filters and grouping of one aggregate query."""

    start_ms: int
    end_ms: int
    filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Dimension name to the values to keep."""
    group_by: tuple[str, ...] = ()
    bucket: str = "none"

    def conditions(self) -> list[ColumnElement[bool]]:
        conditions = [EventRow.started_ms >= self.start_ms, EventRow.started_ms < self.end_ms]
        for name, values in self.filters.items():
            if values:
                conditions.append(DIMENSIONS[name].in_(values))
        return conditions

    def key_columns(self) -> list[ColumnElement[Any]]:
        columns: list[ColumnElement[Any]] = [DIMENSIONS[name] for name in self.group_by]
        width = BUCKETS[self.bucket]
        if width is not None:
            columns.append(((EventRow.started_ms // width) * width).label("bucket"))
        return columns

    def window(self) -> dict[str, str]:
        return {"from": rfc3339(self.start_ms), "to": rfc3339(self.end_ms), "bucket": self.bucket}


Key = tuple[Any, ...]


def _sort_key(key: Key) -> tuple[Any, ...]:
    # The bucket is last in the key and first in the order; None sorts before any name.
    *names, bucket = key
    return (bucket or 0, *((value is not None, value or "") for value in names))


class _Rows:
    """Accumulators per group key, plus one for the totals."""

    def __init__(self, query: EventFilter, factory: type[_Accumulator]) -> None:
        self._query = query
        self._factory = factory
        self.groups: dict[Key, _Accumulator] = {}
        self.total = factory()

    def get(self, values: Sequence[Any]) -> _Accumulator:
        key: Key = tuple(values) if self._query.bucket != "none" else (*values, None)
        accumulator = self.groups.get(key)
        if accumulator is None:
            accumulator = self.groups[key] = self._factory()
        return accumulator

    def result(self) -> dict[str, Any]:
        rows = []
        for key in sorted(self.groups, key=_sort_key):
            *names, bucket = key
            row = {
                "group": dict(zip(self._query.group_by, names, strict=True)),
                "bucket": rfc3339(bucket) if bucket is not None else None,
            }
            row.update(self.groups[key].to_dict())
            rows.append(row)
        totals = {"group": {}, "bucket": None, **self.total.to_dict()}
        return {
            "window": self._query.window(),
            "group_by": list(self._query.group_by),
            "rows": rows,
            "totals": totals,
        }


class _Accumulator:
    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


# --- usage ----------------------------------------------------------------------------------


class _Usage(_Accumulator):
    def __init__(self) -> None:
        self.values = [0] * 9

    def add(self, values: Sequence[int | None]) -> None:
        for index, value in enumerate(values):
            self.values[index] += int(value or 0)

    def to_dict(self) -> dict[str, Any]:
        requests, errors, inp, out, cached, written, reasoning, cost, unpriced = self.values
        return {
            "requests": requests,
            "errors": errors,
            "tokens": {
                "input": inp,
                "output": out,
                "cached_input": cached,
                "cache_write": written,
                "reasoning": reasoning,
                "total": inp + out,
            },
            "cost_usd": _usd(cost),
            "unpriced_requests": unpriced,
        }


def _is_error() -> ColumnElement[bool]:
    return and_(EventRow.status >= 400, EventRow.status != _CLIENT_CLOSED)


def _usage_sums() -> list[ColumnElement[Any]]:
    return [
        func.count(),
        func.sum(case((_is_error(), 1), else_=0)),
        func.sum(EventRow.input_tokens),
        func.sum(EventRow.output_tokens),
        func.sum(EventRow.cached_input_tokens),
        func.sum(EventRow.cache_write_tokens),
        func.sum(EventRow.reasoning_tokens),
        # NOTE: SQLite sums integers in 64 bits, so one group's cost above 9.2 million USD
        # raises an overflow error there; PostgreSQL sums bigint as numeric.
        func.sum(EventRow.cost_pusd),
        func.sum(case((EventRow.price_missing, 1), else_=0)),
    ]


# --- compliance -----------------------------------------------------------------------------


class _Compliance(_Accumulator):
    def __init__(self) -> None:
        self.requests = 0
        self.with_detections = 0
        self.detections: Counter[str] = Counter()
        self.response_detections: Counter[str] = Counter()
        self.redactions: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()
        self.blocks: Counter[str] = Counter()
        self.rules: Counter[str] = Counter()
        self.residency: Counter[str] = Counter()
        self.residency_routes = 0
        self.audit_only = 0

    def add(self, policy: dict[str, Any] | None, blocked_by: str | None) -> None:
        self.requests += 1
        if blocked_by:
            self.blocks[blocked_by] += 1
        if not policy:
            return
        request = policy.get("request_entities") or {}
        response = policy.get("response_entities") or {}
        if request or response:
            self.with_detections += 1
        self.detections.update(request)
        self.detections.update(response)
        self.response_detections.update(response)
        for entity, action in (policy.get("actions") or {}).items():
            self.actions[action] += 1
            if action in REDACTING_ACTIONS:
                self.redactions[entity] += request.get(entity, 0) + response.get(entity, 0)
        self.rules.update(set(policy.get("rules") or ()))
        residency = policy.get("residency")
        if residency:
            self.residency_routes += 1
            self.residency.update(residency.split(","))
        if policy.get("audit_policies"):
            self.audit_only += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "requests_with_detections": self.with_detections,
            "detections": dict(self.detections),
            "response_detections": dict(self.response_detections),
            "redactions": dict(self.redactions),
            "actions": dict(self.actions),
            "blocked_requests": sum(self.blocks.values()),
            "blocks": dict(self.blocks),
            "rules_fired": dict(self.rules),
            "residency_routes": self.residency_routes,
            "residency_rules": dict(self.residency),
            "audit_only_requests": self.audit_only,
        }


# --- quality --------------------------------------------------------------------------------

_QUALITY_COLUMNS = (
    EventRow.status,
    EventRow.error_type,
    EventRow.latency_ms,
    EventRow.ttft_ms,
    EventRow.stream,
    EventRow.cache,
    EventRow.fallbacks,
    EventRow.finish_reason,
    EventRow.client_disconnected,
)


class _Quality(_Accumulator):
    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.upstream_errors = 0
        self.error_types: Counter[str] = Counter()
        self.latency: list[float] = []
        self.ttft: list[float] = []
        self.streams = 0
        self.fallbacks = 0
        self.cache: Counter[str] = Counter({"hit": 0, "miss": 0, "bypass": 0, "none": 0})
        self.finish: Counter[str] = Counter()
        self.disconnects = 0
        self.scores: list[float] = []

    def add(self, row: Sequence[Any]) -> None:
        status, error_type, latency, ttft, stream, cache, fallbacks, finish, disconnected = row
        self.requests += 1
        if status >= 400 and status != _CLIENT_CLOSED:
            self.errors += 1
        if status >= 500:
            self.upstream_errors += 1
        if error_type:
            self.error_types[error_type] += 1
        self.latency.append(latency)
        if ttft is not None:
            self.ttft.append(ttft)
        self.streams += bool(stream)
        self.fallbacks += fallbacks > 0
        self.cache[cache] += 1
        if finish:
            self.finish[finish] += 1
        self.disconnects += bool(disconnected)

    def to_dict(self) -> dict[str, Any]:
        finished = sum(self.finish.values())
        scores = self.scores
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": _rate(self.errors, self.requests),
            "upstream_errors": self.upstream_errors,
            "error_types": dict(self.error_types),
            "latency_ms": _distribution(self.latency),
            "ttft_ms": _distribution(self.ttft),
            "streams": self.streams,
            "fallbacks": self.fallbacks,
            "fallback_rate": _rate(self.fallbacks, self.requests),
            "cache": dict(self.cache),
            "cache_hit_rate": _rate(self.cache["hit"], self.cache["hit"] + self.cache["miss"]),
            "finish_reasons": dict(self.finish),
            "truncation_rate": _rate(self.finish["length"], finished),
            "client_disconnects": self.disconnects,
            "feedback": {
                "count": len(scores),
                "mean_score": round(math.fsum(scores) / len(scores), 6) if scores else None,
                "min_score": min(scores) if scores else None,
                "max_score": max(scores) if scores else None,
            },
        }


# --- the service ----------------------------------------------------------------------------


class AnalyticsService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def usage(self, query: EventFilter) -> dict[str, Any]:
        keys = query.key_columns()
        statement = select(*keys, *_usage_sums()).where(*query.conditions())
        if keys:
            statement = statement.group_by(*keys)
        rows = _Rows(query, _Usage)
        async with self._store.read() as session:
            for row in await session.execute(statement):
                values = tuple(row)
                sums = values[len(keys) :]
                if not sums[0]:
                    continue  # an ungrouped query over no events returns one empty row
                rows.get(values[: len(keys)]).add(sums)  # type: ignore[attr-defined]
                rows.total.add(sums)  # type: ignore[attr-defined]
        return rows.result()

    async def compliance(self, query: EventFilter) -> dict[str, Any]:
        keys = query.key_columns()
        statement = select(*keys, EventRow.policy, EventRow.blocked_by).where(*query.conditions())
        rows = _Rows(query, _Compliance)
        async with self._store.read() as session:
            async for row in await session.stream(statement.execution_options(yield_per=5000)):
                *values, policy, blocked_by = tuple(row)
                rows.get(values).add(policy, blocked_by)  # type: ignore[attr-defined]
                rows.total.add(policy, blocked_by)  # type: ignore[attr-defined]
        return rows.result()

    async def quality(self, query: EventFilter) -> dict[str, Any]:
        keys = query.key_columns()
        statement = select(*keys, *_QUALITY_COLUMNS).where(*query.conditions())
        rows = _Rows(query, _Quality)
        count = len(keys)
        async with self._store.read() as session:
            async for row in await session.stream(statement.execution_options(yield_per=5000)):
                values = tuple(row)
                rows.get(values[:count]).add(values[count:])  # type: ignore[attr-defined]
                rows.total.add(values[count:])  # type: ignore[attr-defined]
            feedback = select(*keys, FeedbackRow.score).join(
                EventRow,
                and_(
                    EventRow.request_id == FeedbackRow.request_id,
                    or_(
                        EventRow.key_name == FeedbackRow.key_name,
                        and_(EventRow.key_name.is_(None), FeedbackRow.key_name.is_(None)),
                    ),
                ),
            )
            for row in await session.execute(feedback.where(*query.conditions())):
                *names, score = tuple(row)
                rows.get(names).scores.append(score)  # type: ignore[attr-defined]
                rows.total.scores.append(score)  # type: ignore[attr-defined]
        return rows.result()

    async def last_event_ms(self, query: EventFilter) -> int | None:
        statement = select(func.max(EventRow.started_ms)).where(*query.conditions())
        async with self._store.read() as session:
            value = await session.scalar(statement)
        return int(value) if value is not None else None

    async def events(
        self, query: EventFilter, *, limit: int, before: str | None
    ) -> tuple[list[EventRow], str | None]:
        """Return up to ``limit`` events, newest event id first, and the next page's cursor."""
        conditions = query.conditions()
        if before is not None:
            conditions.append(EventRow.event_id < before)
        statement = (
            select(EventRow).where(*conditions).order_by(EventRow.event_id.desc()).limit(limit + 1)
        )
        async with self._store.read() as session:
            found = list((await session.scalars(statement)).all())
        more = len(found) > limit
        page = found[:limit]
        return page, page[-1].event_id if more and page else None


def event_view(row: EventRow) -> dict[str, Any]:
    """Render a stored event as the API shows it."""
    return {
        "event_id": row.event_id,
        "request_id": row.request_id,
        "started_at": rfc3339(row.started_ms),
        "instance": row.instance,
        "site": row.site,
        "entry_instance": row.entry_instance,
        "entry_site": row.entry_site,
        "operation": row.operation,
        "dialect": row.dialect,
        "key": row.key_name,
        "team": row.team,
        "user": row.user_name,
        "provider": row.provider,
        "provider_kind": row.provider_kind,
        "deployment": row.deployment,
        "model": row.model_requested,
        "model_served": row.model_served,
        "tokens": {
            "input": row.input_tokens,
            "output": row.output_tokens,
            "cached_input": row.cached_input_tokens,
            "cache_write": row.cache_write_tokens,
            "reasoning": row.reasoning_tokens,
        },
        "usage_source": row.usage_source,
        "cost_usd": _usd(row.cost_pusd) if row.cost_pusd is not None else None,
        "price_missing": row.price_missing,
        "price_as_of": row.price_as_of,
        "price_version": row.price_version,
        "latency_ms": row.latency_ms,
        "ttft_ms": row.ttft_ms,
        "stream": row.stream,
        "cache": row.cache,
        "fallbacks": row.fallbacks,
        "finish_reason": row.finish_reason,
        "status": row.status,
        "error_type": row.error_type,
        "client_disconnected": row.client_disconnected,
        "policy": row.policy,
    }


def flatten(rows: Iterable[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Flatten nested objects to dotted column names; returns the columns in first-seen order."""
    columns: dict[str, None] = {}
    flat_rows = []
    for row in rows:
        flat: dict[str, Any] = {}
        _flatten_into(flat, "", row)
        columns.update(dict.fromkeys(flat))
        flat_rows.append(flat)
    return list(columns), flat_rows


def _flatten_into(target: dict[str, Any], prefix: str, value: Any) -> None:
    if isinstance(value, dict) and prefix != "policy.":
        for name, inner in value.items():
            _flatten_into(target, f"{prefix}{name}.", inner)
        return
    target[prefix.removesuffix(".")] = value
