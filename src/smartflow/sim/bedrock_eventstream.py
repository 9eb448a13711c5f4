"""Encoder for AWS ``application/vnd.amazon.eventstream`` frames, as Bedrock streams them.

botocore 1.44 only decodes this format (``botocore.eventstream.EventStreamBuffer``), so
the simulator encodes frames itself. A frame is: total length (uint32), headers length
(uint32), CRC-32 of those 8 bytes, the headers, the payload, and a CRC-32 of everything
before it. All integers are big-endian and the CRC is the IEEE polynomial (``zlib.crc32``).
Bedrock only sends string headers (value type 7).
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import orjson

__all__ = [
    "chunk_frame",
    "encode_frame",
    "event_frame",
    "exception_frame",
    "padding",
]

_STRING_TYPE = 7
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")
_PADDING_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _encode_headers(headers: list[tuple[str, str]]) -> bytes:
    parts: list[bytes] = []
    for name, value in headers:
        name_bytes = name.encode("utf-8")
        value_bytes = value.encode("utf-8")
        if len(name_bytes) > 255:
            raise ValueError(f"event-stream header name longer than 255 bytes: {name!r}")
        if len(value_bytes) > 65535:
            raise ValueError(f"event-stream header value longer than 65535 bytes: {name!r}")
        parts.append(struct.pack(">B", len(name_bytes)))
        parts.append(name_bytes)
        parts.append(struct.pack(">BH", _STRING_TYPE, len(value_bytes)))
        parts.append(value_bytes)
    return b"".join(parts)


def encode_frame(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """Encode one event-stream message with string headers, in the given header order."""
    header_bytes = _encode_headers(headers)
    total_length = _PRELUDE.size + _CRC.size + len(header_bytes) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total_length, len(header_bytes))
    prelude_crc = zlib.crc32(prelude)
    message = prelude + _CRC.pack(prelude_crc) + header_bytes + payload
    return message + _CRC.pack(zlib.crc32(message))


def padding(length: int) -> str:
    """Return the ``p`` field Bedrock adds to stream events so their sizes vary.

    Clients must ignore the field. The content here is deterministic filler.
    """
    return (_PADDING_ALPHABET * (length // len(_PADDING_ALPHABET) + 1))[:length]


def _padded_json(body: dict[str, Any], pad: int) -> bytes:
    if pad > 0:
        body = {**body, "p": padding(pad)}
    return orjson.dumps(body)


def event_frame(event_type: str, body: dict[str, Any], *, pad: int = 0) -> bytes:
    """Encode an ``event`` message whose JSON payload is ``body`` (plus ``p`` padding)."""
    headers = [
        (":event-type", event_type),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ]
    return encode_frame(headers, _padded_json(body, pad))


def chunk_frame(data: bytes, *, pad: int = 0) -> bytes:
    """Encode an InvokeModelWithResponseStream ``chunk`` event carrying ``data`` in base64."""
    return event_frame("chunk", {"bytes": base64.b64encode(data).decode("ascii")}, pad=pad)


def exception_frame(exception_type: str, body: dict[str, Any]) -> bytes:
    """Encode an ``exception`` message such as ``throttlingException`` with a JSON body."""
    headers = [
        (":exception-type", exception_type),
        (":content-type", "application/json"),
        (":message-type", "exception"),
    ]
    return encode_frame(headers, orjson.dumps(body))
