"""Incremental parser for server-sent events (text/event-stream)."""

from __future__ import annotations

__all__ = ["SSEParser"]


class SSEParser:
    """Split a byte stream into (event name, data) pairs as chunks arrive.

    Only the ``event`` and ``data`` fields matter to the gateway; comments, ``id``
    and ``retry`` lines are skipped. Several ``data`` lines join with a newline.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            # A lone trailing \r may be the first half of \r\n: keep it for the next chunk.
            keep_cr = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n")
            if keep_cr:
                buffer = buffer[:-1].replace(b"\r", b"\n") + b"\r"
            else:
                buffer = buffer.replace(b"\r", b"\n")
        events: list[tuple[str | None, str]] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            parsed = self._parse_block(buffer[start:end])
            if parsed is not None:
                events.append(parsed)
            start = end + 2
        self._buffer = buffer[start:]
        return events

    def close(self) -> list[tuple[str | None, str]]:
        """Parse what is left when the stream ends without a final blank line."""
        rest, self._buffer = self._buffer.strip(b"\r\n"), b""
        parsed = self._parse_block(rest) if rest else None
        return [parsed] if parsed is not None else []

    @staticmethod
    def _parse_block(block: bytes) -> tuple[str | None, str] | None:
        event: str | None = None
        data: list[str] = []
        for line in block.split(b"\n"):
            if not line or line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value.decode("utf-8"))
            elif name == b"event":
                event = value.decode("utf-8")
        if not data:
            return None
        return event, "\n".join(data)
