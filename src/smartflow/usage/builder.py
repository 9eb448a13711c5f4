"""Collect what one request used while it runs, then finish it into a ``UsageEvent``.

The gateway creates a ``UsageBuilder`` when a request arrives and feeds it as the request
goes: caller, request, deployment, response or stream events, errors. It calls ``finish``
in a ``finally`` block, so an event is produced on every path, including errors and a
caller that disconnects mid-stream. A builder only stores values, so each method is
cheap and none of them raises on odd input.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from smartflow.auth.keys import Caller
from smartflow.core.errors import SmartflowError
from smartflow.core.stream import (
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    UsageUpdate,
)
from smartflow.core.types import ChatRequest, ChatResponse, FinishReason, Usage
from smartflow.normalize.report import Change, changes_to_dicts
from smartflow.policy.decision import Decision
from smartflow.providers.base import Deployment
from smartflow.usage.events import (
    AttemptRecord,
    CacheResult,
    PolicySummary,
    UsageEvent,
    UsageSource,
    new_event_id,
    started_event,
    utc_timestamp,
)
from smartflow.usage.prices import PriceCatalog

__all__ = ["CHARS_PER_TOKEN", "AttemptLike", "UsageBuilder", "policy_summary"]

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
"""Characters per token assumed when a stream is cut before the provider reports usage.

