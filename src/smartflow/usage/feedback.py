"""Feedback scores: an application's rating of one request, shipped like a usage event.

A ``FeedbackEvent`` goes into the same durable queue as the usage events, so it reaches
the control plane at least once and survives an outage. The control plane recognises a
score by ``"type": "feedback"`` and stores it once by ``event_id``. It counts the score
for the request with the same ``request_id`` and virtual key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import orjson

from smartflow.usage.events import SCHEMA_VERSION, new_event_id, utc_timestamp

__all__ = ["FeedbackEvent", "new_feedback"]


@dataclass(slots=True, kw_only=True)
class FeedbackEvent:
    type: Literal["feedback"] = "feedback"
    schema_version: int = SCHEMA_VERSION
    event_id: str
    """UUIDv7 of this score; the control plane deduplicates on it."""
    request_id: str
    """The gateway request id, from the ``x-request-id`` or ``request-id`` header."""
    created_at: str
    instance: str
    site: str
    key_name: str | None
    team: str | None
    score: float
    """From 0 (bad) to 1 (good)."""

    def to_json(self) -> bytes:
        return orjson.dumps(self)


def new_feedback(
    *,
    request_id: str,
    score: float,
    instance: str,
    site: str,
    key_name: str | None,
    team: str | None,
) -> FeedbackEvent:
    return FeedbackEvent(
        event_id=new_event_id(),
        request_id=request_id,
        created_at=utc_timestamp(time.time()),
        instance=instance,
        site=site,
        key_name=key_name,
        team=team,
        score=score,
    )
