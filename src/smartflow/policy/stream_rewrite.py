"""Rewriting server-sent event streams in the caller's dialect (OpenAI or Anthropic).

Every text delta and tool-argument delta goes through a ``TextChannel`` of the request's
``PolicyRun``: the response rules over a hold-back window, then placeholder restoring.
Held text is released in later events, and what is still held when a choice or content
block ends is sent in one extra delta event just before that end. Events without text pass
through byte for byte; an event whose text is all held back is dropped.

NOTE: reasoning deltas (``thinking_delta``, ``reasoning_content``) and refusals pass
unchecked and unrestored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from smartflow.policy.run import PolicyRun, TextChannel

__all__ = [
    "AnthropicStreamRewriter",
    "OpenAIStreamRewriter",
    "StreamRewriter",
    "stream_rewriter",
]


class StreamRewriter(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...


def stream_rewriter(run: PolicyRun, dialect: str) -> StreamRewriter:
    """Return the rewriter for streams in ``dialect`` (``openai`` or ``anthropic``)."""
    if dialect == "anthropic":
        return AnthropicStreamRewriter(run)
    return OpenAIStreamRewriter(run)


class _Frames:
    """Split a byte stream into SSE blocks, keeping each block's bytes."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        blocks = buffer.split(b"\n\n")
        self._buffer = blocks.pop()
        return blocks

    def close(self) -> list[bytes]:
        rest, self._buffer = self._buffer.strip(b"\n"), b""
        return [rest] if rest else []


def _parse_block(block: bytes) -> tuple[str | None, bytes | None]:
    """Return the event name and the data of one SSE block (None where absent)."""
    event: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    return event, (b"\n".join(data) if data else None)


