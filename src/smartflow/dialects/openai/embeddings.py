"""OpenAI embeddings bodies: request validation, response rendering and the shared types.

``EmbeddingRequest`` and ``EmbeddingBatch`` are also what the Bedrock, Gemini and Cohere
adapters build from and parse into, because the OpenAI body is the only embeddings
dialect the gateway serves.

Besides OpenAI's fields the gateway reads ``input_type`` (``search_document``,
``search_query``, ``classification`` or ``clustering``), which selects Cohere's input
type and Gemini's ``taskType``. OpenAI and Azure OpenAI deployments receive the body as
it arrived, so they get that field too.
"""

from __future__ import annotations

import base64
import math
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from smartflow.core.errors import InvalidRequest
from smartflow.dialects._validate import excerpt, expect_int, expect_str, type_name

__all__ = [
    "INPUT_TYPES",
    "MAX_INPUTS",
    "EmbeddingBatch",
    "EmbeddingRequest",
    "EncodingFormat",
    "encode_base64",
    "estimate_tokens",
    "parse_embedding_request",
    "render_embedding_response",
]

# OpenAI's limit on the number of inputs in one request.
MAX_INPUTS = 2048
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")

EncodingFormat = Literal["float", "base64"]


@dataclass(slots=True, frozen=True)
class EmbeddingRequest:
    """An embeddings request after validation.

    ``input`` is either text (``texts``) or token arrays (``token_arrays``), never both.
    """

    model: str
    texts: list[str] = field(default_factory=list)
    token_arrays: list[list[int]] = field(default_factory=list)
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None
    user: str | None = None
    input_type: str | None = None

    @property
    def input_count(self) -> int:
        return len(self.texts) or len(self.token_arrays)


@dataclass(slots=True)
class EmbeddingBatch:
    """The vectors of one upstream call, in input order, and the input tokens it reports."""

    vectors: list[list[float]]
    input_tokens: int | None = None


# --- the request ----------------------------------------------------------------------


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_array(value: list[Any], path: str) -> list[int]:
    if not value:
        raise _invalid(f"Invalid '{path}': a token array must not be empty.", "input")
    for index, token in enumerate(value):
        if not _is_token(token) or token < 0:
            raise _invalid(
                f"Invalid '{path}[{index}]': a token must be a non-negative integer, got "
                f"{excerpt(token)}.",
                "input",
            )
    return value


def _text(value: str, path: str) -> str:
    if not value:
        raise _invalid(f"Invalid '{path}': the input must not be an empty string.", "input")
    return value


def _parse_list(items: list[Any]) -> tuple[list[str], list[list[int]]]:
    if not items:
        raise _invalid("Invalid 'input': the array must not be empty.", "input")
    if len(items) > MAX_INPUTS:
        raise _invalid(
            f"Invalid 'input': {len(items)} inputs exceed the maximum of {MAX_INPUTS} per "
            "request. Split the input over several requests.",
            "input",
        )
    first = items[0]
    if _is_token(first):
        return [], [_token_array(items, "input")]
    expected = "a string" if isinstance(first, str) else "a token array"
    for index, item in enumerate(items):
        path = f"input[{index}]"
        if isinstance(item, str) and isinstance(first, str):
            continue
        if isinstance(item, list) and isinstance(first, list):
            continue
        raise _invalid(
            f"Invalid type for '{path}': expected {expected} like 'input[0]', got "
            f"{type_name(item)}. Send all strings or all token arrays.",
            "input",
        )
    if isinstance(first, str):
        return [_text(item, f"input[{i}]") for i, item in enumerate(items)], []
    return [], [_token_array(item, f"input[{i}]") for i, item in enumerate(items)]


def _parse_input(value: Any) -> tuple[list[str], list[list[int]]]:
    if value is None:
        raise _invalid("Missing required parameter: 'input'.", "input")
    if isinstance(value, str):
        return [_text(value, "input")], []
    if isinstance(value, list):
        return _parse_list(value)
    raise _invalid(
        "Invalid type for 'input': expected a string, an array of strings, a token array or "
        f"an array of token arrays, got {type_name(value)}.",
        "input",
    )


def _parse_model(value: Any) -> str:
    if value is None:
        raise _invalid("Missing required parameter: 'model'.", "model")
    model = expect_str(value, "model")
    if not model:
        raise _invalid("Invalid 'model': the model name must not be empty.", "model")
    return model


def _parse_encoding(value: Any) -> EncodingFormat:
    if value is None or value == "float":
        return "float"
    if value == "base64":
        return "base64"
    raise _invalid(
        f"Invalid value for 'encoding_format': {excerpt(value)}. Use 'float' or 'base64'.",
        "encoding_format",
    )


def _parse_input_type(value: Any) -> str | None:
    if value is None:
        return None
    if value not in INPUT_TYPES:
        raise _invalid(
            f"Invalid value for 'input_type': {excerpt(value)}. Use one of "
            f"{', '.join(INPUT_TYPES)}.",
            "input_type",
        )
    return str(value)


def parse_embedding_request(body: dict[str, Any]) -> EmbeddingRequest:
    """Validate an OpenAI embeddings body.

    Raises InvalidRequest naming the first invalid field in ``param``. Fields the
    gateway does not know are not checked here.
    """
    model = _parse_model(body.get("model"))
    texts, token_arrays = _parse_input(body.get("input"))
    dimensions = body.get("dimensions")
    if dimensions is not None:
        dimensions = expect_int(dimensions, "dimensions", minimum=1)
    user = body.get("user")
    if user is not None:
        user = expect_str(user, "user")
    return EmbeddingRequest(
        model=model,
        texts=texts,
        token_arrays=token_arrays,
        encoding_format=_parse_encoding(body.get("encoding_format")),
        dimensions=dimensions,
        user=user,
        input_type=_parse_input_type(body.get("input_type")),
    )


# --- the response ---------------------------------------------------------------------


def encode_base64(vector: Sequence[float]) -> str:
    """Encode a vector as OpenAI does for ``encoding_format: base64``: little-endian float32."""
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def estimate_tokens(texts: Sequence[str]) -> int:
    """Estimate input tokens at four characters each, at least one per input."""
    return sum(max(1, math.ceil(len(text) / 4)) for text in texts)


def render_embedding_response(
    vectors: Sequence[Sequence[float]],
    *,
    model: str,
    encoding_format: EncodingFormat,
    prompt_tokens: int,
) -> bytes:
    """Render an OpenAI ``list`` of embeddings with its usage."""
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": encode_base64(vector) if encoding_format == "base64" else vector,
        }
        for index, vector in enumerate(vectors)
    ]
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(body)
