"""Gateway calls into the policy engine: request context, request bodies, responses.

Responses are rewritten in the caller's dialect, after the dispatcher has produced the
caller's bytes, so one code path covers pass-through and translated responses alike. Streams
go through ``smartflow.policy.stream_rewrite`` in the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from smartflow.auth.keys import Caller
from smartflow.policy.engine import RequestContext
from smartflow.policy.run import PolicyRun, walk_strings

__all__ = [
    "CLASSIFICATION_HEADER",
    "request_context",
    "rewrite_request_body",
    "rewrite_response_body",
]

logger = logging.getLogger(__name__)

CLASSIFICATION_HEADER = "x-smartflow-classification"
"""Comma-separated classification labels of a request, such as ``confidential``."""


def request_context(
    caller: Caller, model: str, headers: Mapping[str, str], site: str
) -> RequestContext:
    """Build the context that scope and compliance rules match: key, team, model, labels."""
    labels = {label.strip().lower() for label in caller.labels if label.strip()}
    header = headers.get(CLASSIFICATION_HEADER, "")
    labels.update(label.strip().lower() for label in header.split(",") if label.strip())
    return RequestContext(
        site=site, team=caller.team, key=caller.key_name, model=model, labels=frozenset(labels)
    )


# --- request bodies ---------------------------------------------------------------------


def rewrite_request_body(run: PolicyRun, dialect: str, body: dict[str, Any]) -> dict[str, Any]:
    """Return the caller's body with its message texts rewritten as in ``run.request``.

    Only the dicts and lists on the way to a changed text are copied, so the caller's body
    is left as it was. Used for pass-through, where this body goes upstream.
    """
    if not run.request_changed:
        return body
    if dialect == "anthropic":
        return _rewrite_anthropic_request(run, body)
    return _rewrite_openai_request(run, body)


def _rewrite_openai_request(run: PolicyRun, body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return body
    new_messages = [_rewrite_openai_message(run, message) for message in messages]
    if all(new is old for new, old in zip(new_messages, messages, strict=True)):
        return body
    return {**body, "messages": new_messages}


def _rewrite_openai_message(run: PolicyRun, message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    changed: dict[str, Any] = {}
    content = _rewrite_content(run.rewrite_request_text, message.get("content"))
    if content is not message.get("content"):
        changed["content"] = content
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        new_calls = [_rewrite_openai_call(run, call) for call in calls]
        if any(new is not old for new, old in zip(new_calls, calls, strict=True)):
            changed["tool_calls"] = new_calls
    return {**message, **changed} if changed else message


def _rewrite_openai_call(run: PolicyRun, call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    arguments = run.rewrite_request_arguments(function["arguments"])
    if arguments == function["arguments"]:
        return call
    return {**call, "function": {**function, "arguments": arguments}}


def _rewrite_content(rewrite: Callable[[str], str], content: Any) -> Any:
    """Rewrite a string, or the ``text`` of each text block of a list; else leave it."""
    if isinstance(content, str):
        new = rewrite(content)
        return content if new == content else new
    if not isinstance(content, list):
        return content
    blocks = [_rewrite_text_block(rewrite, block) for block in content]
    if all(new is old for new, old in zip(blocks, content, strict=True)):
        return content
    return blocks


def _rewrite_text_block(rewrite: Callable[[str], str], block: Any) -> Any:
    if not isinstance(block, dict) or block.get("type") != "text":
        return block
    text = block.get("text")
    if not isinstance(text, str):
        return block
    new = rewrite(text)
    return block if new == text else {**block, "text": new}


def _rewrite_anthropic_request(run: PolicyRun, body: dict[str, Any]) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    system = _rewrite_content(run.rewrite_request_text, body.get("system"))
    if system is not body.get("system"):
        changed["system"] = system
    messages = body.get("messages")
    if isinstance(messages, list):
        new_messages = [_rewrite_anthropic_message(run, message) for message in messages]
        if any(new is not old for new, old in zip(new_messages, messages, strict=True)):
            changed["messages"] = new_messages
    return {**body, **changed} if changed else body


def _rewrite_anthropic_message(run: PolicyRun, message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, list):
        blocks = [_rewrite_anthropic_block(run, block) for block in content]
        if all(new is old for new, old in zip(blocks, content, strict=True)):
            return message
        return {**message, "content": blocks}
    new = _rewrite_content(run.rewrite_request_text, content)
    return message if new is content else {**message, "content": new}


def _rewrite_anthropic_block(run: PolicyRun, block: Any) -> Any:
    if not isinstance(block, dict):
        return block
    kind = block.get("type")
    if kind == "text":
        return _rewrite_text_block(run.rewrite_request_text, block)
    if kind == "tool_result":
        content = _rewrite_content(run.rewrite_request_text, block.get("content"))
        return block if content is block.get("content") else {**block, "content": content}
    if kind == "tool_use":
        tool_input = walk_strings(block.get("input"), run.rewrite_request_text)
        return block if tool_input is block.get("input") else {**block, "input": tool_input}
    return block


# --- responses --------------------------------------------------------------------------


Rewrite = Callable[[str, bool], str]
"""Returns the new text for a response text; the flag is true inside JSON (tool arguments)."""


def rewrite_response_body(run: PolicyRun, dialect: str, payload: bytes) -> bytes:
    """Apply the response rules and restore placeholders in a whole response body.

    ``payload`` is the body in the caller's dialect. A body that is not the expected JSON
    object is returned as it is, and so is a body that nothing changed. The message text
    and the tool call arguments are read.

    NOTE: reasoning text (thinking blocks, ``reasoning_content``) and refusals are not.

    Raises:
        PolicyViolation: an enforced response rule blocks the response.
        PolicyEvaluationFailed: evaluation raised and a policy in scope fails closed.
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        logger.warning("request %s: response body is not JSON; not checked", run.request_id)
        return payload
    if not isinstance(data, dict):
        return payload
    walk = _rewrite_anthropic_response if dialect == "anthropic" else _rewrite_openai_response
    # The first walk collects the texts, so the rules can read them all at once.
    slots: list[tuple[str, bool]] = []

    def collect(text: str, escaped: bool) -> str:
        slots.append((text, escaped))
        return text

    walk(data, collect)
    if not slots:
        return payload
    results = run.rewrite_response_texts(slots)
    if all(new_text == text for (text, _), new_text in results.items()):
        return payload
    new = walk(data, lambda text, escaped: results[(text, escaped)])
    return payload if new is data else orjson.dumps(new)


