"""Usage events: one record per gateway request, with tokens, cost, timing and outcome.

A ``UsageEvent`` is what an instance ships to the control plane and what its metrics are
computed from. It contains identifiers, counts and names only: never prompt or response
text, and for policy findings only entity types and counts.

Cost is ``cost_usd``, a decimal string of US dollars (for example ``"0.0001275"``),
computed exactly with ``decimal.Decimal`` from the price catalogue and never through a
float. It is ``None`` when no price is known (then ``price_missing`` is true) or when no
upstream call was made.
"""

from __future__ import annotations

import datetime
import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import orjson

__all__ = [
    "SCHEMA_VERSION",
    "AttemptRecord",
    "CacheResult",
    "PolicySummary",
    "TokenCounts",
    "UsageEvent",
    "UsageSource",
    "new_event_id",
    "started_event",
]

SCHEMA_VERSION = 1
"""Version of the event's JSON form. Readers reject events of a newer version."""

UsageSource = Literal["provider", "partial", "estimated", "none"]
"""Source of the token counts.

``provider``: the provider's final usage report. ``partial``: the provider's counts up to
the point where the stream was cut, with output tokens raised to an estimate of the text
streamed so far. ``estimated``: no provider counts, so input tokens are the gateway's
estimate and output tokens are four characters each of the streamed text. ``none``: no
upstream call produced tokens (the counts are zero).
"""

CacheResult = Literal["none", "hit", "miss", "bypass"]
"""Response cache outcome. ``none`` means no cache is in the request path."""


# --- event ids --------------------------------------------------------------------------

_id_lock = threading.Lock()
_last_ms = 0
_sequence = 0
_ms_text = ""
"""The first 18 characters of the ids of millisecond ``_last_ms``, version digit included."""


def _new_node() -> str:
    # rand_b: the variant bits and 62 random bits, drawn once per process (see new_event_id).
    text = f"{0b10 << 62 | random.getrandbits(62):016x}"
    return f"-{text[:4]}-{text[4:]}"


_node = _new_node()
"""The last 18 characters of every id of this process, leading hyphen included."""
os.register_at_fork(after_in_child=lambda: globals().update(_node=_new_node()))


def _millisecond_text(epoch_ms: int) -> str:
    return f"{(epoch_ms >> 16) & 0xFFFF_FFFF:08x}-{epoch_ms & 0xFFFF:04x}-7"


def new_event_id() -> str:
    """Return a new UUIDv7 (RFC 9562) whose text sorts in creation order within a process.

    The 12-bit ``rand_a`` field is a counter seeded at random each millisecond, so ids
    made in the same millisecond still increase. When the counter overflows, the
    timestamp is advanced by one millisecond. The 62 bits of ``rand_b`` are random per
    process, as a node id (RFC 9562, section 6.4), and drawn again in a forked child: the
    timestamp and counter keep the ids of one process apart, and ``rand_b`` those of two.
    The ids must be unique, not unguessable, and drawing fresh random bits, or reading the
    system's source through ``secrets``, for each id costs more than the rest of an event.
    """
    global _last_ms, _sequence, _ms_text
    now_ms = time.time_ns() // 1_000_000
    # Calling acquire and release costs half as much as a with block.
    _id_lock.acquire()
    try:
        if now_ms > _last_ms:
            _last_ms = now_ms
            # Start in the lower half so a burst in one millisecond rarely overflows.
            _sequence = random.getrandbits(11)
            _ms_text = _millisecond_text(now_ms)
        else:
            _sequence += 1
            if _sequence > 0xFFF:
                _last_ms += 1
                _sequence = random.getrandbits(11)
                _ms_text = _millisecond_text(_last_ms)
        return f"{_ms_text}{_sequence:03x}{_node}"
    finally:
        _id_lock.release()


_second_text: tuple[int, str] = (-1, "")
_MILLISECOND_TEXTS = tuple(f"{millisecond:03d}Z" for millisecond in range(1000))
"""``000Z`` to ``999Z``, because indexing this tuple is cheaper than formatting the number."""


