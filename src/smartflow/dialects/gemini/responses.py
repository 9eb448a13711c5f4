"""Gemini ``GenerateContentResponse`` bodies to canonical responses, usage and finish reasons.

Gemini function calls may come without an ``id``, and Gemini 3 attaches a thought
signature that must be sent back with the call in later turns. Both travel inside the
canonical tool call id, which every client echoes back: ``<id>__sig_<signature>``, where
``<id>`` is Gemini's own id or one generated here with the ``gemini_call_`` prefix, and
the signature is the URL-safe base64 form of Gemini's ``thoughtSignature``.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from typing import Any

import orjson

from smartflow.core.errors import MalformedUpstreamResponse
from smartflow.core.types import (
    ChatResponse,
    FinishReason,
    ReasoningPart,
    TextPart,
    ToolCall,
    Usage,
)

__all__ = [
    "GENERATED_ID_PREFIX",
    "block_notice",
    "candidate_block_notice",
    "candidate_parts",
    "first_candidate",
    "make_call_id",
    "map_finish_reason",
    "parse_response",
    "parse_usage",
    "prompt_block_notice",
    "split_call_id",
    "tool_arguments",
]

logger = logging.getLogger(__name__)

GENERATED_ID_PREFIX = "gemini_call_"
_SIGNATURE_SEPARATOR = "__sig_"

# Finish reasons that mean a filter stopped the output, from the FinishReason enum of
# google-genai 3.6.1.
_FILTERED = frozenset(
    {
        "SAFETY",
        "ESCALATION",
        "RECITATION",
        "LANGUAGE",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
    }
)


def map_finish_reason(raw: str) -> FinishReason:
    """Map a Gemini ``finishReason`` to the canonical finish reason.

    A function call also ends with STOP, so the caller turns ``stop`` into ``tool_calls``
    when the candidate contains calls.
    """
    if raw == "STOP":
        return "stop"
    if raw in ("MAX_TOKENS", "CONTINUATION"):
        # CONTINUATION: the per-request token limit was reached before the output was done.
        return "length"
    if raw in _FILTERED:
        return "content_filter"
    # MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, TOO_MANY_TOOL_CALLS, OTHER and the
    # other values, including ones added later, are abnormal ends.
    return "error"


# --- tool call ids ---------------------------------------------------------------------


def make_call_id(upstream_id: Any, signature: Any, *, response_id: str, index: int) -> str:
    """Build the canonical id of the ``index``-th function call of a response."""
    if isinstance(upstream_id, str) and upstream_id:
        base = upstream_id
    else:
        # Derived from the response id, so the id is stable for one response and unique
        # across responses. A random seed is used when the response has no id.
        seed = response_id or uuid.uuid4().hex
        base = GENERATED_ID_PREFIX + hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:24]
    if isinstance(signature, str) and signature:
        urlsafe = signature.replace("+", "-").replace("/", "_").rstrip("=")
        return base + _SIGNATURE_SEPARATOR + urlsafe
    return base


def split_call_id(call_id: str) -> tuple[str | None, str | None]:
    """Return the Gemini function call id (None when the gateway generated it) and the
    thought signature carried in a canonical tool call id."""
    base, separator, encoded = call_id.partition(_SIGNATURE_SEPARATOR)
    signature = None
    if separator and encoded:
        padded = encoded + "=" * (-len(encoded) % 4)
        signature = padded.replace("-", "+").replace("_", "/")
    if not base or base.startswith(GENERATED_ID_PREFIX):
        return None, signature
    return base, signature


# --- usage and safety blocks -----------------------------------------------------------


def _count(raw: dict[str, Any], name: str) -> int:
    value = raw.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_usage(raw: Any) -> Usage:
    """Convert ``usageMetadata``.

    Output is taken as ``totalTokenCount`` minus the prompt counts, which includes the
    thinking tokens whether or not ``candidatesTokenCount`` already counts them (sources
    disagree on that between the Gemini API and Vertex AI).
    """
    if not isinstance(raw, dict):
        return Usage()
    prompt = _count(raw, "promptTokenCount") + _count(raw, "toolUsePromptTokenCount")
    thoughts = _count(raw, "thoughtsTokenCount")
    total = raw.get("totalTokenCount")
    if isinstance(total, int) and total >= prompt:
        output = total - prompt
    else:
        output = _count(raw, "candidatesTokenCount") + thoughts
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        cached_input_tokens=_count(raw, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def _flagged_categories(ratings: Any) -> list[str]:
    """Return the harm categories that caused a block: those marked ``blocked``, or else
    those rated at the highest probability present."""
    if not isinstance(ratings, list):
        return []
    rated = [r for r in ratings if isinstance(r, dict) and isinstance(r.get("category"), str)]
    blocked = [r["category"] for r in rated if r.get("blocked")]
    if blocked:
        return blocked
    for level in ("HIGH", "MEDIUM"):
        found = [r["category"] for r in rated if r.get("probability") == level]
        if found:
            return found
    return []


def block_notice(subject: str, reason: str, ratings: Any, detail: Any = None) -> str:
    """Describe a Gemini block for the caller, naming the reason and the harm category."""
    text = f"Gemini blocked {subject} (reason: {reason}"
    categories = _flagged_categories(ratings)
    if categories:
        text += f"; category: {', '.join(categories)}"
    text += ")."
    if isinstance(detail, str) and detail:
        text += " " + detail
    return text


def prompt_block_notice(feedback: dict[str, Any]) -> str:
    return block_notice(
        "the prompt",
        str(feedback.get("blockReason")),
        feedback.get("safetyRatings"),
        feedback.get("blockReasonMessage"),
    )


def candidate_block_notice(candidate: dict[str, Any]) -> str:
    return block_notice(
        "the response",
        str(candidate.get("finishReason")),
        candidate.get("safetyRatings"),
        candidate.get("finishMessage"),
    )


# --- the response ----------------------------------------------------------------------


def first_candidate(candidates: list[Any]) -> dict[str, Any] | None:
    """Return the candidate with index 0 (the index is omitted when it is 0)."""
    for candidate in candidates:
        if isinstance(candidate, dict) and (candidate.get("index") or 0) == 0:
            return candidate
    return None


def candidate_parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the parts of a candidate's content, skipping any that are not objects."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return []
    return [part for part in parts if isinstance(part, dict)]


def tool_arguments(call: dict[str, Any]) -> str:
    args = call.get("args")
    return orjson.dumps(args if isinstance(args, dict) else {}).decode()


def parse_response(body: dict[str, Any], *, provider: str = "gemini") -> ChatResponse:
    """Convert a Gemini response, keeping only the first candidate."""
    response_id = body.get("responseId") or ""
    response = ChatResponse(
        id=response_id,
        model=body.get("modelVersion") or "",
        usage=parse_usage(body.get("usageMetadata")),
        created=int(time.time()),
    )

    candidates = body.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        feedback = body.get("promptFeedback")
        if not isinstance(feedback, dict) or not feedback.get("blockReason"):
            raise MalformedUpstreamResponse(
                "Upstream response has neither candidates nor a promptFeedback.blockReason.",
                provider=provider,
            )
        response.content.append(TextPart(prompt_block_notice(feedback)))
        response.finish_reason = "content_filter"
        return response

    candidate = first_candidate(candidates)
    if candidate is None:
        raise MalformedUpstreamResponse(
            "Upstream response has no candidate with index 0.", provider=provider
        )
    for part in candidate_parts(candidate):
        call = part.get("functionCall")
        if isinstance(call, dict):
            call_id = make_call_id(
                call.get("id"),
                part.get("thoughtSignature"),
                response_id=response_id,
                index=len(response.tool_calls),
            )
            response.tool_calls.append(
                ToolCall(id=call_id, name=call.get("name") or "", arguments=tool_arguments(call))
            )
        elif isinstance(part.get("text"), str) and part["text"]:
            if part.get("thought"):
                response.content.append(ReasoningPart(part["text"]))
            else:
                response.content.append(TextPart(part["text"]))

    raw_finish = candidate.get("finishReason") or "STOP"
    response.finish_reason = map_finish_reason(raw_finish)
    if response.finish_reason == "stop" and response.tool_calls:
        response.finish_reason = "tool_calls"
    elif response.finish_reason == "content_filter":
        separator = "\n\n" if response.text() else ""
        response.content.append(TextPart(separator + candidate_block_notice(candidate)))
    elif response.finish_reason == "error":
        logger.warning(
            "%s: response %s ended with finishReason %s", provider, response_id, raw_finish
        )
    return response
