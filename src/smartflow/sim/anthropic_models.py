"""Model catalogue of the Anthropic simulator, with each model's request restrictions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = ["DEFAULT_ANTHROPIC_MODELS", "AnthropicModel", "build_anthropic_catalogue"]


@dataclass(frozen=True, slots=True)
class AnthropicModel:
    """One model the simulator serves and the rules the Messages API applies to it.

    ``sampling`` is ``any`` (temperature, top_p and top_k freely), ``temperature_or_top_p``
    (400 when both are set) or ``defaults_only`` (400 for any non-default sampling value).
    ``thinking_modes`` lists the accepted ``thinking.type`` values besides ``disabled``.
    ``prefill`` tells whether a final assistant message may start the reply.
    """

    id: str
    snapshot: str = ""
    """Model id that responses carry, so an alias resolves to its dated id."""
    display_name: str = ""
    created_at: str = "2025-01-01T00:00:00Z"
    max_output_tokens: int = 64_000
    sampling: str = "any"
    thinking_modes: tuple[str, ...] = ("enabled",)
    prefill: bool = True
    thinking_display: str = "summarized"
    """Default ``thinking.display``: ``omitted`` sends thinking blocks with empty text."""

    @property
    def response_name(self) -> str:
        return self.snapshot or self.id


def _aliased(model: AnthropicModel) -> list[AnthropicModel]:
    """Return the alias entry and the dated entry of one model."""
    return [model, replace(model, id=model.snapshot)]


# NOTE: the rules of the 4.6 and 4.7 models come from secondary summaries of Anthropic's
# migration guide, and their created_at dates are guesses. Check both against the docs.
DEFAULT_ANTHROPIC_MODELS: tuple[AnthropicModel, ...] = (
    *_aliased(
        AnthropicModel(
            "claude-haiku-4-5",
            "claude-haiku-4-5-20251001",
            "Claude Haiku 4.5",
            "2025-10-15T00:00:00Z",
            sampling="temperature_or_top_p",
        )
    ),
    *_aliased(
        AnthropicModel(
            "claude-sonnet-4-5",
            "claude-sonnet-4-5-20250929",
            "Claude Sonnet 4.5",
            "2025-09-29T00:00:00Z",
            sampling="temperature_or_top_p",
        )
    ),
    AnthropicModel(
        "claude-3-haiku-20240307",
        display_name="Claude Haiku 3",
        created_at="2024-03-07T00:00:00Z",
        max_output_tokens=4096,
        thinking_modes=(),
    ),
    *_aliased(
        AnthropicModel(
            "claude-3-5-haiku-latest",
            "claude-3-5-haiku-20241022",
            "Claude Haiku 3.5",
            "2024-10-22T00:00:00Z",
            max_output_tokens=8192,
            thinking_modes=(),
        )
    ),
    *_aliased(
        AnthropicModel(
            "claude-3-7-sonnet-latest",
            "claude-3-7-sonnet-20250219",
            "Claude Sonnet 3.7",
            "2025-02-24T00:00:00Z",
        )
    ),
    *_aliased(
        AnthropicModel(
            "claude-sonnet-4-0",
            "claude-sonnet-4-20250514",
            "Claude Sonnet 4",
            "2025-05-22T00:00:00Z",
        )
    ),
    *_aliased(
        AnthropicModel(
            "claude-opus-4-0",
            "claude-opus-4-20250514",
            "Claude Opus 4",
            "2025-05-22T00:00:00Z",
            max_output_tokens=32_000,
        )
    ),
    *_aliased(
        AnthropicModel(
            "claude-opus-4-1",
            "claude-opus-4-1-20250805",
            "Claude Opus 4.1",
            "2025-08-05T00:00:00Z",
            max_output_tokens=32_000,
            sampling="temperature_or_top_p",
        )
    ),
    *_aliased(
        AnthropicModel(
            "claude-opus-4-5",
            "claude-opus-4-5-20251101",
            "Claude Opus 4.5",
            "2025-11-24T00:00:00Z",
        )
    ),
    AnthropicModel(
        "claude-sonnet-4-6",
        display_name="Claude Sonnet 4.6",
        created_at="2026-02-17T00:00:00Z",
        sampling="temperature_or_top_p",
        thinking_modes=("enabled", "adaptive"),
        prefill=False,
    ),
    AnthropicModel(
        "claude-opus-4-6",
        display_name="Claude Opus 4.6",
        created_at="2026-02-05T00:00:00Z",
        max_output_tokens=128_000,
        thinking_modes=("enabled", "adaptive"),
        prefill=False,
    ),
    AnthropicModel(
        "claude-opus-4-7",
        display_name="Claude Opus 4.7",
        created_at="2026-04-16T00:00:00Z",
        max_output_tokens=128_000,
        sampling="defaults_only",
        thinking_modes=("adaptive",),
        prefill=False,
        thinking_display="omitted",
    ),
)


def build_anthropic_catalogue(
    models: Iterable[str | AnthropicModel] | None,
) -> dict[str, AnthropicModel]:
    """Map model ids to entries. An unknown name becomes a model without restrictions."""
    defaults = {model.id: model for model in DEFAULT_ANTHROPIC_MODELS}
    if models is None:
        return dict(defaults)
    catalogue: dict[str, AnthropicModel] = {}
    for item in models:
        if isinstance(item, AnthropicModel):
            model = item
        else:
            model = defaults.get(item, AnthropicModel(item, display_name=item))
        catalogue[model.id] = model
    return catalogue