def utc_timestamp(epoch_seconds: float) -> str:
    """Format a Unix time as RFC 3339 UTC with milliseconds, e.g. ``2026-01-02T03:04:05.678Z``."""
    global _second_text
    if epoch_seconds < 0:
        moment = datetime.datetime.fromtimestamp(epoch_seconds, tz=datetime.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    # Rounded to microseconds first, as datetime.fromtimestamp does. For a time of at least
    # 0, subtracting the whole seconds gives the exact fraction that math.modf returns.
    second = int(epoch_seconds)
    microsecond = round((epoch_seconds - second) * 1_000_000)
    if microsecond >= 1_000_000:
        second, microsecond = second + 1, microsecond - 1_000_000
    cached_second, prefix = _second_text
    if second != cached_second:
        moment = datetime.datetime.fromtimestamp(second, tz=datetime.UTC)
        prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.")
        _second_text = (second, prefix)
    return prefix + _MILLISECOND_TEXTS[microsecond // 1000]


# --- parts of an event ------------------------------------------------------------------


@dataclass(slots=True)
class TokenCounts:
    """Token counts as in ``core.types.Usage``.

    ``input`` includes ``cached_input`` and ``cache_write``, and ``output`` includes
    ``reasoning``, so the detail counts must never be added to the totals.
    """

    input: int = 0
    output: int = 0
    cached_input: int = 0
    cache_write: int = 0
    reasoning: int = 0


@dataclass(slots=True)
class AttemptRecord:
    """One try at one deployment: its label, and the error code and upstream status if it
    failed (both ``None`` for the try that succeeded)."""

    deployment: str
    error: str | None = None
    status: int | None = None


@dataclass(slots=True)
class PolicySummary:
    """The policies' decision as names and counts. It never contains a matched value."""

    policies: list[str] = field(default_factory=list)
    audit_policies: list[str] = field(default_factory=list)
    request_entities: dict[str, int] = field(default_factory=dict)
    """Findings per entity type in the request, such as ``{"EMAIL": 2}``."""
    response_entities: dict[str, int] = field(default_factory=dict)
    actions: dict[str, str] = field(default_factory=dict)
    """Action taken per entity type, such as ``{"EMAIL": "mask"}``."""
    rules: list[str] = field(default_factory=list)
    """Content rules that fired, as ``<document>/<rule>``."""
    labels: list[str] = field(default_factory=list)
    blocked_by: str | None = None
    errors: int = 0
    residency: str | None = None
    """Compliance rules that narrowed the deployments, as ``label:policy`` names."""


# --- the event --------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class UsageEvent:
    """The record of one gateway request; see the module docstring for units."""

    schema_version: int = SCHEMA_VERSION
    event_id: str
    """UUIDv7, unique per event; the control plane deduplicates on it."""
    request_id: str
    started_at: str
    """RFC 3339 UTC time at which the gateway received the request."""
    instance: str
    site: str
    entry_instance: str | None = None
    """The instance that received the caller's request and forwarded it here by linked
    routing, else ``None``. ``request_id`` is then that instance's request id."""
    entry_site: str | None = None
    """The site of ``entry_instance``."""
    operation: str = "chat"
    """OpenTelemetry ``gen_ai.operation.name``: ``chat`` or ``embeddings``."""
    dialect: str
    """The ingress dialect the caller spoke: ``openai`` or ``anthropic``."""
    key_name: str | None = None
    team: str | None = None
    user: str | None = None
    identity: str | None = None
    """Salted hash of the provider key of a caller served by the interception listener."""
    provider: str | None = None
    """The configured provider name of the deployment that served the request."""
    provider_kind: str | None = None
    """The provider type, such as ``openai``, ``azure_openai`` or ``bedrock``."""
    deployment: str | None = None
    """``<provider>/<model>`` of the deployment that served the request."""
    model_requested: str | None = None
    model_served: str | None = None
    """The model the provider reports in its response, else the deployment's model."""
    tokens: TokenCounts = field(default_factory=TokenCounts)
    usage_source: UsageSource = "none"
    cost_usd: str | None = None
    price_missing: bool = False
    """True when tokens were used but the catalogue has no price for the model."""
    price_as_of: str | None = None
    """Date of the catalogue entry that priced the event."""
    price_version: str | None = None
    """Version of the catalogue that priced the event (``PriceCatalog.version``)."""
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    """Milliseconds from receipt of the request to the first streamed bytes; streams only."""
    stream: bool = False
    cache: CacheResult = "none"
    attempts: list[AttemptRecord] = field(default_factory=list)
    normalization: list[dict[str, Any]] = field(default_factory=list)
    """The parameter changes of the attempt that served the request, from
    ``normalize.changes_to_dicts``."""
    policy: PolicySummary | None = None
    finish_reason: str | None = None
    status: int = 0
    """HTTP status sent to the caller; 499 when the caller disconnected first."""
    error_type: str | None = None
    """The gateway error code (such as ``upstream_timeout``), or ``None`` on success."""
    client_disconnected: bool = False

    @property
    def fallbacks(self) -> int:
        """Return how many times the request moved on to another deployment."""
        moves = 0
        for previous, current in zip(self.attempts, self.attempts[1:], strict=False):
            if current.deployment != previous.deployment:
                moves += 1
        return moves

    def to_json(self) -> bytes:
        # orjson writes a dict in less time than the dataclass, and filling a copy of a dict
        # that has every key already (in field order) takes two thirds of the time of a dict
        # display. Tests check that the output equals orjson's output for the dataclass.
        tokens = self.tokens
        data = _JSON_TEMPLATE.copy()
        data["schema_version"] = self.schema_version
        data["event_id"] = self.event_id
        data["request_id"] = self.request_id
        data["started_at"] = self.started_at
        data["instance"] = self.instance
        data["site"] = self.site
        data["entry_instance"] = self.entry_instance
        data["entry_site"] = self.entry_site
        data["operation"] = self.operation
        data["dialect"] = self.dialect
        data["key_name"] = self.key_name
        data["team"] = self.team
        data["user"] = self.user
        data["identity"] = self.identity
        data["provider"] = self.provider
        data["provider_kind"] = self.provider_kind
        data["deployment"] = self.deployment
        data["model_requested"] = self.model_requested
        data["model_served"] = self.model_served
        data["tokens"] = {
            "input": tokens.input,
            "output": tokens.output,
            "cached_input": tokens.cached_input,
            "cache_write": tokens.cache_write,
            "reasoning": tokens.reasoning,
        }
        data["usage_source"] = self.usage_source
        data["cost_usd"] = self.cost_usd
        data["price_missing"] = self.price_missing
        data["price_as_of"] = self.price_as_of
        data["price_version"] = self.price_version
        data["latency_ms"] = self.latency_ms
        data["ttft_ms"] = self.ttft_ms
        data["stream"] = self.stream
        data["cache"] = self.cache
        # A loop, because a list comprehension is a function call of its own before 3.12.
        attempts = []
        for attempt in self.attempts:
            attempts.append(
                {"deployment": attempt.deployment, "error": attempt.error, "status": attempt.status}
            )
        data["attempts"] = attempts
        data["normalization"] = self.normalization
        data["policy"] = self.policy
        data["finish_reason"] = self.finish_reason
        data["status"] = self.status
        data["error_type"] = self.error_type
        data["client_disconnected"] = self.client_disconnected
        return orjson.dumps(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageEvent:
        """Build an event from its JSON form.

        Raises:
            ValueError: the schema version is newer than this code, or a field is missing
                or of the wrong type.
        """
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ValueError(
                f"Usage event schema_version {version!r} is not supported; this code reads "
                f"versions up to {SCHEMA_VERSION}."
            )
        try:
            values = dict(data)
            values["tokens"] = TokenCounts(**values.get("tokens", {}))
            values["attempts"] = [AttemptRecord(**a) for a in values.get("attempts", [])]
            policy = values.get("policy")
            values["policy"] = PolicySummary(**policy) if policy is not None else None
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"Invalid usage event: {exc}.") from exc

    @classmethod
    def from_json(cls, raw: bytes | str) -> UsageEvent:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("A usage event must be a JSON object.")
        return cls.from_dict(data)


_JSON_TEMPLATE: dict[str, Any] = dict.fromkeys(f.name for f in fields(UsageEvent))
"""Every key of an event's JSON form in field order, the order of ``to_json``'s output."""


def started_event(
    event_id: str,
    request_id: str,
    started_at: str,
    instance: str,
    site: str,
    operation: str,
    dialect: str,
) -> UsageEvent:
    """Return the event of a request that has just arrived: every other field at its default.

    The result equals ``UsageEvent(event_id=event_id, ...)`` with the same values, which a
    test checks field by field. The dataclass's ``__init__`` takes about 1 µs to bind its 36
    keyword-only parameters, so the gateway, which starts one event per request, sets the
    slots here in a third of that time.
    """
    event = object.__new__(UsageEvent)
    event.schema_version = SCHEMA_VERSION
    event.event_id = event_id
    event.request_id = request_id
    event.started_at = started_at
    event.instance = instance
    event.site = site
    event.entry_instance = None
    event.entry_site = None
    event.operation = operation
    event.dialect = dialect
    event.key_name = None
    event.team = None
    event.user = None
    event.identity = None
    event.provider = None
    event.provider_kind = None
    event.deployment = None
    event.model_requested = None
    event.model_served = None
    event.tokens = TokenCounts()
    event.usage_source = "none"
    event.cost_usd = None
    event.price_missing = False
    event.price_as_of = None
    event.price_version = None
    event.latency_ms = 0.0
    event.ttft_ms = None
    event.stream = False
    event.cache = "none"
    event.attempts = []
    event.normalization = []
    event.policy = None
    event.finish_reason = None
    event.status = 0
    event.error_type = None
    event.client_disconnected = False
    return event