def _rewrite_openai_response(data: dict[str, Any], rewrite: Rewrite) -> dict[str, Any]:
    choices = data.get("choices")
    if not isinstance(choices, list):
        return data
    new_choices = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            new_choices.append(choice)
            continue
        new_message = _rewrite_openai_message_texts(message, rewrite)
        new_choices.append(choice if new_message is message else {**choice, "message": new_message})
    if all(new is old for new, old in zip(new_choices, choices, strict=True)):
        return data
    return {**data, "choices": new_choices}


def _rewrite_openai_message_texts(message: dict[str, Any], rewrite: Rewrite) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    content = message.get("content")
    if isinstance(content, str):
        new = rewrite(content, False)
        if new != content:
            changed["content"] = new
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        new_calls = [_rewrite_openai_response_call(call, rewrite) for call in calls]
        if any(new is not old for new, old in zip(new_calls, calls, strict=True)):
            changed["tool_calls"] = new_calls
    return {**message, **changed} if changed else message


def _rewrite_openai_response_call(call: Any, rewrite: Rewrite) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    arguments = rewrite(function["arguments"], True)
    if arguments == function["arguments"]:
        return call
    return {**call, "function": {**function, "arguments": arguments}}


def _rewrite_anthropic_response(data: dict[str, Any], rewrite: Rewrite) -> dict[str, Any]:
    content = data.get("content")
    if not isinstance(content, list):
        return data
    blocks = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            blocks.append(_rewrite_text_block(lambda text: rewrite(text, False), block))
        elif kind == "tool_use":
            tool_input = walk_strings(block.get("input"), lambda text: rewrite(text, False))
            same = tool_input is block.get("input")
            blocks.append(block if same else {**block, "input": tool_input})
        else:
            blocks.append(block)
    if all(new is old for new, old in zip(blocks, content, strict=True)):
        return data
    return {**data, "content": blocks}
