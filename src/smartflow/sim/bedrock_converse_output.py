"""Rendering of the simulated model's reply as a Converse response or ConverseStream events."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from smartflow.sim.bedrock_converse_input import ConverseCall
from smartflow.sim.bedrock_eventstream import event_frame
from smartflow.sim.script import SimReply, count_tokens, reply, split_chunks

__all__ = [
    "STOP_REASONS",
    "ConverseResult",
    "converse_body",
    "converse_stream_events",
    "run_converse",
    "split_fragments",
    "thinking_signature",
]

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "stop_sequence": "stop_sequence",
    "tool_calls": "tool_use",
}


@dataclass(slots=True)
class ConverseResult:
    """The simulated reply plus the reasoning text that precedes it, if thinking was on."""

    reply: SimReply
    thinking: str | None = None

    @property
    def output_tokens(self) -> int:
        extra = count_tokens(self.thinking) if self.thinking else 0
        return self.reply.output_tokens + extra


def thinking_signature(text: str) -> str:
    """Return a deterministic stand-in for the signature Claude attaches to its reasoning."""
    return base64.b64encode(hashlib.sha256(text.encode()).digest() * 2).decode()


def run_converse(call: ConverseCall, *, id_prefix: str) -> ConverseResult:
    """Compute the reply. With thinking on, reasoning text comes first and uses output tokens."""
    thinking = None
    if call.thinking_budget is not None:
        thinking = f"The user wrote: {call.sim_input.last_user_text or 'nothing'}. I should answer."
        spent = count_tokens(thinking)
        if call.sim_input.max_tokens is not None:
            call.sim_input.max_tokens = max(call.sim_input.max_tokens - spent, 0)
    return ConverseResult(reply=reply(call.sim_input, id_prefix=id_prefix), thinking=thinking)


def _usage(result: ConverseResult) -> dict[str, int]:
    input_tokens = result.reply.input_tokens
    output_tokens = result.output_tokens
    return {
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens,
    }


def _response_fields(
    call: ConverseCall, result: ConverseResult, *, stream: bool
) -> dict[str, Any] | None:
    """Resolve additionalModelResponseFieldPaths against Claude's native response.

    Only the stop sequence is simulated: ``/stop_sequence`` in a Converse response and
    ``/delta/stop_sequence`` in a stream, where it sits in the native ``message_delta``.
    """
    pointer = "/delta/stop_sequence" if stream else "/stop_sequence"
    if (
        not call.sim_input.model.startswith("anthropic.")
        or pointer not in call.response_field_paths
    ):
        return None
    value = result.reply.stop_sequence
    return {"delta": {"stop_sequence": value}} if stream else {"stop_sequence": value}


def converse_body(call: ConverseCall, result: ConverseResult, latency_ms: int) -> dict[str, Any]:
    """Render the Converse response body."""
    content: list[dict[str, Any]] = []
    if result.thinking is not None:
        content.append(
            {
                "reasoningContent": {
                    "reasoningText": {
                        "text": result.thinking,
                        "signature": thinking_signature(result.thinking),
                    }
                }
            }
        )
    sim_reply = result.reply
    if sim_reply.text or not sim_reply.tool_calls:
        content.append({"text": sim_reply.text})
    for tool_call in sim_reply.tool_calls:
        tool_use = {"toolUseId": tool_call.id, "name": tool_call.name, "input": tool_call.arguments}
        content.append({"toolUse": tool_use})
    body: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": STOP_REASONS[sim_reply.finish],
        "usage": _usage(result),
        "metrics": {"latencyMs": latency_ms},
    }
    fields = _response_fields(call, result, stream=False)
    if fields is not None:
        body["additionalModelResponseFields"] = fields
    return body


def split_fragments(text: str, parts: int = 3) -> list[str]:
    """Split serialized tool input into a few fragments, as models stream it."""
    if not text:
        return [""]
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def converse_stream_events(
    call: ConverseCall, result: ConverseResult, latency_ms: int
) -> list[bytes]:
    """Render the reply as ConverseStream frames, in Bedrock's event order.

    Text blocks start straight with a delta and tool blocks with ``contentBlockStart``.
    Usage arrives in the final ``metadata`` event, after ``messageStop``.
    """
    frames = [event_frame("messageStart", {"role": "assistant"}, pad=3)]
    index = 0
    if result.thinking is not None:
        for piece in split_chunks(result.thinking):
            frames.append(_delta(index, {"reasoningContent": {"text": piece}}))
        signature = thinking_signature(result.thinking)
        frames.append(_delta(index, {"reasoningContent": {"signature": signature}}))
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}, pad=5))
        index += 1
    sim_reply = result.reply
    if sim_reply.text or not sim_reply.tool_calls:
        for piece in split_chunks(sim_reply.text):
            frames.append(_delta(index, {"text": piece}))
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}, pad=5))
        index += 1
    for tool_call in sim_reply.tool_calls:
        start = {"toolUse": {"toolUseId": tool_call.id, "name": tool_call.name}}
        frames.append(
            event_frame("contentBlockStart", {"contentBlockIndex": index, "start": start}, pad=7)
        )
        for fragment in split_fragments(json.dumps(tool_call.arguments)):
            frames.append(_delta(index, {"toolUse": {"input": fragment}}))
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}, pad=5))
        index += 1
    stop: dict[str, Any] = {"stopReason": STOP_REASONS[sim_reply.finish]}
    fields = _response_fields(call, result, stream=True)
    if fields is not None:
        stop["additionalModelResponseFields"] = fields
    frames.append(event_frame("messageStop", stop, pad=9))
    metadata = {"usage": _usage(result), "metrics": {"latencyMs": latency_ms}}
    frames.append(event_frame("metadata", metadata, pad=11))
    return frames


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}, pad=10)
