"""Model catalogue of the OpenAI-format simulators, with each model's restrictions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = ["DEFAULT_OPENAI_MODELS", "OpenAIModel", "build_catalogue"]


@dataclass(frozen=True, slots=True)
class OpenAIModel:
    """One model the simulator serves and the request rules the real API applies to it.

    A model with ``reasoning_efforts`` is a reasoning model: it rejects the sampling
    parameters, ``logprobs`` and ``max_tokens``, and spends reasoning tokens that count
    inside ``completion_tokens``.
    """

    id: str
    snapshot: str = ""
    """Model name that responses carry, so a request by alias gets the dated snapshot back."""
    kind: str = "chat"
    """``chat`` or ``embedding``."""
    created: int = 1_700_000_000
    owned_by: str = "system"
    reasoning_efforts: tuple[str, ...] = ()
    default_effort: str | None = None
    vision: bool = True
    supports_stop: bool = True
    embedding_dimensions: int = 0
    supports_dimensions: bool = False
    """Whether an embedding model accepts the ``dimensions`` parameter."""

    @property
    def is_reasoning(self) -> bool:
        return bool(self.reasoning_efforts)

    @property
    def response_name(self) -> str:
        return self.snapshot or self.id


_GPT5_EFFORTS = ("minimal", "low", "medium", "high")
_O_SERIES_EFFORTS = ("low", "medium", "high")


def _chat(alias: OpenAIModel) -> list[OpenAIModel]:
    """Return the alias entry and the dated snapshot entry of one chat model."""
    return [alias, replace(alias, id=alias.snapshot)]


DEFAULT_OPENAI_MODELS: tuple[OpenAIModel, ...] = (
    *_chat(OpenAIModel("gpt-4o", "gpt-4o-2024-08-06", created=1_715_367_049)),
    *_chat(OpenAIModel("gpt-4o-mini", "gpt-4o-mini-2024-07-18", created=1_721_172_741)),
    *_chat(OpenAIModel("gpt-4.1", "gpt-4.1-2025-04-14", created=1_744_316_542)),
    *_chat(OpenAIModel("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14", created=1_744_318_173)),
    *_chat(OpenAIModel("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14", created=1_744_321_707)),
    *_chat(OpenAIModel("gpt-3.5-turbo", "gpt-3.5-turbo-0125", created=1_706_048_358, vision=False)),
    *_chat(
        OpenAIModel(
            "o3-mini",
            "o3-mini-2025-01-31",
            created=1_737_146_383,
            reasoning_efforts=_O_SERIES_EFFORTS,
            default_effort="medium",
            vision=False,
        )
    ),
    *_chat(
        OpenAIModel(
            "o3",
            "o3-2025-04-16",
            created=1_744_225_308,
            reasoning_efforts=_O_SERIES_EFFORTS,
            default_effort="medium",
            supports_stop=False,
        )
    ),
    *_chat(
        OpenAIModel(
            "o4-mini",
            "o4-mini-2025-04-16",
            created=1_744_225_351,
            reasoning_efforts=_O_SERIES_EFFORTS,
            default_effort="medium",
            supports_stop=False,
        )
    ),
    *_chat(
        OpenAIModel(
            "gpt-5",
            "gpt-5-2025-08-07",
            created=1_754_425_777,
            reasoning_efforts=_GPT5_EFFORTS,
            default_effort="medium",
        )
    ),
    *_chat(
        OpenAIModel(
            "gpt-5-mini",
            "gpt-5-mini-2025-08-07",
            created=1_754_425_928,
            reasoning_efforts=_GPT5_EFFORTS,
            default_effort="medium",
        )
    ),
    *_chat(
        OpenAIModel(
            "gpt-5-nano",
            "gpt-5-nano-2025-08-07",
            created=1_754_426_384,
            reasoning_efforts=_GPT5_EFFORTS,
            default_effort="medium",
        )
    ),
    # The non-reasoning GPT-5 snapshot used in ChatGPT. It has no dated snapshot id.
    OpenAIModel("gpt-5-chat-latest", created=1_754_425_777),
    OpenAIModel(
        id="text-embedding-3-small",
        kind="embedding",
        created=1_705_948_997,
        embedding_dimensions=1536,
        supports_dimensions=True,
    ),
    OpenAIModel(
        id="text-embedding-3-large",
        kind="embedding",
        created=1_705_953_180,
        embedding_dimensions=3072,
        supports_dimensions=True,
    ),
    OpenAIModel(
        id="text-embedding-ada-002",
        kind="embedding",
        created=1_671_217_299,
        owned_by="openai-internal",
        embedding_dimensions=1536,
    ),
)


def build_catalogue(models: Iterable[str | OpenAIModel] | None) -> dict[str, OpenAIModel]:
    """Map model ids to entries.

    A name found in ``DEFAULT_OPENAI_MODELS`` takes that entry. Any other name becomes a
    plain chat model with vision and no reasoning.
    """
    defaults = {model.id: model for model in DEFAULT_OPENAI_MODELS}
    if models is None:
        return dict(defaults)
    catalogue: dict[str, OpenAIModel] = {}
    for item in models:
        model = item if isinstance(item, OpenAIModel) else defaults.get(item, OpenAIModel(id=item))
        catalogue[model.id] = model
    return catalogue
