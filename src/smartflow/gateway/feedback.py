"""``POST /v1/feedback``: an application scores one of its requests from 0 to 1.

The caller authenticates with the virtual key that made the request. The score is queued
with the usage events and shipped to the control plane, which counts it only for a
request of the same key. The route exists only while usage recording is enabled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from smartflow.auth.keys import Caller
from smartflow.core.errors import InternalError, InvalidRequest, RequestTooLarge, SmartflowError
from smartflow.gateway.ingress import ANTHROPIC, OPENAI
from smartflow.usage.feedback import new_feedback
from smartflow.usage.recorder import UsageRecorder

__all__ = ["FEEDBACK_PATH", "add_feedback_route"]

logger = logging.getLogger(__name__)

FEEDBACK_PATH = "/v1/feedback"
_MAX_BODY_BYTES = 4096
_MAX_REQUEST_ID = 128

Authenticate = Callable[[Mapping[str, str]], Caller]


class QueueUnavailable(InternalError):
    """The usage queue is closed or its memory buffer is full."""

    status = 503
    code = "usage_queue_unavailable"
    retryable = True
    log_level = logging.WARNING


def _read_feedback(raw: bytes) -> tuple[str, float]:
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON ({exc.msg}).") from exc
    if not isinstance(body, dict):
        raise InvalidRequest('The request body must be a JSON object: {"request_id", "score"}.')
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= _MAX_REQUEST_ID:
        raise InvalidRequest(
            "'request_id' must be the request id from the response's x-request-id or "
            f"request-id header (a string of 1 to {_MAX_REQUEST_ID} characters).",
            param="request_id",
        )
    score = body.get("score")
    if (
        isinstance(score, bool)
        or not isinstance(score, (int, float))
        or not math.isfinite(score)
        or not 0 <= score <= 1
    ):
        raise InvalidRequest(
            f"'score' must be a number from 0 (bad) to 1 (good), not {score!r:.40}.",
            param="score",
        )
    return request_id, float(score)


def add_feedback_route(
    app: web.Application, authenticate: Authenticate, recorder: UsageRecorder
) -> None:
    """Serve ``POST /v1/feedback``, queueing each score in ``recorder.queue``."""

    async def feedback(request: web.Request) -> web.Response:
        ingress = ANTHROPIC if "anthropic-version" in request.headers else OPENAI
        try:
            caller = authenticate(request.headers)
            if (request.content_length or 0) > _MAX_BODY_BYTES:
                raise RequestTooLarge(f"The feedback body is larger than {_MAX_BODY_BYTES} bytes.")
            request_id, score = _read_feedback(await request.read())
            event = new_feedback(
                request_id=request_id,
                score=score,
                instance=recorder.instance,
                site=recorder.site,
                key_name=caller.key_name,
                team=caller.team,
            )
            queue = recorder.queue
            if queue is None or not queue.offer(event):
                raise QueueUnavailable(
                    "The usage queue is not accepting events right now. Retry later."
                )
        except SmartflowError as exc:
            logger.log(exc.log_level, "feedback rejected: %s (%s)", exc.message, exc.code)
            status, body, headers = ingress.render_error(exc)
            return web.Response(
                status=status, body=body, content_type="application/json", headers=headers
            )
        payload = {"id": event.event_id, "request_id": request_id, "status": "queued"}
        return web.Response(status=202, body=orjson.dumps(payload), content_type="application/json")

    app.router.add_post(FEEDBACK_PATH, feedback)
