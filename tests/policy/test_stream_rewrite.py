"""Unit tests of the SSE rewriters: held text, flushed text, tool arguments, pass-through."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from smartflow.core.errors import PolicyViolation
from smartflow.core.types import ChatRequest, Message, TextPart
from smartflow.policy.documents import validate_documents
from smartflow.policy.engine import RequestContext, compile_policies
from smartflow.policy.run import PolicyRun
from smartflow.policy.stream_rewrite import AnthropicStreamRewriter, OpenAIStreamRewriter

EMAIL = "jane.doe@example.com"


def start_run(entities: list[dict[str, Any]], prompt: str = f"mail {EMAIL}") -> PolicyRun:
    document = {
        "apiVersion": "smartflow/v1",
        "kind": "Policy",
        "metadata": {"name": "p"},
        "spec": {"entities": entities},
    }
    policy = compile_policies(validate_documents([document]))
    request = ChatRequest(model="m", messages=[Message("user", [TextPart(prompt)])])
    return policy.evaluate_request(RequestContext(site="local"), request)


def openai_event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def openai_events(body: bytes) -> list[dict[str, Any]]:
    events = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    return [orjson.loads(event) for event in events[:-1]]


def joined_content(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_openai_content_and_split_placeholder() -> None:
    run = start_run([{"type": "EMAIL", "action": "tokenize", "on": ["request"]}])
    rewriter = OpenAIStreamRewriter(run)
    pieces = ["You said: mail <EMA", "IL_1", "> and more text after the value."]
    raw = openai_event({"role": "assistant", "content": ""})
    raw += b"".join(openai_event({"content": piece}) for piece in pieces)
    raw += openai_event({}, "stop") + b"data: [DONE]\n\n"
    # Feed in odd slices, so events are split across network chunks too.
    out = b"".join(rewriter.feed(raw[i : i + 7]) for i in range(0, len(raw), 7))
    out += rewriter.close()
    chunks = openai_events(out)
    assert joined_content(chunks) == f"You said: mail {EMAIL} and more text after the value."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(chunk["id"] == "chatcmpl-1" for chunk in chunks)


def test_openai_held_text_flushed_before_finish() -> None:
    run = start_run([{"type": "EMAIL", "action": "redact"}], prompt="hello")
    rewriter = OpenAIStreamRewriter(run)
    out = rewriter.feed(openai_event({"content": f"Write to {EMAIL} "}))
    assert out == b""
    out += rewriter.feed(openai_event({}, "stop"))
    chunks = [orjson.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert chunks[0]["choices"][0]["delta"] == {"content": "Write to [EMAIL] "}
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"


def test_openai_tool_arguments_restored_escaped() -> None:
    run = start_run([{"type": "EMAIL", "action": "tokenize"}])
    rewriter = OpenAIStreamRewriter(run)
    header = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "send"}}
    header["function"]["arguments"] = ""
    raw = openai_event({"role": "assistant", "content": None, "tool_calls": [header]})
    for fragment in ['{"to": "<EMAI', 'L_1>"}']:
        raw += openai_event({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
    raw += openai_event({}, "tool_calls") + b"data: [DONE]\n\n"
    chunks = openai_events(rewriter.feed(raw) + rewriter.close())
    arguments = "".join(
        call["function"].get("arguments") or ""
        for chunk in chunks
        for call in chunk["choices"][0]["delta"].get("tool_calls") or []
    )
    assert orjson.loads(arguments) == {"to": EMAIL}


def test_openai_usage_event_passes_unchanged() -> None:
    run = start_run([{"type": "EMAIL", "action": "redact"}], prompt="hello")
    rewriter = OpenAIStreamRewriter(run)
    usage = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":3}}\n\n'
    assert rewriter.feed(usage) == usage


def anthropic_event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


def anthropic_texts(body: bytes) -> tuple[str, str]:
    text, partial = "", ""
    for block in body.split(b"\n\n"):
        lines = block.split(b"\n")
        if lines[0] != b"event: content_block_delta":
            continue
        delta = orjson.loads(lines[1][6:])["delta"]
        text += delta.get("text", "")
        partial += delta.get("partial_json", "")
    return text, partial


def test_anthropic_text_and_tool_input() -> None:
    run = start_run([{"type": "EMAIL", "action": "tokenize"}])
    rewriter = AnthropicStreamRewriter(run)
    raw = anthropic_event("message_start", {"type": "message_start", "message": {}})
    raw += anthropic_event(
        "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
    )
    for piece in ["Sent to <EMAIL", "_1>."]:
        delta = {"type": "text_delta", "text": piece}
        raw += anthropic_event("content_block_delta", {"index": 0, "delta": delta})
    raw += anthropic_event("content_block_stop", {"index": 0})
    delta = {"type": "input_json_delta", "partial_json": '{"to": "<EMAIL_1>"}'}
    raw += anthropic_event("content_block_delta", {"index": 1, "delta": delta})
    raw += anthropic_event("content_block_stop", {"index": 1})
    raw += anthropic_event("message_stop", {"type": "message_stop"})
    out = rewriter.feed(raw) + rewriter.close()
    text, partial = anthropic_texts(out)
    assert text == f"Sent to {EMAIL}."
    assert orjson.loads(partial) == {"to": EMAIL}
    assert out.startswith(b"event: message_start\n")
    assert out.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_anthropic_block_rule_raises() -> None:
    run = start_run([{"type": "EMAIL", "action": "block", "on": ["response"]}], prompt="hi")
    rewriter = AnthropicStreamRewriter(run)
    delta = {"type": "text_delta", "text": f"Reach me at {EMAIL}"}
    rewriter.feed(anthropic_event("content_block_delta", {"index": 0, "delta": delta}))
    with pytest.raises(PolicyViolation, match="EMAIL"):
        rewriter.feed(anthropic_event("content_block_stop", {"index": 0}))


@pytest.mark.parametrize(
    "encode",
    [
        lambda chunk: orjson.dumps(chunk),
        lambda chunk: json.dumps(chunk).encode(),  # spaces after separators: the parsed path
    ],
    ids=["compact", "spaced"],
)
def test_openai_escapes_survive_both_paths(encode: Any) -> None:
    run = start_run([{"type": "EMAIL", "action": "tokenize"}])
    rewriter = OpenAIStreamRewriter(run)
    pieces = ['He said "hi" \\ to <EMAIL_1>', ' and left a "quote', '" at the end.']
    raw = b""
    for piece in pieces:
        chunk = {"id": "c", "choices": [{"index": 0, "delta": {"content": piece}}]}
        chunk["choices"][0]["finish_reason"] = None
        raw += b"data: " + encode(chunk) + b"\n\n"
    raw += openai_event({}, "stop") + b"data: [DONE]\n\n"
    chunks = openai_events(rewriter.feed(raw) + rewriter.close())
    expected = f'He said "hi" \\ to {EMAIL} and left a "quote" at the end.'
    assert joined_content(chunks) == expected
