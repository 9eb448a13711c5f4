"""Parts of the Bedrock streamed workload: the ConverseStream request, its check, the provider."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, urlsplit

import orjson
from botocore.eventstream import (  # type: ignore[import-untyped]
    EventStreamBuffer,
    EventStreamMessage,
    ParserError,
)

__all__ = [
    "CONVERSE_STREAM_PATH",
    "FAKE_AWS_ENV",
    "MODEL_ID",
    "REGION",
    "check_converse_stream",
    "converse_request_body",
    "provider_config",
]

MODEL_ID = "anthropic.claude-3-5-sonnet-20241022-v2:0"
REGION = "us-east-1"
# Bedrock takes the model id percent-encoded in the path, with ":" as %3A.
CONVERSE_STREAM_PATH = f"/model/{quote(MODEL_ID, safe='')}/converse-stream"
# The gateway's environment for a Bedrock case. The credentials are invented (the mock
# upstream checks no signature). The empty token variables keep a session token from the
# caller's shell out of the signed requests, and botocore must not query instance metadata.
FAKE_AWS_ENV: Mapping[str, str] = {
    "AWS_ACCESS_KEY_ID": "AKIDBENCHFAKE0000001",
    "AWS_SECRET_ACCESS_KEY": "bench/fake/secret/not-a-real-aws-key",
    "AWS_SESSION_TOKEN": "",
    "AWS_SECURITY_TOKEN": "",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def converse_request_body(system: str, user: str, *, max_tokens: int, temperature: float) -> bytes:
    """Build the ConverseStream body the gateway sends for a chat request with these fields."""
    body = {
        "messages": [{"role": "user", "content": [{"text": user}]}],
        "system": [{"text": system}],
        "inferenceConfig": {"maxTokens": max_tokens, "temperature": temperature},
    }
    return orjson.dumps(body)


def provider_config(upstream_url: str) -> dict[str, object]:
    """Return the config of a Bedrock provider whose endpoint is ``upstream_url``.

    Raises ValueError unless the URL's host is 127.0.0.1, so no request can leave the machine.
    """
    host = urlsplit(upstream_url).hostname
    if host != "127.0.0.1":
        raise ValueError(
            f"Bedrock endpoint {upstream_url!r} is not on 127.0.0.1: the benchmark stays local"
        )
    return {"type": "bedrock", "region": REGION, "base_url": upstream_url}


def _parse_frames(body: bytes) -> list[EventStreamMessage] | str:
    """Decode the event-stream frames of ``body`` with botocore, or describe why that failed."""
    buffer = EventStreamBuffer()
    buffer.add_data(body)
    try:
        messages = list(buffer)
    except ParserError as exc:
        return f"invalid event-stream frame ({type(exc).__name__}: {exc})"
    # The buffer stops, without an error, at bytes that do not make a whole frame.
    parsed = sum(message.prelude.total_length for message in messages)
    if parsed != len(body):
        return f"{len(body) - parsed} bytes after the last whole event-stream frame"
    return messages


def _event_payloads(
    messages: list[EventStreamMessage],
) -> list[tuple[str, dict[str, object]]] | str:
    """Return (event type, JSON payload) per message, or what is wrong with a message."""
    events: list[tuple[str, dict[str, object]]] = []
    for message in messages:
        message_type = message.headers.get(":message-type")
        if message_type != "event":
            return f"{message_type} message in the stream: {message.headers} {message.payload!r}"
        try:
            payload = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            return f"event payload is not JSON: {message.payload[:200]!r}"
        events.append((str(message.headers.get(":event-type")), payload))
    return events


def check_converse_stream(body: bytes, expected_start: str) -> str | None:
    """Return what is wrong with a ConverseStream body, or None when it is valid.

    A valid body has messageStart first, text deltas that join to text starting with
    ``expected_start``, messageStop, and last a metadata event with usage.
    """
    messages = _parse_frames(body)
    if isinstance(messages, str):
        return messages
    events = _event_payloads(messages)
    if isinstance(events, str):
        return events
    types = [event_type for event_type, _ in events]
    if not types or types[0] != "messageStart":
        return f"the stream does not start with messageStart: {types[:3]}"
    if types[-1] != "metadata" or not events[-1][1].get("usage"):
        return f"the stream does not end with a metadata event with usage: {types[-3:]}"
    if "messageStop" not in types:
        return "the stream has no messageStop event"
    text = ""
    for event_type, payload in events:
        delta = payload.get("delta") if event_type == "contentBlockDelta" else None
        if isinstance(delta, dict):
            text += str(delta.get("text", ""))
    if not text.startswith(expected_start):
        return f"unexpected streamed text {text!r}"
    return None
