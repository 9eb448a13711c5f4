"""Rendering of simulated replies as OpenAI chat completions and stream chunks."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import orjson

from smartflow.sim.openai_request import ChatRequest
from smartflow.sim.script import SimReply, SimToolCall, split_chunks

__all__ = ["ChunkHook", "CompletionRenderer", "fingerprint", "sse_data"]

_LOGPROB_TOKEN = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")
_OBFUSCATION = "Kx9Qm2VbT7rLpW4nZ8cY1hJ6dF3sA5gE"
_ARGUMENT_FRAGMENT = 12
"""Characters of tool-call arguments per stream chunk."""

ChunkHook = Callable[[dict[str, Any]], None]
"""Callback run on every chunk with choices before encoding (Azure adds filter results)."""


def sse_data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def fingerprint(model: str) -> str:
    return "fp_" + hashlib.sha256(model.encode()).hexdigest()[:10]


def _finish_reason(reply: SimReply, forced_function: bool) -> str:
    if reply.tool_calls:
        # The real API reports "stop", not "tool_calls", when tool_choice names a function.
        return "stop" if forced_function else "tool_calls"
    return "length" if reply.finish == "length" else "stop"


def _token_logprobs(text: str, top: int) -> list[dict[str, Any]]:
    """Return deterministic per-token logprob entries for ``text``."""
    entries = []
    for match in _LOGPROB_TOKEN.finditer(text):
        token = match.group()
        logprob = -0.0001 - (len(token) % 7) * 0.013
        alternatives = [
            {"token": token, "logprob": logprob, "bytes": list(token.encode())},
            *(
                {"token": f"{token.strip()}{n}", "logprob": logprob - 1.5 * n, "bytes": None}
                for n in range(1, top)
            ),
        ]
        entries.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode()),
                "top_logprobs": alternatives[:top],
            }
        )
    return entries


def _arguments(call: SimToolCall) -> str:
    return orjson.dumps(call.arguments).decode()


def _tool_call_object(call: SimToolCall) -> dict[str, Any]:
    arguments = _arguments(call)
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


class CompletionRenderer:
    """Render one reply in the Chat Completions wire format, whole or as a stream."""

    def __init__(
        self,
        chat: ChatRequest,
        reply: SimReply,
        *,
        completion_id: str,
        created: int,
        extra_fields: dict[str, Any],
        chunk_hook: ChunkHook | None = None,
    ) -> None:
        self.chat = chat
        self.reply = reply
        self.completion_id = completion_id
        self.created = created
        self.extra_fields = extra_fields
        self.chunk_hook = chunk_hook
        self.model = chat.model.response_name
        self.finish_reason = _finish_reason(reply, chat.forced_function)

    def usage(self) -> dict[str, Any]:
        n = self.chat.n
        reasoning = self.chat.reasoning_tokens * n
        completion = self.reply.output_tokens * n + reasoning
        return {
            "prompt_tokens": self.reply.input_tokens,
            "completion_tokens": completion,
            "total_tokens": self.reply.input_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    # --- whole response -----------------------------------------------------------------

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if self.reply.tool_calls else self.reply.text,
            "refusal": None,
            "annotations": [],
        }
        if self.reply.tool_calls:
            message["tool_calls"] = [_tool_call_object(call) for call in self.reply.tool_calls]
        logprobs = None
        if self.chat.logprobs:
            logprobs = {
                "content": _token_logprobs(self.reply.text, self.chat.top_logprobs),
                "refusal": None,
            }
        choices = [
            {
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": self.finish_reason,
            }
            for index in range(self.chat.n)
        ]
        body = {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
            "service_tier": "default",
            "system_fingerprint": fingerprint(self.model),
        }
        body.update(self.extra_fields)
        return body

    # --- stream -------------------------------------------------------------------------

    def stream_events(self) -> list[bytes]:
        """Encode the stream: per choice the role, content or tool-call and finish chunks,
        then the usage chunk when requested, then ``[DONE]``."""
        events: list[bytes] = []
        for index in range(self.chat.n):
            for delta, finish, logprobs in self._choice_deltas():
                choice = {
                    "index": index,
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
                events.append(self._chunk([choice], len(events)))
        if self.chat.include_usage:
            events.append(self._chunk([], len(events), usage=self.usage()))
        events.append(b"data: [DONE]\n\n")
        return events

    def _chunk(
        self, choices: list[dict[str, Any]], number: int, usage: dict[str, Any] | None = None
    ) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": fingerprint(self.model),
            "choices": choices,
        }
        if self.chat.include_usage:
            chunk["usage"] = usage
        if self.chat.include_obfuscation:
            chunk["obfuscation"] = _OBFUSCATION[: 1 + (number * 7) % len(_OBFUSCATION)]
        if choices and self.chunk_hook is not None:
            self.chunk_hook(chunk)
        chunk.update(self.extra_fields)
        return sse_data(chunk)

    def _choice_deltas(self) -> list[tuple[dict[str, Any], str | None, Any]]:
        """Return (delta, finish_reason, logprobs) for each chunk of one choice."""
        deltas: list[tuple[dict[str, Any], str | None, Any]] = []
        calls = self.reply.tool_calls
        if not calls:
            deltas.append(({"role": "assistant", "content": "", "refusal": None}, None, None))
            for piece in split_chunks(self.reply.text):
                logprobs = None
                if self.chat.logprobs:
                    content = _token_logprobs(piece, self.chat.top_logprobs)
                    logprobs = {"content": content, "refusal": None}
                deltas.append(({"content": piece}, None, logprobs))
        for position, call in enumerate(calls):
            header = {
                "index": position,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            if position == 0:
                delta = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [header],
                    "refusal": None,
                }
                deltas.append((delta, None, None))
            else:
                deltas.append(({"tool_calls": [header]}, None, None))
            arguments = _arguments(call)
            for start in range(0, len(arguments), _ARGUMENT_FRAGMENT):
                fragment = arguments[start : start + _ARGUMENT_FRAGMENT]
                continuation = {"index": position, "function": {"arguments": fragment}}
                deltas.append(({"tool_calls": [continuation]}, None, None))
        deltas.append(({}, self.finish_reason, None))
        return deltas
