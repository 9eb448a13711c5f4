"""The models the Bedrock simulator serves, with what each one accepts.

Capabilities follow the "Supported models and model features" table of the Converse
API (Bedrock user guide) and the per-model inference-parameter pages. Model ids in a
request may be a base id, a cross-region inference-profile id (``us.``, ``eu.``, ...)
or a foundation-model / inference-profile ARN; ``resolve_model_id`` reduces each to
the base id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

__all__ = [
    "DEFAULT_MODELS",
    "END_OF_LIFE_MODELS",
    "INFERENCE_PROFILE_PREFIXES",
    "ModelSpec",
    "anthropic_model_name",
    "resolve_model_id",
    "spec_for",
]

Family = Literal[
    "anthropic",
    "meta",
    "mistral",
    "nova",
    "titan-text",
    "cohere-command",
    "titan-embed",
    "cohere-embed",
]

INFERENCE_PROFILE_PREFIXES = ("us", "eu", "apac", "global", "us-gov", "jp", "au", "ca")
TITAN_STOP_SEQUENCES = ("|", "User:")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One served model and the request features it accepts."""

    model_id: str
    family: Family
    max_output_tokens: int = 4096
    vision: bool = False
    tools: bool = False
    streaming_tools: bool = False
    forced_tool_choice: bool = False
    """True when ``toolChoice`` may be ``any`` or ``tool``, not only ``auto``."""
    system: bool = True
    thinking: bool = False
    profile_only: bool = False
    """True for a model callable only through an inference profile, not on demand."""
    max_stop_sequences: int | None = None
    allowed_stop_sequences: tuple[str, ...] | None = None
    embedding_dimensions: tuple[int, ...] = ()
    """Accepted output sizes of an embedding model, the default first."""

    @property
    def is_embedding(self) -> bool:
        return self.family in ("titan-embed", "cohere-embed")


def _claude(
    model_id: str,
    max_tokens: int,
    *,
    vision: bool = True,
    thinking: bool = False,
    profile_only: bool = False,
) -> ModelSpec:
    # Claude's Messages API on Bedrock documents a limit of 8191 stop sequences.
    return ModelSpec(
        model_id,
        "anthropic",
        max_output_tokens=max_tokens,
        vision=vision,
        tools=True,
        streaming_tools=True,
        forced_tool_choice=True,
        max_stop_sequences=8191,
        thinking=thinking,
        profile_only=profile_only,
    )


_CATALOG: tuple[ModelSpec, ...] = (
    _claude("anthropic.claude-3-haiku-20240307-v1:0", 4096),
    _claude("anthropic.claude-3-5-sonnet-20240620-v1:0", 8192),
    _claude("anthropic.claude-3-5-sonnet-20241022-v2:0", 8192),
    _claude("anthropic.claude-3-5-haiku-20241022-v1:0", 8192, vision=False),
    _claude("anthropic.claude-3-7-sonnet-20250219-v1:0", 64000, thinking=True, profile_only=True),
    _claude("anthropic.claude-sonnet-4-20250514-v1:0", 64000, thinking=True, profile_only=True),
    _claude("anthropic.claude-opus-4-1-20250805-v1:0", 32000, thinking=True, profile_only=True),
    _claude("anthropic.claude-opus-4-20250514-v1:0", 32000, thinking=True, profile_only=True),
    _claude("anthropic.claude-sonnet-4-5-20250929-v1:0", 64000, thinking=True, profile_only=True),
    _claude("anthropic.claude-opus-4-5-20251101-v1:0", 64000, thinking=True, profile_only=True),
    _claude("anthropic.claude-haiku-4-5-20251001-v1:0", 64000, thinking=True, profile_only=True),
    ModelSpec("meta.llama3-8b-instruct-v1:0", "meta", max_output_tokens=2048),
    ModelSpec("meta.llama3-70b-instruct-v1:0", "meta", max_output_tokens=2048),
    ModelSpec("meta.llama3-1-8b-instruct-v1:0", "meta", max_output_tokens=2048, tools=True),
    ModelSpec("meta.llama3-1-70b-instruct-v1:0", "meta", max_output_tokens=2048, tools=True),
    ModelSpec(
        "meta.llama3-2-11b-instruct-v1:0",
        "meta",
        max_output_tokens=2048,
        vision=True,
        profile_only=True,
    ),
    ModelSpec(
        "meta.llama3-3-70b-instruct-v1:0",
        "meta",
        max_output_tokens=2048,
        tools=True,
        profile_only=True,
    ),
    ModelSpec(
        "mistral.mistral-7b-instruct-v0:2",
        "mistral",
        max_output_tokens=8192,
        system=False,
        max_stop_sequences=10,
    ),
    ModelSpec(
        "mistral.mixtral-8x7b-instruct-v0:1",
        "mistral",
        max_output_tokens=4096,
        system=False,
        max_stop_sequences=10,
    ),
    ModelSpec(
        "mistral.mistral-large-2402-v1:0",
        "mistral",
        max_output_tokens=8192,
        tools=True,
        max_stop_sequences=10,
    ),
    ModelSpec(
        "mistral.mistral-large-2407-v1:0",
        "mistral",
        max_output_tokens=8192,
        tools=True,
        max_stop_sequences=10,
    ),
    ModelSpec(
        "mistral.mistral-small-2402-v1:0",
        "mistral",
        max_output_tokens=8192,
        tools=True,
        max_stop_sequences=10,
    ),
    ModelSpec(
        "amazon.nova-micro-v1:0",
        "nova",
        max_output_tokens=10000,
        tools=True,
        streaming_tools=True,
        forced_tool_choice=True,
    ),
    ModelSpec(
        "amazon.nova-lite-v1:0",
        "nova",
        max_output_tokens=10000,
        vision=True,
        tools=True,
        streaming_tools=True,
        forced_tool_choice=True,
    ),
    ModelSpec(
        "amazon.nova-pro-v1:0",
        "nova",
        max_output_tokens=10000,
        vision=True,
        tools=True,
        streaming_tools=True,
        forced_tool_choice=True,
    ),
    ModelSpec(
        "amazon.nova-premier-v1:0",
        "nova",
        max_output_tokens=32000,
        vision=True,
        tools=True,
        streaming_tools=True,
        forced_tool_choice=True,
        profile_only=True,
    ),
    ModelSpec(
        "amazon.titan-text-express-v1",
        "titan-text",
        max_output_tokens=8192,
        system=False,
        allowed_stop_sequences=TITAN_STOP_SEQUENCES,
    ),
    ModelSpec(
        "amazon.titan-text-lite-v1",
        "titan-text",
        max_output_tokens=4096,
        system=False,
        allowed_stop_sequences=TITAN_STOP_SEQUENCES,
    ),
    ModelSpec(
        "amazon.titan-text-premier-v1:0",
        "titan-text",
        max_output_tokens=3072,
        system=False,
        allowed_stop_sequences=TITAN_STOP_SEQUENCES,
    ),
    ModelSpec("cohere.command-r-v1:0", "cohere-command", max_output_tokens=4000, tools=True),
    ModelSpec("cohere.command-r-plus-v1:0", "cohere-command", max_output_tokens=4000, tools=True),
    ModelSpec("amazon.titan-embed-text-v2:0", "titan-embed", embedding_dimensions=(1024, 512, 256)),
    ModelSpec("amazon.titan-embed-text-v1", "titan-embed", embedding_dimensions=(1536,)),
    ModelSpec("cohere.embed-english-v3", "cohere-embed", embedding_dimensions=(1024,)),
    ModelSpec("cohere.embed-multilingual-v3", "cohere-embed", embedding_dimensions=(1024,)),
)

