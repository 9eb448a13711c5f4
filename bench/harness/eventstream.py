"""The mock upstream's fixed Bedrock ConverseStream reply, as event-stream frames."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

import orjson

__all__ = [
    "CONVERSE_CONTENT_PARTS",
    "CONVERSE_STREAM_FRAMES",
    "CONVERSE_STREAM_SUFFIX",
    "CONVERSE_USAGE",
    "build_converse_stream_frames",
    "encode_event",
]

# The reply text of the mock's OpenAI replies, split into the 20 text deltas of the
# ConverseStream reply.
CONVERSE_CONTENT_PARTS = (
    "A service mesh",
    " moves retries,",
    " timeouts and",
    " mutual TLS",
    " out of",
    " your application",
    " code and",
    " into a",
    " sidecar proxy that",
    " runs next to",
    " each instance.",
    " You get uniform",
    " traffic policy and",
    " telemetry across",
    " services written",
    " in different",
    " languages, at the",
    " cost of one",
    " extra network hop",
    " per call.",
)
CONVERSE_USAGE = {"inputTokens": 212, "outputTokens": 48, "totalTokens": 260}
# Bedrock adds a "p" padding field of varying length to stream events, and clients ignore it.
# The mock fills it with the first letters of this alphabet.
_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_PRELUDE = struct.Struct(">II")
_CRC32 = struct.Struct(">I")
_STRING_HEADER = struct.Struct(">BH")  # value type 7 (string), then the value's length
_STRING_TYPE = 7


def encode_event(event_type: str, payload: bytes) -> bytes:
    """Encode one ``application/vnd.amazon.eventstream`` message as Bedrock sends events.

    A message is its total length and headers length (big-endian uint32), the CRC-32 of
    those 8 bytes, the headers, the payload, and the CRC-32 of everything before it. The
    headers are :event-type, :content-type and :message-type, all strings.
    """
    headers = bytearray()
    for name, value in (
        (b":event-type", event_type.encode()),
        (b":content-type", b"application/json"),
        (b":message-type", b"event"),
    ):
        headers += bytes((len(name),)) + name
        headers += _STRING_HEADER.pack(_STRING_TYPE, len(value)) + value
    total = _PRELUDE.size + _CRC32.size + len(headers) + len(payload) + _CRC32.size
    prelude = _PRELUDE.pack(total, len(headers))
    message = prelude + _CRC32.pack(zlib.crc32(prelude)) + bytes(headers) + payload
    return message + _CRC32.pack(zlib.crc32(message))


def _event(event_type: str, body: Mapping[str, object], pad: int) -> bytes:
    return encode_event(event_type, orjson.dumps({**body, "p": _PADDING[:pad]}))


def _metadata_frame() -> bytes:
    """Encode the final ``metadata`` event, with a ``latencyMs`` that ends the body in ASCII.

    The body ends with this frame's CRC. The open-loop load generator takes the expected end
    of a body as text, so the latency figure is the first from 1000 ms whose four CRC bytes
    are printable ASCII other than space.
    """
    for latency_ms in range(1000, 100_000):
        metadata = {"usage": CONVERSE_USAGE, "metrics": {"latencyMs": latency_ms}}
        frame = _event("metadata", metadata, pad=11)
        if all(0x21 <= byte <= 0x7E for byte in frame[-_CRC32.size :]):
            return frame
    raise AssertionError("no latencyMs gives a metadata frame that ends in printable ASCII")


def build_converse_stream_frames() -> tuple[bytes, ...]:
    """Build the ConverseStream reply as event-stream frames, in Bedrock's event order.

    The events are messageStart, 20 contentBlockDelta events with text, contentBlockStop,
    messageStop and metadata with usage: 24 frames. A text block has no contentBlockStart.
    """
    frames = [_event("messageStart", {"role": "assistant"}, pad=3)]
    for number, part in enumerate(CONVERSE_CONTENT_PARTS):
        delta = {"contentBlockIndex": 0, "delta": {"text": part}}
        frames.append(_event("contentBlockDelta", delta, pad=(7 * number) % 40 + 2))
    frames.append(_event("contentBlockStop", {"contentBlockIndex": 0}, pad=5))
    frames.append(_event("messageStop", {"stopReason": "end_turn"}, pad=9))
    frames.append(_metadata_frame())
    return tuple(frames)


CONVERSE_STREAM_FRAMES = build_converse_stream_frames()
# The last bytes of every ConverseStream body, printable ASCII: the end of the metadata
# event's JSON and its CRC.
CONVERSE_STREAM_SUFFIX = CONVERSE_STREAM_FRAMES[-1][-16:]