NOTE: a rough average for English text. Code, other scripts and tool arguments differ, so
events built on it have ``usage_source`` ``partial`` or ``estimated``.
"""

_MAX_NAME_CHARS = 200
CLIENT_CLOSED_STATUS = 499


def _copy_usage(usage: Usage) -> Usage:
    # Five times faster than dataclasses.replace; a test checks that it copies every field.
    return Usage(
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    )


class AttemptLike(Protocol):
    """One try at one deployment, as ``gateway.upstream.Attempt`` records it."""

    @property
    def deployment(self) -> str: ...

    @property
    def error(self) -> str | None: ...

    @property
    def status(self) -> int | None: ...


def policy_summary(decision: Decision) -> PolicySummary:
    """Copy the names and counts of a policy decision, which contains no matched values."""
    return PolicySummary(
        policies=list(decision.policies),
        audit_policies=list(decision.audit_policies),
        request_entities=dict(decision.request_entities),
        response_entities=dict(decision.response_entities),
        actions=dict(decision.actions),
        rules=[f"{hit.policy}/{hit.rule}" for hit in decision.rules],
        labels=sorted(decision.labels),
        blocked_by=decision.blocked_by,
        errors=decision.errors,
        residency=decision.residency,
    )


class UsageBuilder:
    """The usage of one request, gathered step by step; see the module docstring."""

    __slots__ = (
        "_clock",
        "_deployment",
        "_estimate",
        "_estimated_input",
        "_event",
        "_finished",
        "_on_finish",
        "_request",
        "_started",
        "_streamed_chars",
        "_upstream_started",
        "_usage",
        "_usage_final",
    )

    def __init__(
        self,
        request_id: str,
        dialect: str,
        instance: str,
        site: str,
        operation: str = "chat",
        *,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._started = clock()
        self._event = started_event(
            new_event_id(),
            request_id,
            utc_timestamp(wall_clock()),
            instance,
            site,
            operation,
            dialect,
        )
        self._deployment: Deployment | None = None
        self._usage: Usage | None = None
        self._usage_final = False
        self._streamed_chars = 0
        self._estimated_input: int | None = None
        self._estimate: Callable[[ChatRequest], int] | None = None
        self._request: ChatRequest | None = None
        self._upstream_started = False
        self._finished: UsageEvent | None = None
        # Created by the first on_finish call, because most requests have no callback.
        self._on_finish: list[Callable[[], None]] | None = None

    @property
    def event_id(self) -> str:
        return self._event.event_id

    @property
    def finished(self) -> bool:
        return self._finished is not None

    @property
    def request(self) -> ChatRequest | None:
        """The request given to ``set_request`` together with an ``estimate`` function."""
        return self._request

    @property
    def has_usage(self) -> bool:
        """Whether any usage report was recorded, final or not."""
        return self._usage is not None

    def on_finish(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` at the start of ``finish``, so a reader that defers its work,
        such as a pass-through stream tap, records its data only once the request is over."""
        if self._on_finish is None:
            self._on_finish = [callback]
        else:
            self._on_finish.append(callback)

    # --- what is known before the upstream call -----------------------------------------

    def set_caller(self, caller: Caller) -> None:
        self._event.key_name = caller.key_name
        self._event.team = caller.team
        self._event.user = caller.user
        self._event.identity = caller.identity

    def set_request(
        self,
        request: ChatRequest,
        *,
        estimated_input_tokens: int | None = None,
        estimate: Callable[[ChatRequest], int] | None = None,
    ) -> None:
        """Record the requested model and stream flag.

        The input tokens are estimated only when the provider never reports usage: they
        are ``estimated_input_tokens``, else ``estimate(request)``, called at ``finish``.
        """
        self._event.model_requested = request.model[:_MAX_NAME_CHARS]
        self._event.stream = request.stream
        self._estimated_input = estimated_input_tokens
        if estimate is not None:
            self._estimate = estimate
            self._request = request

    def set_model_requested(self, model: str, *, stream: bool = False) -> None:
        """Record the requested model for endpoints without a ``ChatRequest``."""
        self._event.model_requested = model[:_MAX_NAME_CHARS]
        self._event.stream = stream

    def set_cache(self, result: CacheResult) -> None:
        self._event.cache = result

    # --- the upstream side --------------------------------------------------------------

    def set_deployment(self, deployment: Deployment) -> None:
        """Record the deployment that served the request."""
        self._deployment = deployment
        self._upstream_started = True
        self._event.provider = deployment.provider.name
        self._event.provider_kind = deployment.provider.kind
        self._event.deployment = deployment.label

    def set_attempts(self, attempts: Iterable[AttemptLike]) -> None:
        # A loop, because a list comprehension is a function call of its own before 3.12.
        records = []
        for attempt in attempts:
            records.append(AttemptRecord(attempt.deployment, attempt.error, attempt.status))
        self._event.attempts = records
        if records:
            self._upstream_started = True

    def set_normalization(self, changes: Sequence[Change]) -> None:
        # Most requests change nothing, and the event's list is then already empty.
        if changes or self._event.normalization:
            self._event.normalization = changes_to_dicts(list(changes))

    def set_policy(self, decision: Decision) -> None:
        self._event.policy = policy_summary(decision)

    def set_forwarded(
        self,
        *,
        request_id: str,
        entry_instance: str,
        entry_site: str | None,
        policy: PolicySummary | None,
        attempts: Sequence[AttemptRecord],
    ) -> None:
        """Record that another instance forwarded this request here by linked routing.

        The event takes that instance's request id and policy summary, and its
        ``attempts`` go before the ones made here, so call this after ``set_attempts``.
        """
        self._event.request_id = request_id
        self._event.entry_instance = entry_instance
        self._event.entry_site = entry_site
        if policy is not None:
            self._event.policy = policy
        if attempts:
            self._event.attempts[:0] = attempts

    def mark_first_byte(self) -> None:
        """Record the time to first token; only the first call counts."""
        if self._event.ttft_ms is None:
            self._event.ttft_ms = self._elapsed_ms()

    def record_response(self, response: ChatResponse) -> None:
        """Record a complete response: its usage is final."""
        self._record_model(response.model)
        self._event.finish_reason = response.finish_reason
        self._usage = _copy_usage(response.usage)
        self._usage_final = True

    def record_final(self, model: str, finish_reason: FinishReason, usage: Usage) -> None:
        """Record what a complete response reports, as ``record_response`` does, when a
        reader took these values from the provider's bytes without a ``ChatResponse``."""
        if model:
            self._event.model_served = model[:_MAX_NAME_CHARS]
        self._event.finish_reason = finish_reason
        self._usage = usage
        self._usage_final = True

    def record_usage(self, usage: Usage, *, final: bool) -> None:
        """Record a usage report; a later report replaces an earlier one."""
        self._usage = _copy_usage(usage)
        self._usage_final = self._usage_final or final

    def observe(self, event: StreamEvent) -> None:
        """Record one canonical stream event on its way to the caller."""
        if isinstance(event, TextDelta | ReasoningDelta):
            self._streamed_chars += len(event.text)
        elif isinstance(event, ToolCallDelta):
            self._streamed_chars += len(event.arguments)
        elif isinstance(event, UsageUpdate):
            self.record_usage(event.usage, final=False)
        elif isinstance(event, StreamStart):
            self._record_model(event.model)
            if event.usage is not None:
                self.record_usage(event.usage, final=False)
        elif isinstance(event, StreamEnd):
            self._event.finish_reason = event.finish_reason
            if event.usage is not None:
                self.record_usage(event.usage, final=True)

    # --- outcome ------------------------------------------------------------------------

    def record_error(self, error: BaseException | str) -> None:
        """Record why the request failed; the first error recorded is kept."""
        if self._event.error_type is not None:
            return
        if isinstance(error, SmartflowError):
            self._event.error_type = error.code
        elif isinstance(error, str):
            self._event.error_type = error[:_MAX_NAME_CHARS]
        else:
            self._event.error_type = type(error).__name__

    def mark_client_disconnected(self) -> None:
        self._event.client_disconnected = True
        self.record_error("client_disconnected")

    def finish(self, status: int, prices: PriceCatalog | None = None) -> UsageEvent:
        """Complete the event with its status, latency, token counts and cost.

        Only the first call builds the event; later calls return the same one, so a
        handler may call it from more than one ``finally`` block.
        """
        if self._finished is not None:
            return self._finished
        event = self._event
        event.status = CLIENT_CLOSED_STATUS if event.client_disconnected else status
        event.latency_ms = self._elapsed_ms()
        if self._on_finish is not None:
            self._call_on_finish(event.request_id)
        usage = self._usage
        if usage is not None and self._usage_final:
            # The usual case, checked here to avoid calling _resolve_usage.
            event.usage_source = "provider"
        else:
            usage, event.usage_source = self._resolve_usage()
        # The event's TokenCounts is its own, made by started_event, so it is filled in place.
        tokens = event.tokens
        tokens.input = usage.input_tokens
        tokens.output = usage.output_tokens
        tokens.cached_input = usage.cached_input_tokens
        tokens.cache_write = usage.cache_write_tokens
        tokens.reasoning = usage.reasoning_tokens
        if event.model_served is None and self._deployment is not None:
            event.model_served = self._deployment.model
        if prices is not None:
            self._price(event, usage, prices)
        self._finished = event
        return event

    # --- helpers ------------------------------------------------------------------------

    def _elapsed_ms(self) -> float:
        # Whole microseconds, in milliseconds: round() to an integer costs a fraction of
        # round(value, 3), which goes through the decimal digits.
        return round((self._clock() - self._started) * 1_000_000) / 1000

    def _record_model(self, model: str) -> None:
        if model:
            self._event.model_served = model[:_MAX_NAME_CHARS]

    def _call_on_finish(self, request_id: str) -> None:
        # Cleared first, because a callback's owner (a PassthroughTap) refers to this builder,
        # and the reference cycle would keep both alive until the garbage collector runs.
        callbacks, self._on_finish = self._on_finish, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                logger.exception("usage: reading the response of request %s failed", request_id)

    def _resolve_usage(self) -> tuple[Usage, UsageSource]:
        """Return the counts to bill and where they come from (see ``UsageSource``)."""
        if self._usage is not None and self._usage_final:
            return self._usage, "provider"
        streamed = math.ceil(self._streamed_chars / CHARS_PER_TOKEN)
        if self._usage is not None:
            partial = _copy_usage(self._usage)
            partial.output_tokens = max(partial.output_tokens, streamed)
            return partial, "partial"
        if streamed or (self._upstream_started and self._event.error_type is None):
            estimated_input = self._estimated_input
            if estimated_input is None and self._estimate is not None:
                assert self._request is not None
                estimated_input = self._estimate(self._request)
            estimate_usage = Usage(input_tokens=estimated_input or 0, output_tokens=streamed)
            return estimate_usage, "estimated"
        return Usage(), "none"

    def _price(self, event: UsageEvent, usage: Usage, prices: PriceCatalog) -> None:
        deployment = self._deployment
        if deployment is None or event.usage_source == "none":
            return
        models = (event.model_served, deployment.base_model, deployment.model)
        priced = prices.cost_text(deployment.provider.kind, models, usage)
        if priced is None:
            event.price_missing = True
            return
        event.cost_usd, price = priced
        event.price_as_of = price.as_of
        event.price_version = prices.version
