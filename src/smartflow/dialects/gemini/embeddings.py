"""Gemini API ``batchEmbedContents`` bodies and responses.

A body is ``{"requests": [{"model": "models/{name}", "content": {"parts": [{"text"}]},
"outputDimensionality", "taskType"}]}`` and its response ``{"embeddings": [{"values"}]}``,
with ``usageMetadata`` when the API reports tokens. ``embedContent`` responses, which
hold one ``embedding``, are read as well.
"""

from __future__ import annotations

from typing import Any

from smartflow.dialects.openai.embeddings import EmbeddingBatch, EmbeddingRequest

__all__ = ["MAX_BATCH_REQUESTS", "TASK_TYPES", "build_embedding_bodies", "parse_embedding_response"]

# NOTE: Google does not document this limit. The API rejects larger batches with "at
# most 100 requests can be in one batch", as client libraries report.
MAX_BATCH_REQUESTS = 100
# The gateway's ``input_type`` values (Cohere's names) as Gemini task types.
TASK_TYPES = {
    "search_document": "RETRIEVAL_DOCUMENT",
    "search_query": "RETRIEVAL_QUERY",
    "classification": "CLASSIFICATION",
    "clustering": "CLUSTERING",
}


def _embed_request(text: str, name: str, request: EmbeddingRequest) -> dict[str, Any]:
    item: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
    if request.dimensions is not None:
        item["outputDimensionality"] = request.dimensions
    if request.input_type is not None:
        item["taskType"] = TASK_TYPES[request.input_type]
    return item


def build_embedding_bodies(request: EmbeddingRequest, model: str) -> list[dict[str, Any]]:
    """Build one ``batchEmbedContents`` body per 100 texts.

    ``dimensions`` becomes ``outputDimensionality``; the API checks its range.
    """
    name = "models/" + model.removeprefix("models/")
    items = [_embed_request(text, name, request) for text in request.texts]
    return [
        {"requests": items[start : start + MAX_BATCH_REQUESTS]}
        for start in range(0, len(items), MAX_BATCH_REQUESTS)
    ]


def parse_embedding_response(body: dict[str, Any]) -> EmbeddingBatch:
    """Read the vectors and, when reported, the prompt tokens of an embeddings response.

    Raises KeyError or TypeError when the body lacks the vectors.
    """
    if "embeddings" in body:
        vectors = [embedding["values"] for embedding in body["embeddings"]]
    else:
        vectors = [body["embedding"]["values"]]
    usage = body.get("usageMetadata")
    tokens = usage.get("promptTokenCount") if isinstance(usage, dict) else None
    return EmbeddingBatch(vectors, tokens if isinstance(tokens, int) else None)
