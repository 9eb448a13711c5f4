"""Embeddings for the OpenAI-format simulators: validation and deterministic vectors.

A vector is derived from a hash of the input text, so the same text always gets the same
embedding and different texts get different ones, as a test or benchmark needs.
"""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from dataclasses import dataclass
from typing import Any

from smartflow.sim.openai_fields import (
    invalid_type,
    invalid_value,
    json_type_name,
    missing,
    openai_error,
)
from smartflow.sim.openai_models import OpenAIModel
from smartflow.sim.script import count_tokens

__all__ = ["EmbeddingRequest", "embedding_data", "embedding_vector", "parse_embedding_request"]

_MAX_INPUTS = 2048


@dataclass(slots=True)
class EmbeddingRequest:
    """A validated embeddings request."""

    texts: list[str]
    """Inputs to embed. A token array is embedded as its numbers joined by spaces."""
    tokens: int
    dimensions: int | None
    encoding: str


def _is_token_array(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _parse_inputs(value: Any) -> tuple[list[str], int]:
    if value is None:
        raise missing("input")
    items: list[Any] = value if isinstance(value, list) else [value]
    if _is_token_array(value):
        items = [value]
    if not items or len(items) > _MAX_INPUTS:
        message = f"'$.input' is invalid. Expected between 1 and {_MAX_INPUTS} inputs."
        raise openai_error(400, message, param="input")
    texts: list[str] = []
    tokens = 0
    for item in items:
        if isinstance(item, str) and item:
            texts.append(item)
            tokens += max(count_tokens(item), 1)
        elif _is_token_array(item):
            texts.append(" ".join(str(v) for v in item))
            tokens += len(item)
        else:
            kind = "an empty string" if item == "" else json_type_name(item)
            message = (
                f"'$.input' is invalid: got {kind} where a non-empty string or a token "
                "array is expected."
            )
            raise openai_error(400, message, param="input")
    return texts, tokens


def _parse_dimensions(body: dict[str, Any], model: OpenAIModel) -> int | None:
    dimensions = body.get("dimensions")
    if dimensions is None:
        return None
    if not model.supports_dimensions:
        message = "This model does not support specifying dimensions."
        raise openai_error(400, message, param="dimensions")
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise invalid_type("dimensions", "an integer", dimensions)
    if not 1 <= dimensions <= model.embedding_dimensions:
        message = (
            f"Invalid 'dimensions': expected a value between 1 and "
            f"{model.embedding_dimensions}, but got {dimensions} instead."
        )
        raise openai_error(400, message, param="dimensions", code="invalid_value")
    return dimensions


def parse_embedding_request(body: dict[str, Any], model: OpenAIModel) -> EmbeddingRequest:
    """Validate an embeddings request; raise ``ApiError`` for the first problem."""
    texts, tokens = _parse_inputs(body.get("input"))
    dimensions = _parse_dimensions(body, model)
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise invalid_value("encoding_format", encoding, ("float", "base64"))
    return EmbeddingRequest(texts, tokens, dimensions, encoding)


def embedding_vector(text: str, native: int, dimensions: int | None) -> list[float]:
    """Return a unit vector derived from a hash of ``text``.

    The vector at ``dimensions`` is the native one cut short and normalised again, so a
    shortened embedding is proportional to the prefix of the full one, as with OpenAI's
    ``text-embedding-3`` models.
    """
    digest = hashlib.shake_256(text.encode()).digest(2 * native)
    raw = array("h", digest)
    values = [component / 32768.0 for component in raw[: dimensions or native]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def embedding_data(request: EmbeddingRequest, model: OpenAIModel) -> list[dict[str, Any]]:
    """Return the ``data`` list of the response: one embedding object per input."""
    data = []
    for index, text in enumerate(request.texts):
        vector = embedding_vector(text, model.embedding_dimensions, request.dimensions)
        embedding = _encode(vector, request.encoding)
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return data
