"""InvokeModel for the Titan Text Embeddings and Cohere Embed v3 bodies.

Vectors are deterministic: each text seeds its own generator, so the same text always
gets the same vector and different texts get different ones.

Titan Text Embeddings V2: ``{"inputText", "dimensions": 1024|512|256, "normalize",
"embeddingTypes": ["float", "binary"]}`` returns ``{"embedding", "embeddingsByType",
"inputTextTokenCount"}``; V1 takes only ``inputText``. Cohere Embed v3: ``{"texts"
(at most 96, each at most 2048 characters), "input_type", "truncate", "embedding_types"}``
returns ``{"embeddings", "id", "response_type", "texts"}``.
"""

from __future__ import annotations

import hashlib
import math
import random
import uuid
from typing import Any

from smartflow.sim.bedrock_models import ModelSpec
from smartflow.sim.bedrock_validation import malformed_input, type_name
from smartflow.sim.script import count_tokens

__all__ = ["cohere_embeddings", "embed_vector", "embedding_input_tokens", "titan_embeddings"]

_TITAN_V2_TYPES = {
    "inputText": "String",
    "dimensions": "Integer",
    "normalize": "Boolean",
    "embeddingTypes": "JSONArray",
}
_TITAN_MAX_CHARACTERS = 50000
_COHERE_TYPES = {
    "texts": "JSONArray",
    "images": "JSONArray",
    "input_type": "String",
    "truncate": "String",
    "embedding_types": "JSONArray",
}
_COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")
_COHERE_EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary")
_COHERE_MAX_TEXTS = 96
_COHERE_MAX_CHARACTERS = 2048


def embed_vector(text: str, dimensions: int, *, normalize: bool = True) -> list[float]:
    """Return a deterministic pseudo-random vector for ``text``, unit length if ``normalize``."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    generator = random.Random(seed)
    vector = [generator.gauss(0.0, 1.0) for _ in range(dimensions)]
    if normalize:
        norm = math.sqrt(sum(value * value for value in vector)) or 1.0
        vector = [value / norm for value in vector]
    return [round(value, 6) for value in vector]


def embedding_input_tokens(texts: list[str]) -> int:
    return sum(max(count_tokens(text), 1) for text in texts)


def _check_keys(body: Any, types: dict[str, str], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise malformed_input(f"#: expected type: JSONObject, found: {type_name(body)}")
    for key in body:
        if key not in types:
            raise malformed_input(f"#: extraneous key [{key}] is not permitted")
    for key in required:
        if key not in body:
            raise malformed_input(f"#: required key [{key}] not found")
    for key, value in body.items():
        found = type_name(value)
        if found != types[key]:
            raise malformed_input(f"#/{key}: expected type: {types[key]}, found: {found}")
    return body


def titan_embeddings(body: Any, spec: ModelSpec) -> tuple[dict[str, Any], int]:
    """Validate a Titan embeddings body and return the response body and its input tokens."""
    v2 = spec.model_id != "amazon.titan-embed-text-v1"
    types = _TITAN_V2_TYPES if v2 else {"inputText": "String"}
    request = _check_keys(body, types, ("inputText",))
    text = request["inputText"]
    if not text:
        raise malformed_input("#/inputText: expected minLength: 1, actual: 0")
    if len(text) > _TITAN_MAX_CHARACTERS:
        raise malformed_input(
            f"#/inputText: expected maxLength: {_TITAN_MAX_CHARACTERS}, actual: {len(text)}"
        )
    dimensions = request.get("dimensions", spec.embedding_dimensions[0])
    if dimensions not in spec.embedding_dimensions:
        raise malformed_input(f"#/dimensions: {dimensions} is not a valid enum value")
    kinds = request.get("embeddingTypes", ["float"])
    for index, kind in enumerate(kinds):
        if kind not in ("float", "binary"):
            raise malformed_input(f"#/embeddingTypes/{index}: {kind} is not a valid enum value")
    vector = embed_vector(text, dimensions, normalize=request.get("normalize", True))
    tokens = embedding_input_tokens([text])
    response: dict[str, Any] = {"embedding": vector, "inputTextTokenCount": tokens}
    if v2:
        by_type: dict[str, Any] = {}
        if "binary" in kinds:
            by_type["binary"] = [1 if value > 0 else 0 for value in vector]
        if "float" in kinds or not by_type:
            by_type["float"] = vector
        response["embeddingsByType"] = by_type
    return response, tokens


def _quantize(vector: list[float], kind: str) -> list[int] | list[float]:
    if kind == "float":
        return vector
    if kind == "int8":
        return [max(-128, min(127, round(value * 127 * 8))) for value in vector]
    if kind == "uint8":
        return [max(0, min(255, round(value * 127 * 8) + 128)) for value in vector]
    bits = [1 if value > 0 else 0 for value in vector]
    packed = [int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8)]
    if kind == "binary":
        return [value - 128 for value in packed]
    return packed


def cohere_embeddings(body: Any, spec: ModelSpec) -> tuple[dict[str, Any], int]:
    """Validate a Cohere Embed v3 body and return the response body and its input tokens."""
    request = _check_keys(body, _COHERE_TYPES, ("input_type",))
    texts = request.get("texts")
    images = request.get("images")
    if (texts is None) == (images is None):
        raise malformed_input("#: exactly one of the keys [texts, images] must be present")
    input_type = request["input_type"]
    if input_type not in _COHERE_INPUT_TYPES:
        raise malformed_input(f"#/input_type: {input_type} is not a valid enum value")
    if request.get("truncate", "NONE") not in ("NONE", "START", "END"):
        raise malformed_input(f"#/truncate: {request['truncate']} is not a valid enum value")
    inputs = _cohere_inputs(texts, images)

    kinds = request.get("embedding_types")
    for index, kind in enumerate(kinds or []):
        if kind not in _COHERE_EMBEDDING_TYPES:
            raise malformed_input(f"#/embedding_types/{index}: {kind} is not a valid enum value")
    dimensions = spec.embedding_dimensions[0]
    vectors = [embed_vector(f"{input_type}:{item}", dimensions) for item in inputs]

    response: dict[str, Any] = {"id": str(uuid.uuid4())}
    if kinds:
        response["embeddings"] = {
            kind: [_quantize(vector, kind) for vector in vectors] for kind in kinds
        }
        response["response_type"] = "embeddings_by_type"
    else:
        response["embeddings"] = vectors
        response["response_type"] = "embeddings_floats"
    if texts is not None:
        response["texts"] = texts
    return response, embedding_input_tokens(inputs)


def _cohere_inputs(texts: list[Any] | None, images: list[Any] | None) -> list[str]:
    if images is not None:
        if len(images) != 1:
            raise malformed_input(f"#/images: expected maximum item count: 1, found: {len(images)}")
        image = images[0]
        if not isinstance(image, str) or not image.startswith(
            ("data:image/png;", "data:image/jpeg;")
        ):
            raise malformed_input(
                "#/images/0: must be a data URI of an image/png or image/jpeg image"
            )
        return [image]
    assert texts is not None
    if len(texts) > _COHERE_MAX_TEXTS:
        raise malformed_input(
            f"#/texts: expected maximum item count: {_COHERE_MAX_TEXTS}, found: {len(texts)}"
        )
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise malformed_input(
                f"#/texts/{index}: expected type: String, found: {type_name(text)}"
            )
        if len(text) > _COHERE_MAX_CHARACTERS:
            raise malformed_input(
                f"#/texts/{index}: expected maxLength: {_COHERE_MAX_CHARACTERS}, "
                f"actual: {len(text)}"
            )
    return [str(text) for text in texts]
