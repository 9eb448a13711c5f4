"""Cohere Embed v2 (``POST /v2/embed``) bodies and responses.

A body is ``{"model", "texts" (at most 96), "input_type", "embedding_types",
"output_dimension"}`` and its response ``{"embeddings": {"float": [...]}, "meta":
{"billed_units": {"input_tokens"}}}``.
"""

from __future__ import annotations

import re
from typing import Any

from smartflow.core.errors import InvalidRequest
from smartflow.dialects.openai.embeddings import EmbeddingBatch, EmbeddingRequest

__all__ = ["MAX_TEXTS", "build_embedding_bodies", "parse_embedding_response"]

MAX_TEXTS = 96
_DEFAULT_INPUT_TYPE = "search_document"
# Embed v2 and v3 models have a fixed output size; output_dimension needs embed-v4 or later.
_FIXED_SIZE = re.compile(r"^embed-(english|multilingual)(-light)?-v[23]\.")


def build_embedding_bodies(request: EmbeddingRequest, model: str) -> list[dict[str, Any]]:
    """Build one embed body per 96 texts.

    Raises InvalidRequest when ``dimensions`` is set for a model of fixed output size.
    Other models get ``output_dimension`` unchecked, and Cohere rejects a size it lacks.
    """
    if request.dimensions is not None and _FIXED_SIZE.match(model):
        raise InvalidRequest(
            f"The model {model} does not support 'dimensions': its vectors have a fixed size. "
            "Remove 'dimensions', or route to embed-v4.0, which supports 256, 512, 1024 "
            "and 1536.",
            param="dimensions",
        )
    bodies = []
    for start in range(0, len(request.texts), MAX_TEXTS):
        body: dict[str, Any] = {
            "model": model,
            "texts": request.texts[start : start + MAX_TEXTS],
            "input_type": request.input_type or _DEFAULT_INPUT_TYPE,
            "embedding_types": ["float"],
        }
        if request.dimensions is not None:
            body["output_dimension"] = request.dimensions
        bodies.append(body)
    return bodies


def parse_embedding_response(body: dict[str, Any]) -> EmbeddingBatch:
    """Read the float vectors and billed input tokens of an embed response.

    Raises KeyError or TypeError when the body lacks the vectors.
    """
    embeddings = body["embeddings"]
    vectors = embeddings["float"] if isinstance(embeddings, dict) else embeddings
    meta = body.get("meta")
    billed = meta.get("billed_units") if isinstance(meta, dict) else None
    tokens = billed.get("input_tokens") if isinstance(billed, dict) else None
    # The API schema (cohere SDK 7.3) types billed_units counts as doubles.
    if isinstance(tokens, int | float) and not isinstance(tokens, bool):
        return EmbeddingBatch(list(vectors), int(tokens))
    return EmbeddingBatch(list(vectors))
