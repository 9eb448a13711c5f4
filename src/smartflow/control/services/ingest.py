"""Ingest of usage events and feedback scores shipped by instances (``POST /v1/events``).

The body is the shipper's batch (see ``smartflow.usage.shipper``). Every event is checked
before anything is stored, so a batch is stored whole or not at all. Events are inserted
with "insert or ignore" on their ``event_id``, so a batch sent again stores nothing twice.

An event with ``"type": "feedback"`` is a feedback score (``smartflow.usage.feedback``);
any other event is a ``UsageEvent``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from smartflow.control.services.errors import Issue, ObjectInvalid
from smartflow.control.store.database import Database
from smartflow.control.store.tables import NAME_LENGTH, EventRow, FeedbackRow, InstanceRow
from smartflow.core.errors import InvalidRequest, PermissionDenied, RequestTooLarge
from smartflow.usage.events import SCHEMA_VERSION

__all__ = ["MAX_BATCH_EVENTS", "PICO_PER_USD", "IngestResult", "IngestService", "parse_batch"]

logger = logging.getLogger(__name__)

MAX_BATCH_EVENTS = 10_000
"""Maximum events accepted in one request; the shipper sends 500 by default."""
PICO_PER_USD = Decimal(10**12)
_MAX_BIGINT = 2**63 - 1
_MAX_ISSUES = 20
_TOKEN_FIELDS = ("input", "output", "cached_input", "cache_write", "reasoning")
_CACHE_RESULTS = frozenset({"none", "hit", "miss", "bypass"})
_USAGE_SOURCES = frozenset({"provider", "partial", "estimated", "none"})
_EVENT_TABLE: Table = EventRow.__table__  # type: ignore[assignment]
_FEEDBACK_TABLE: Table = FeedbackRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class IngestResult:
    received: int
    """Events and feedback scores in the batch."""
    stored: int
    """Of those, the ones not stored before."""

    @property
    def duplicates(self) -> int:
        return self.received - self.stored


class _Invalid(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.issue = Issue(path, message)


# --- field readers --------------------------------------------------------------------------


def _text(
    data: Mapping[str, Any], name: str, where: str, *, required: bool = False, limit: int = 128
) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise _Invalid(f"{where}{name}", "missing; send a string")
        return None
    if not isinstance(value, str) or (required and not value):
        raise _Invalid(f"{where}{name}", f"must be a non-empty string, not {value!r:.40}")
    if len(value) > limit:
        raise _Invalid(f"{where}{name}", f"longer than {limit} characters")
    return value


def _count(data: Mapping[str, Any], name: str, where: str) -> int:
    value = data.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_BIGINT:
        raise _Invalid(f"{where}{name}", f"must be a non-negative integer, not {value!r:.40}")
    return value


# Maximum duration an event may report, in milliseconds: one week. A larger value is
# a broken clock or a forged event, and it would distort every percentile and mean.
MAX_DURATION_MS = 7 * 24 * 3600 * 1000


def _number(
    data: Mapping[str, Any],
    name: str,
    where: str,
    *,
    maximum: float,
    unit: str = "",
    optional: bool = False,
) -> float | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= maximum:
        raise _Invalid(
            f"{where}{name}", f"must be a number{unit} from 0 to {maximum:g}, not {value!r:.40}"
        )
    return float(value)


def _flag(data: Mapping[str, Any], name: str, where: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise _Invalid(f"{where}{name}", f"must be true or false, not {value!r:.40}")
    return value


def _choice(data: Mapping[str, Any], name: str, where: str, allowed: frozenset[str]) -> str:
    value = data.get(name, "none")
    if value not in allowed:
        raise _Invalid(f"{where}{name}", f"must be one of {', '.join(sorted(allowed))}")
    return str(value)


def _epoch_ms(data: Mapping[str, Any], name: str, where: str) -> int:
    value = _text(data, name, where, required=True, limit=40)
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise _Invalid(
            f"{where}{name}", "must be an RFC 3339 time such as 2026-01-02T03:04:05Z"
        ) from None
    if moment.tzinfo is None:
        raise _Invalid(f"{where}{name}", "must have a UTC offset, such as Z")
    return int(moment.timestamp() * 1000)


def _picodollars(data: Mapping[str, Any], where: str) -> int | None:
    value = data.get("cost_usd")
    if value is None:
        return None
    try:
        amount = Decimal(value) if isinstance(value, str) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or amount < 0:
        raise _Invalid(f"{where}cost_usd", "must be a non-negative decimal string such as '0.0012'")
    pico = int((amount * PICO_PER_USD).to_integral_value(ROUND_HALF_EVEN))
    if pico > _MAX_BIGINT:
        raise _Invalid(f"{where}cost_usd", "is too large")
    return pico


def _object(data: Mapping[str, Any], name: str, where: str) -> dict[str, Any] | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid(f"{where}{name}", "must be a JSON object")
    return value


def _list(data: Mapping[str, Any], name: str, where: str) -> list[Any]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise _Invalid(f"{where}{name}", "must be a JSON array")
    return value


def _fallbacks(attempts: Sequence[Any], where: str) -> int:
    """Count moves to another deployment, as ``UsageEvent.fallbacks`` does."""
    deployments = []
    for index, attempt in enumerate(attempts):
        if not isinstance(attempt, dict) or not isinstance(attempt.get("deployment"), str):
            raise _Invalid(f"{where}attempts[{index}].deployment", "must be a string")
        deployments.append(attempt["deployment"])
    return sum(1 for a, b in itertools.pairwise(deployments) if a != b)


def _policy(data: Mapping[str, Any], where: str) -> tuple[dict[str, Any] | None, str | None]:
    policy = _object(data, "policy", where)
    if policy is None:
        return None, None
    inner = f"{where}policy."
    for name in ("request_entities", "response_entities"):
        counts = _object(policy, name, inner) or {}
        for entity in counts:
            _count(counts, entity, f"{inner}{name}.")
    actions = _object(policy, "actions", inner) or {}
    for entity, action in actions.items():
        if not isinstance(action, str):
            raise _Invalid(f"{inner}actions.{entity}", "must be a string")
    for name in ("policies", "audit_policies", "rules", "labels"):
        if not all(isinstance(item, str) for item in _list(policy, name, inner)):
            raise _Invalid(f"{inner}{name}", "must be an array of strings")
    _text(policy, "residency", inner, limit=1024)
    return policy, _text(policy, "blocked_by", inner, limit=2 * NAME_LENGTH)


# --- events ---------------------------------------------------------------------------------


def _usage_row(data: Mapping[str, Any], where: str, site: str, now_ms: int) -> dict[str, Any]:
    tokens = _object(data, "tokens", where) or {}
    attempts = _list(data, "attempts", where)
    policy, blocked_by = _policy(data, where)
    status = data.get("status", 0)
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 999:
        raise _Invalid(f"{where}status", "must be an HTTP status code from 0 to 999")
    normalization = _list(data, "normalization", where)
    return {
        "event_id": _text(data, "event_id", where, required=True, limit=36),
        "request_id": _text(data, "request_id", where, required=True),
        "started_ms": _epoch_ms(data, "started_at", where),
        "received_ms": now_ms,
        "instance": _text(data, "instance", where, required=True),
        "site": site,
        "entry_instance": _text(data, "entry_instance", where),
        "entry_site": _text(data, "entry_site", where),
        "operation": _text(data, "operation", where, limit=32) or "chat",
        "dialect": _text(data, "dialect", where, required=True, limit=32),
        "key_name": _text(data, "key_name", where),
        "team": _text(data, "team", where),
        "user_name": _text(data, "user", where),
        "provider": _text(data, "provider", where),
        "provider_kind": _text(data, "provider_kind", where, limit=64),
        "deployment": _text(data, "deployment", where, limit=2 * NAME_LENGTH),
        "model_requested": _text(data, "model_requested", where),
        "model_served": _text(data, "model_served", where),
        **{f"{name}_tokens": _count(tokens, name, f"{where}tokens.") for name in _TOKEN_FIELDS},
        "usage_source": _choice(data, "usage_source", where, _USAGE_SOURCES),
        "cost_pusd": _picodollars(data, where),
        "price_missing": _flag(data, "price_missing", where),
        "price_as_of": _text(data, "price_as_of", where, limit=32),
        "price_version": _text(data, "price_version", where, limit=64),
        "latency_ms": _number(
            data, "latency_ms", where, maximum=MAX_DURATION_MS, unit=" of milliseconds"
        ),
        "ttft_ms": _number(
            data, "ttft_ms", where, maximum=MAX_DURATION_MS, unit=" of milliseconds", optional=True
        ),
        "stream": _flag(data, "stream", where),
        "cache": _choice(data, "cache", where, _CACHE_RESULTS),
        "fallbacks": _fallbacks(attempts, where),
        "finish_reason": _text(data, "finish_reason", where, limit=32),
        "status": status,
        "error_type": _text(data, "error_type", where),
        "client_disconnected": _flag(data, "client_disconnected", where),
        "blocked_by": blocked_by,
        "policy": policy,
        "detail": {"attempts": attempts, "normalization": normalization}
        if attempts or normalization
        else None,
    }


def _feedback_row(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    score = _number(data, "score", where, maximum=1)
    assert score is not None  # not optional
    return {
        "feedback_id": _text(data, "event_id", where, required=True, limit=36),
        "request_id": _text(data, "request_id", where, required=True),
        "created_ms": _epoch_ms(data, "created_at", where),
        "instance": _text(data, "instance", where, required=True),
        "key_name": _text(data, "key_name", where),
        "score": score,
    }


@dataclass(slots=True)
class ParsedBatch:
    events: list[dict[str, Any]]
    feedback: list[dict[str, Any]]

    @property
    def size(self) -> int:
        return len(self.events) + len(self.feedback)


def parse_batch(data: Any, instance: InstanceRow, now_ms: int) -> ParsedBatch:
    """Check a batch and convert its events to rows.

    Raises:
        InvalidRequest: the body is not a batch object.
        RequestTooLarge: the batch has more than ``MAX_BATCH_EVENTS`` events.
        PermissionDenied: the batch or an event names another instance.
        ObjectInvalid: an event is invalid; ``issues`` names each field.
    """
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise InvalidRequest("the body must be a JSON object with an 'events' array")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise ObjectInvalid.one(
            "schema_version", f"must be an integer up to {SCHEMA_VERSION}, not {version!r:.40}"
        )
    events: list[Any] = data["events"]
    if len(events) > MAX_BATCH_EVENTS:
        raise RequestTooLarge(
            f"the batch has {len(events)} events; send at most {MAX_BATCH_EVENTS} per request"
        )
    _check_instance(data.get("instance"), "instance", instance)
    parsed = ParsedBatch([], [])
    issues: list[Issue] = []
    for index, event in enumerate(events):
        where = f"events[{index}]."
        try:
            if not isinstance(event, dict):
                raise _Invalid(f"events[{index}]", "must be a JSON object")
            _check_event_version(event, where)
            if event.get("type") == "feedback":
                row = _feedback_row(event, where)
                parsed.feedback.append(row)
            else:
                row = _usage_row(event, where, instance.site, now_ms)
                parsed.events.append(row)
        except _Invalid as invalid:
            issues.append(invalid.issue)
            if len(issues) >= _MAX_ISSUES:
                break
            continue
        _check_instance(row["instance"], f"{where}instance", instance)
    if issues:
        raise ObjectInvalid(issues)
    return parsed


def _check_event_version(event: Mapping[str, Any], where: str) -> None:
    version = event.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise _Invalid(f"{where}schema_version", f"must be an integer up to {SCHEMA_VERSION}")


def _check_instance(name: Any, path: str, instance: InstanceRow) -> None:
    if name != instance.name:
        # 403 keeps the events queued at the sender until its name or credential is fixed.
        raise PermissionDenied(
            f"{path} is {name!r:.80}, but the credential belongs to instance "
            f"{instance.name!r}; configure the instance with its enrolled name"
        )


# --- storing --------------------------------------------------------------------------------


def _insert_ignoring_duplicates(dialect: str, table: Table, key: str) -> Insert:
    if dialect == "postgresql":
        statement: Insert = postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    else:
        statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
    return statement.returning(table.c[key])


class IngestService:
    def __init__(self, database: Database) -> None:
        self._database = database
        dialect = database.dialect
        self._insert_events = _insert_ignoring_duplicates(dialect, _EVENT_TABLE, "event_id")
        self._insert_feedback = _insert_ignoring_duplicates(dialect, _FEEDBACK_TABLE, "feedback_id")

    async def ingest(self, data: Any, instance: InstanceRow) -> IngestResult:
        """Check and store one batch; see ``parse_batch`` for the errors it raises."""
        parsed = parse_batch(data, instance, int(time.time() * 1000))
        stored = 0
        async with self._database.engine.begin() as connection:
            for statement, rows in (
                (self._insert_events, _unique(parsed.events, "event_id")),
                (self._insert_feedback, _unique(parsed.feedback, "feedback_id")),
            ):
                if rows:
                    result = await connection.execute(statement, rows)
                    stored += len(result.all())
        logger.debug("instance %s: stored %d of %d events", instance.name, stored, parsed.size)
        return IngestResult(received=parsed.size, stored=stored)


def _unique(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Drop repeats of an id within one batch; the database ignores repeats across batches."""
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        seen.setdefault(row[key], row)
    return list(seen.values()) if len(seen) != len(rows) else rows