def _data_event(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


class OpenAIStreamRewriter:
    """Rewrite ``chat.completion.chunk`` events: ``delta.content`` and tool arguments."""

    def __init__(self, run: PolicyRun) -> None:
        self._run = run
        self._frames = _Frames()
        self._channels: dict[tuple[int, int], TextChannel] = {}
        """Per (choice index, -1 for content or the tool call index)."""
        self._last: dict[str, Any] | _ContentEvent = {}
        """The latest chunk with choices: its id, model and other fields go into flushed ones."""

    def feed(self, chunk: bytes) -> bytes:
        return self._rewrite_blocks(self._frames.feed(chunk))

    def close(self) -> bytes:
        out = self._rewrite_blocks(self._frames.close())
        return out + b"".join([self._flush(choice) for choice in self._open_choices()])

    def _channel(self, choice: int, slot: int) -> TextChannel:
        channel = self._channels.get((choice, slot))
        if channel is None:
            channel = self._run.open_channel(json_escaped=slot >= 0)
            self._channels[(choice, slot)] = channel
        return channel

    def _open_choices(self) -> list[int]:
        return sorted({choice for choice, _ in self._channels})

    def _rewrite_blocks(self, blocks: list[bytes]) -> bytes:
        """Rewrite the events of one network read.

        Consecutive content-only events of one choice become one event, whose content is what
        the channel releases for all of them, so each read costs one channel call.
        """
        out: list[bytes] = []
        group: list[_ContentEvent] = []
        for block in blocks:
            event = _scan_content_event(block)
            data: bytes | None = None
            chunk: Any = None
            if event is None:
                data, chunk, choice = _read_event(block)
                if choice is not None:
                    content = chunk["choices"][0]["delta"]["content"]
                    event = _ContentEvent(choice, content, block, None, chunk)
            if event is not None:
                if group and event.choice != group[-1].choice:
                    out.append(self._rewrite_group(group))
                    group = []
                group.append(event)
                continue
            if group:
                out.append(self._rewrite_group(group))
                group = []
            out.append(self._rewrite_event(block, data, chunk))
        if group:
            out.append(self._rewrite_group(group))
        return b"".join(out)

    def _rewrite_group(self, group: list[_ContentEvent]) -> bytes:
        last = group[-1]
        content = last.content if len(group) == 1 else "".join(e.content for e in group)
        text = self._channel(last.choice, -1).feed(content)
        self._last = last
        return last.render(text) if text else b""

    def _rewrite_event(self, block: bytes, data: bytes | None, chunk: Any) -> bytes:
        if data is None:
            return block + b"\n\n" if block else b""
        if chunk is None:
            if data.strip() == b"[DONE]":
                flushed = b"".join([self._flush(choice) for choice in self._open_choices()])
                return flushed + block + b"\n\n"
            return block + b"\n\n"
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list) or not choices:
            return block + b"\n\n"
        self._last = chunk
        before = b""
        for choice in choices:
            if isinstance(choice, dict):
                self._rewrite_delta(choice)
                if choice.get("finish_reason") is not None:
                    before += self._flush(choice.get("index", 0))
        if all(_is_empty_choice(choice) for choice in choices) and not chunk.get("usage"):
            return before
        return before + _data_event(chunk)

    def _rewrite_delta(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        if isinstance(delta.get("content"), str):
            delta["content"] = self._channel(index, -1).feed(delta["content"])
        for call in delta.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                channel = self._channel(index, call.get("index", 0))
                function["arguments"] = channel.feed(function["arguments"])

    def _flush(self, choice: int) -> bytes:
        """Return one chunk with what the channels of ``choice`` still hold, and close them."""
        delta: dict[str, Any] = {}
        calls = []
        for (owner, slot), channel in sorted(self._channels.items()):
            if owner != choice:
                continue
            text = channel.flush()
            del self._channels[(owner, slot)]
            if not text:
                continue
            if slot < 0:
                delta["content"] = text
            else:
                calls.append({"index": slot, "function": {"arguments": text}})
        if calls:
            delta["tool_calls"] = calls
        if not delta:
            return b""
        last = self._last if isinstance(self._last, dict) else self._last.parsed()
        payload = {k: v for k, v in last.items() if k not in ("choices", "usage")}
        payload["choices"] = [{"index": choice, "delta": delta, "finish_reason": None}]
        return _data_event(payload)


@dataclass(slots=True)
class _ContentEvent:
    """An event whose one choice carries only a content delta, the most common event."""

    choice: int
    content: str
    block: bytes
    span: tuple[int, int] | None
    """The span of the content's JSON string in ``block``, quotes included, when the event
    was not parsed."""
    chunk: dict[str, Any] | None
    """The parsed event, when it was parsed."""

    def render(self, text: str) -> bytes:
        """Return the event with ``text`` as its content."""
        if self.span is not None:
            start, end = self.span
            return self.block[:start] + orjson.dumps(text) + self.block[end:] + b"\n\n"
        assert self.chunk is not None
        self.chunk["choices"][0]["delta"]["content"] = text
        return _data_event(self.chunk)

    def parsed(self) -> dict[str, Any]:
        if self.chunk is None:
            self.chunk = orjson.loads(self.block[6:])
        return self.chunk


_INDEX_PREFIX = b'"choices":[{"index":'
_CONTENT_PREFIX = b'"delta":{"content":"'
# The bytes after the content string when the delta has nothing else, the choice is not
# finished and it is the only choice, in the field order of the OpenAI API reference examples
# and of this gateway's own encoder.
_CONTENT_ENDINGS = (b'"},"logprobs":null,"finish_reason":null}]', b'"},"finish_reason":null}]')


def _scan_content_event(block: bytes) -> _ContentEvent | None:
    """Find a content-only event by its bytes, without parsing the JSON; None otherwise.

    Only compact JSON in the field order that OpenAI sends matches. Every other event goes
    to ``_read_event``, which parses it, so this is only a faster path, never a filter.
    """
    if not block.startswith(b"data: {") or b"\n" in block or b'"usage":{' in block:
        return None
    prefix = block.find(_CONTENT_PREFIX)
    if prefix < 0 or block.find(_CONTENT_PREFIX, prefix + 1) >= 0:
        return None
    index_at = block.find(_INDEX_PREFIX)
    digits_at = index_at + len(_INDEX_PREFIX)
    comma = block.find(b",", digits_at)
    if index_at < 0 or comma + 1 != prefix or not block[digits_at:comma].isdigit():
        return None
    opening = prefix + len(_CONTENT_PREFIX) - 1
    closing = _closing_quote(block, opening + 1)
    if closing < 0 or not block.startswith(_CONTENT_ENDINGS, closing):
        return None
    content = orjson.loads(block[opening : closing + 1])
    return _ContentEvent(int(block[digits_at:comma]), content, block, (opening, closing + 1), None)


def _closing_quote(data: bytes, position: int) -> int:
    """Return the index of the first quote at or after ``position`` that no backslash escapes."""
    quote = data.find(b'"', position)
    while quote > 0:
        backslashes = 0
        while data[quote - 1 - backslashes] == 0x5C:  # a backslash
            backslashes += 1
        if backslashes % 2 == 0:
            return quote
        quote = data.find(b'"', quote + 1)
    return -1


def _read_event(block: bytes) -> tuple[bytes | None, Any, int | None]:
    """Return an OpenAI event's data, its JSON (None when it is not JSON) and, when its one
    choice carries only a content delta, that choice's index.

    Content-only events are most of a stream. Any other event (a role, a finish, tool calls,
    logprobs, usage) has None as the index.
    """
    if block.startswith(b"data: {") and b"\n" not in block:
        data = block[6:]  # the usual one-line event, read without a parser
    else:
        _, parsed = _parse_block(block) if block else (None, None)
        if parsed is None or not parsed.startswith(b"{"):
            return parsed, None, None
        data = parsed
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data, None, None
    try:
        (choice,) = chunk["choices"]
        delta = choice["delta"]
        if (
            len(delta) == 1
            and type(delta["content"]) is str
            and choice.get("finish_reason") is None
            and not choice.get("logprobs")
            and not chunk.get("usage")
        ):
            index = choice.get("index", 0)
            return data, chunk, index if type(index) is int else None
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    return data, chunk, None


def _is_empty_choice(choice: Any) -> bool:
    """Return whether a rewritten choice carries nothing, because all its text is held back."""
    if not isinstance(choice, dict) or choice.get("finish_reason") is not None:
        return False
    if choice.get("logprobs"):
        return False
    delta = choice.get("delta")
    if not isinstance(delta, dict) or delta.get("content") != "":
        return False
    return all(value is None for key, value in delta.items() if key != "content")


class AnthropicStreamRewriter:
    """Rewrite Messages API events: ``text_delta`` and ``input_json_delta`` per block."""

    def __init__(self, run: PolicyRun) -> None:
        self._run = run
        self._frames = _Frames()
        self._channels: dict[int, tuple[str, TextChannel]] = {}
        """Per content block index: the delta type and its channel."""

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._rewrite_block(block) for block in self._frames.feed(chunk))

    def close(self) -> bytes:
        out = b"".join(self._rewrite_block(block) for block in self._frames.close())
        return out + b"".join(self._flush(index) for index in sorted(self._channels))

    def _rewrite_block(self, block: bytes) -> bytes:
        if not block:
            return b""
        event, data = _parse_block(block)
        if data is None or event not in ("content_block_delta", "content_block_stop"):
            if event == "message_stop":
                held = b"".join(self._flush(index) for index in sorted(self._channels))
                return held + block + b"\n\n"
            return block + b"\n\n"
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return block + b"\n\n"
        if not isinstance(payload, dict):
            return block + b"\n\n"
        index = payload.get("index", 0)
        if event == "content_block_stop":
            return self._flush(index) + block + b"\n\n"
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return block + b"\n\n"
        kind = delta.get("type")
        field = {"text_delta": "text", "input_json_delta": "partial_json"}.get(str(kind))
        if field is None or not isinstance(delta.get(field), str):
            return block + b"\n\n"
        channel = self._channel(index, str(kind))
        text = channel.feed(delta[field])
        if not text:
            return b""
        delta[field] = text
        return _data_event(payload, event)

    def _channel(self, index: int, kind: str) -> TextChannel:
        entry = self._channels.get(index)
        if entry is None:
            entry = (kind, self._run.open_channel(json_escaped=kind == "input_json_delta"))
            self._channels[index] = entry
        return entry[1]

    def _flush(self, index: int) -> bytes:
        entry = self._channels.pop(index, None)
        if entry is None:
            return b""
        kind, channel = entry
        text = channel.flush()
        if not text:
            return b""
        field = "text" if kind == "text_delta" else "partial_json"
        payload = {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": kind, field: text},
        }
        return _data_event(payload, "content_block_delta")