DEFAULT_MODELS: dict[str, ModelSpec] = {spec.model_id: spec for spec in _CATALOG}

# Retired models, for which Bedrock returns ResourceNotFoundException.
# NOTE: the list follows the Bedrock model lifecycle page as of 2025. Extend it when a
# served model reaches its end of life.
END_OF_LIFE_MODELS = frozenset(
    {
        "anthropic.claude-v1",
        "anthropic.claude-instant-v1",
        "anthropic.claude-v2",
        "anthropic.claude-v2:1",
    }
)

_FAMILY_BY_PREFIX: tuple[tuple[str, Family], ...] = (
    ("anthropic.", "anthropic"),
    ("meta.", "meta"),
    ("mistral.", "mistral"),
    ("amazon.nova-", "nova"),
    ("amazon.titan-embed-", "titan-embed"),
    ("amazon.titan-text-", "titan-text"),
    ("cohere.embed-", "cohere-embed"),
    ("cohere.command-", "cohere-command"),
)


def spec_for(model_id: str) -> ModelSpec:
    """Return the catalogue entry for ``model_id``, or a family default for a new id.

    Raises ``ValueError`` when the id matches no known model family.
    """
    known = DEFAULT_MODELS.get(model_id)
    if known is not None:
        return known
    for prefix, family in _FAMILY_BY_PREFIX:
        if model_id.startswith(prefix):
            template = next(spec for spec in _CATALOG if spec.family == family)
            return replace(template, model_id=model_id, profile_only=False)
    raise ValueError(f"unknown Bedrock model family for model id {model_id!r}")


_ARN = re.compile(
    r"^arn:aws(?:-[a-z-]+)?:bedrock:[a-z0-9-]*:\d*:(?:foundation-model|inference-profile)/(.+)$"
)


def resolve_model_id(raw_id: str) -> tuple[str, bool]:
    """Reduce a request's model id to a base model id.

    Returns the base id and whether the request went through an inference profile.
    """
    model_id = raw_id
    via_profile = ":inference-profile/" in raw_id
    match = _ARN.match(raw_id)
    if match:
        model_id = match.group(1)
    head, _, rest = model_id.partition(".")
    if rest and head in INFERENCE_PROFILE_PREFIXES:
        return rest, True
    return model_id, via_profile


_VERSION_SUFFIX = re.compile(r"-v\d+(?::\d+)?$")


def anthropic_model_name(model_id: str) -> str:
    """Return Anthropic's own model name, as Bedrock puts it in Messages responses.

    ``anthropic.claude-3-haiku-20240307-v1:0`` becomes ``claude-3-haiku-20240307``.
    """
    name = model_id.removeprefix("anthropic.")
    return _VERSION_SUFFIX.sub("", name)
