"""InvokeModel bodies and responses of the Bedrock embedding models: Titan Text and Cohere Embed.

Titan Text Embeddings takes one text per call: ``{"inputText", "dimensions"}`` (V2 only)
returns ``{"embedding", "inputTextTokenCount"}``. Cohere Embed takes up to 96 texts:
``{"texts", "input_type", "embedding_types", "output_dimension"}`` (v4 only) returns
``{"embeddings": {"float": [...]}}``, or a bare list of vectors when no type is asked
for. Bedrock reports the input tokens of both in ``X-Amzn-Bedrock-Input-Token-Count``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from smartflow.core.errors import InvalidRequest
from smartflow.dialects.bedrock.requests import base_model_id
from smartflow.dialects.openai.embeddings import EmbeddingBatch, EmbeddingRequest

__all__ = [
    "COHERE_MAX_TEXTS",
    "COHERE_V4_DIMENSIONS",
    "TITAN_V2_DIMENSIONS",
    "EmbeddingFamily",
    "build_embedding_bodies",
    "embedding_family",
    "parse_embedding_response",
]

EmbeddingFamily = Literal["titan-v1", "titan-v2", "cohere-v3", "cohere-v4"]

TITAN_V2_DIMENSIONS = (256, 512, 1024)
COHERE_V4_DIMENSIONS = (256, 512, 1024, 1536)
COHERE_MAX_TEXTS = 96
_DEFAULT_INPUT_TYPE = "search_document"
_INPUT_TOKENS_HEADER = "x-amzn-bedrock-input-token-count"
_FAMILY_BY_PREFIX: tuple[tuple[str, EmbeddingFamily], ...] = (
    ("amazon.titan-embed-text-v2", "titan-v2"),
    ("amazon.titan-embed-text-v1", "titan-v1"),
    ("amazon.titan-embed-g1-text", "titan-v1"),
    ("cohere.embed-v4", "cohere-v4"),
    ("cohere.embed-", "cohere-v3"),
)


def embedding_family(model_id: str) -> EmbeddingFamily:
    """Return the body format of a Bedrock embedding model, inference profile or model ARN.

    Raises InvalidRequest for a model that is not Titan Text Embeddings or Cohere Embed,
    and for an ARN that does not name its model.
    """
    base = base_model_id(model_id)
    for prefix, family in _FAMILY_BY_PREFIX:
        if base is not None and base.startswith(prefix):
            return family
    # NOTE: Titan Multimodal Embeddings and the Nova embedding models take other bodies,
    # which are not built here.
    raise InvalidRequest(
        f"The Bedrock model {model_id} is not an embedding model the gateway can call. "
        "Route embeddings to an amazon.titan-embed-text or cohere.embed model.",
        param="model",
    )


def _check_dimensions(request: EmbeddingRequest, model_id: str, family: EmbeddingFamily) -> None:
    dimensions = request.dimensions
    if dimensions is None:
        return
    allowed = {"titan-v2": TITAN_V2_DIMENSIONS, "cohere-v4": COHERE_V4_DIMENSIONS}.get(family)
    if allowed is None:
        raise InvalidRequest(
            f"The model {model_id} does not support 'dimensions': its vectors have a fixed "
            "size. Remove 'dimensions' from the request.",
            param="dimensions",
        )
    if dimensions not in allowed:
        raise InvalidRequest(
            f"Invalid value for 'dimensions': {dimensions}. The model {model_id} supports "
            f"{', '.join(str(size) for size in allowed)}.",
            param="dimensions",
        )


def _titan_body(text: str, request: EmbeddingRequest, family: EmbeddingFamily) -> dict[str, Any]:
    body: dict[str, Any] = {"inputText": text}
    if family == "titan-v2" and request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return body


def _cohere_body(texts: list[str], request: EmbeddingRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "texts": texts,
        "input_type": request.input_type or _DEFAULT_INPUT_TYPE,
        "embedding_types": ["float"],
    }
    if request.dimensions is not None:
        body["output_dimension"] = request.dimensions
    return body


def build_embedding_bodies(request: EmbeddingRequest, model_id: str) -> list[dict[str, Any]]:
    """Build the InvokeModel bodies for ``request``: one per text for Titan, one per 96 for
    Cohere. Raises InvalidRequest when the model cannot honour ``dimensions``."""
    family = embedding_family(model_id)
    _check_dimensions(request, model_id, family)
    if family in ("titan-v1", "titan-v2"):
        return [_titan_body(text, request, family) for text in request.texts]
    return [
        _cohere_body(request.texts[start : start + COHERE_MAX_TEXTS], request)
        for start in range(0, len(request.texts), COHERE_MAX_TEXTS)
    ]


def _input_tokens(body: dict[str, Any], headers: Mapping[str, str]) -> int | None:
    for name, value in headers.items():
        if name.lower() == _INPUT_TOKENS_HEADER and value.isdigit():
            return int(value)
    count = body.get("inputTextTokenCount")
    return count if isinstance(count, int) else None


def parse_embedding_response(
    body: dict[str, Any], headers: Mapping[str, str], model_id: str
) -> EmbeddingBatch:
    """Read the vectors and input tokens of an InvokeModel embeddings response.

    Raises KeyError or TypeError when the body lacks the vectors.
    """
    tokens = _input_tokens(body, headers)
    if embedding_family(model_id) in ("titan-v1", "titan-v2"):
        return EmbeddingBatch([body["embedding"]], tokens)
    embeddings = body["embeddings"]
    vectors = embeddings["float"] if isinstance(embeddings, dict) else embeddings
    return EmbeddingBatch(list(vectors), tokens)
