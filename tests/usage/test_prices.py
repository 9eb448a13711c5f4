"""Price catalogue: loading, lookup and exact costs without double counting."""

from __future__ import annotations

import datetime
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from smartflow.core.errors import ConfigError
from smartflow.core.types import Usage
from smartflow.usage.prices import PriceCatalog, cost_of, format_usd

CATALOGUE = {
    "providers": {
        "anthropic": {
            "source": "https://example.test/anthropic-prices",
            "models": {
                "claude-x": {
                    "input": 3,
                    "output": 15,
                    "cached_input": "0.30",
                    "cache_write": 3.75,
                    "as_of": datetime.date(2026, 1, 2),
                    "aliases": ["claude-x-20260101"],
                    "long_context": {
                        "above_input_tokens": 200_000,
                        "input": 6,
                        "output": 22.5,
                        "cached_input": 0.6,
                        "cache_write": 7.5,
                    },
                },
            },
        },
        "openai": {
            "source": "https://example.test/openai-prices",
            "models": {
                "o-thinker": {"input": 1.1, "output": 4.4, "reasoning": 8.8, "as_of": "2026-01-03"},
                "plain": {"input": 2, "output": 8, "request": "0.001", "as_of": "2026-01-03"},
            },
        },
    }
}


@pytest.fixture
def catalogue() -> PriceCatalog:
    return PriceCatalog.from_dict(CATALOGUE)


def test_every_token_kind_at_its_own_rate(catalogue: PriceCatalog) -> None:
    # 1000 input = 700 uncached + 200 cache reads + 100 cache writes.
    usage = Usage(
        input_tokens=1000, output_tokens=500, cached_input_tokens=200, cache_write_tokens=100
    )
    cost = catalogue.cost("anthropic", ["claude-x"], usage)
    expected = (700 * Decimal(3) + 200 * Decimal("0.3") + 100 * Decimal("3.75") + 500 * 15) / 10**6
    assert cost.usd == expected
    assert format_usd(expected) == "0.010035"


def test_reasoning_tokens_are_part_of_output(catalogue: PriceCatalog) -> None:
    usage = Usage(input_tokens=100, output_tokens=1000, reasoning_tokens=800)
    cost = catalogue.cost("openai", ["o-thinker"], usage)
    expected = (100 * Decimal("1.1") + 200 * Decimal("4.4") + 800 * Decimal("8.8")) / 10**6
    assert cost.usd == expected


def test_missing_rates_fall_back_to_input_and_output(catalogue: PriceCatalog) -> None:
    price = catalogue.lookup("openai", "plain")
    assert price is not None
    assert price.rates.cached_input == Decimal(2)
    assert price.rates.cache_write == Decimal(2)
    assert price.rates.reasoning == Decimal(8)


def test_request_fee_is_added_once(catalogue: PriceCatalog) -> None:
    cost = catalogue.cost("openai", ["plain"], Usage(input_tokens=0, output_tokens=0))
    assert cost.usd == Decimal("0.001")


def test_long_context_tier_prices_every_token(catalogue: PriceCatalog) -> None:
    at_threshold = Usage(input_tokens=200_000, output_tokens=1000)
    above = Usage(input_tokens=200_001, output_tokens=1000)
    low = catalogue.cost("anthropic", ["claude-x"], at_threshold).usd
    high = catalogue.cost("anthropic", ["claude-x"], above).usd
    assert low == (200_000 * Decimal(3) + 1000 * 15) / 10**6
    assert high == (200_001 * Decimal(6) + 1000 * Decimal("22.5")) / 10**6


def test_unknown_model_has_no_cost(catalogue: PriceCatalog) -> None:
    cost = catalogue.cost("anthropic", ["claude-y", None, ""], Usage(10, 10))
    assert cost.usd is None
    assert cost.missing


def test_provider_is_part_of_the_key(catalogue: PriceCatalog) -> None:
    assert catalogue.lookup("bedrock", "claude-x") is None
    assert catalogue.cost("bedrock", ["claude-x"], Usage(10, 10)).missing


def test_first_known_name_wins(catalogue: PriceCatalog) -> None:
    cost = catalogue.cost("anthropic", ["unknown-snapshot", "claude-x-20260101"], Usage(10, 0))
    assert cost.price is not None
    assert cost.price.model == "claude-x-20260101"
    assert cost.price.as_of == "2026-01-02"
    assert cost.price.source == "https://example.test/anthropic-prices"


def test_detail_counts_above_totals_are_priced_once(catalogue: PriceCatalog) -> None:
    # A provider bug: more cached tokens than input tokens. Only the reported detail
    # counts are priced, nothing at the uncached rate.
    usage = Usage(input_tokens=100, output_tokens=0, cached_input_tokens=150)
    cost = catalogue.cost("anthropic", ["claude-x"], usage)
    assert cost.usd == 150 * Decimal("0.3") / 10**6


def test_overlay_replaces_and_adds(catalogue: PriceCatalog) -> None:
    overlay = PriceCatalog.from_dict(
        {
            "providers": {
                "openai": {
                    "models": {
                        "plain": {"input": 1, "output": 2, "as_of": "2026-02-01"},
                        "new-model": {"input": 5, "output": 6, "as_of": "2026-02-01"},
                    }
                }
            }
        }
    )
    merged = catalogue.merged(overlay)
    plain = merged.lookup("openai", "plain")
    assert plain is not None
    assert plain.rates.input == Decimal(1)
    assert plain.request_fee == Decimal(0)
    assert merged.lookup("openai", "new-model") is not None
    assert merged.lookup("anthropic", "claude-x") is not None
    original = catalogue.lookup("openai", "plain")
    assert original is not None
    assert original.rates.input == Decimal(2)


def test_catalogue_loads_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "providers": {
                    "cohere": {
                        "models": {
                            "command-z": {"input": 0.5, "output": 1.5, "as_of": "2026-03-01"}
                        }
                    }
                }
            }
        )
    )
    catalogue = PriceCatalog.from_file(path)
    assert catalogue.cost("cohere", ["command-z"], Usage(1_000_000, 0)).usd == Decimal("0.5")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"output": 1, "as_of": "2026-01-01"}, "needs 'input'"),
        ({"input": 1, "output": 1}, "needs 'as_of'"),
        ({"input": -1, "output": 1, "as_of": "2026-01-01"}, "at least 0"),
        ({"input": "cheap", "output": 1, "as_of": "2026-01-01"}, "must be a number"),
        ({"input": True, "output": 1, "as_of": "2026-01-01"}, "must be a number"),
        ({"input": "nan", "output": 1, "as_of": "2026-01-01"}, "finite"),
        ({"input": 1, "output": 1, "as_of": "2026-01-01", "cache_read": 1}, "unknown fields"),
        (
            {"input": 1, "output": 1, "as_of": "2026-01-01", "long_context": {"input": 2}},
            "above_input_tokens",
        ),
    ],
)
def test_invalid_entry_is_rejected(entry: dict[str, object], message: str) -> None:
    data = {"providers": {"openai": {"models": {"m": entry}}}}
    with pytest.raises(ConfigError, match=message) as caught:
        PriceCatalog.from_dict(data)
    assert "providers.openai.m" in str(caught.value)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Cannot read the price catalogue"):
        PriceCatalog.from_file(tmp_path / "missing.yaml")


def test_shipped_catalogue_is_complete() -> None:
    catalogue = PriceCatalog.default()
    kinds = {price.provider for price in catalogue}
    assert kinds == {
        "openai",
        "azure_openai",
        "anthropic",
        "bedrock",
        "gemini",
        "vertex_gemini",
        "cohere",
    }
    for price in catalogue:
        assert datetime.date.fromisoformat(price.as_of), price.model
        assert price.source is not None and price.source.startswith("https://"), price.model
        assert price.rates.input >= 0, price.model
        assert price.rates.output >= 0, price.model


def test_shipped_catalogue_prices_the_stack_models() -> None:
    # The models `smartflow up` routes to, except command-a-vision, which has no
    # published token price in the catalogue's source.
    catalogue = PriceCatalog.default()
    for kind, model in [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4.1"),
        ("openai", "o3-mini"),
        ("azure_openai", "gpt-4o"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5"),
        ("anthropic", "claude-opus-4-6"),
        ("bedrock", "anthropic.claude-3-5-sonnet-20241022-v2:0"),
        ("bedrock", "meta.llama3-1-70b-instruct-v1:0"),
        ("gemini", "gemini-2.5-flash"),
        ("gemini", "gemini-2.5-pro"),
        ("cohere", "command-a-03-2025"),
    ]:
        assert catalogue.lookup(kind, model) is not None, (kind, model)
    assert catalogue.lookup("cohere", "command-a-vision-07-2025") is None


_counts = st.integers(min_value=0, max_value=10**7)


@given(uncached=_counts, cached=_counts, written=_counts, visible=_counts, reasoning=_counts)
def test_cost_is_the_sum_of_its_parts(
    uncached: int, cached: int, written: int, visible: int, reasoning: int
) -> None:
    catalogue = PriceCatalog.from_dict(CATALOGUE)
    price = catalogue.lookup("anthropic", "claude-x")
    assert price is not None
    usage = Usage(
        input_tokens=uncached + cached + written,
        output_tokens=visible + reasoning,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=reasoning,
    )
    rates = price.rates_for(usage.input_tokens)
    expected = (
        uncached * rates.input
        + cached * rates.cached_input
        + written * rates.cache_write
        + visible * rates.output
        + reasoning * rates.reasoning
    ) / 10**6
    assert cost_of(price, usage) == expected


def test_overlay_entry_reprices_its_aliases() -> None:
    packaged = PriceCatalog.default()
    overlay = PriceCatalog.from_dict(
        {
            "providers": {
                "openai": {
                    "models": {
                        "gpt-4o": {"input": 1, "output": 2, "as_of": "2026-12-01"},
                        "gpt-4o-2024-11-20": {"input": 3, "output": 4, "as_of": "2026-12-01"},
                    }
                }
            }
        }
    )
    merged = packaged.merged(overlay)
    dated = merged.lookup("openai", "gpt-4o-2024-08-06")
    assert dated is not None
    assert dated.rates.input == Decimal(1)
    assert dated.model == "gpt-4o-2024-08-06"
    # An alias the overlay prices itself keeps its own rates.
    own = merged.lookup("openai", "gpt-4o-2024-11-20")
    assert own is not None
    assert own.rates.input == Decimal(3)
    # A model with separate rates in the packaged file is not an alias.
    older = merged.lookup("openai", "gpt-4o-2024-05-13")
    assert older is not None
    assert older.rates.input == Decimal(5)


# --- the event's cost text, computed with integers ------------------------------------------

_any_counts = st.integers(min_value=-5, max_value=10**9)


@given(
    input_tokens=_any_counts,
    output_tokens=_any_counts,
    cached=_any_counts,
    written=_any_counts,
    reasoning=_any_counts,
    model=st.sampled_from(["claude-x", "o-thinker", "plain"]),
)
def test_cost_text_matches_cost_of(
    input_tokens: int, output_tokens: int, cached: int, written: int, reasoning: int, model: str
) -> None:
    catalogue = PriceCatalog.from_dict(CATALOGUE)
    kind = "anthropic" if model == "claude-x" else "openai"
    usage = Usage(input_tokens, output_tokens, cached, written, reasoning)
    price = catalogue.lookup(kind, model)
    assert price is not None
    priced = catalogue.cost_text(kind, (model,), usage)
    assert priced is not None
    assert priced == (format_usd(cost_of(price, usage)), price)


def test_cost_text_of_every_packaged_price() -> None:
    catalogue = PriceCatalog.default()
    usage = Usage(input_tokens=123_457, output_tokens=6_789, cached_input_tokens=1_001)
    for price in catalogue:
        priced = catalogue.cost_text(price.provider, (price.model,), usage)
        assert priced == (format_usd(cost_of(price, usage)), price), price.model


def test_cost_text_beyond_decimal_precision() -> None:
    # 28 significant digits per rate: the Decimal arithmetic of cost_of rounds these costs,
    # so cost_text must give its result, not the exact integer sum.
    catalogue = PriceCatalog.from_dict(
        {
            "providers": {
                "openai": {
                    "models": {
                        "precise": {
                            "input": "1.234567890123456789012345678",
                            "output": "9.876543210987654321098765432",
                            "as_of": "2026-01-03",
                        }
                    }
                }
            }
        }
    )
    price = catalogue.lookup("openai", "precise")
    assert price is not None
    usage = Usage(input_tokens=987_654_321, output_tokens=123_456_789)
    priced = catalogue.cost_text("openai", ("precise",), usage)
    assert priced == (format_usd(cost_of(price, usage)), price)


def test_cost_text_rejects_float_counts_as_cost_of(catalogue: PriceCatalog) -> None:
    usage = Usage(input_tokens=10.0, output_tokens=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cost_of(catalogue.lookup("openai", "plain"), usage)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        catalogue.cost_text("openai", ("plain",), usage)


def test_cost_text_without_entry(catalogue: PriceCatalog) -> None:
    assert catalogue.cost_text("anthropic", ("claude-y", None, ""), Usage(10, 10)) is None
    # The result is kept per tuple of names. A list of the same names gets the same result.
    assert catalogue.cost_text("anthropic", ["claude-y", None, ""], Usage(10, 10)) is None


def test_lookups_beyond_the_cache_size_stay_correct(catalogue: PriceCatalog) -> None:
    for index in range(5000):
        assert catalogue.cost_text("openai", (f"unknown-{index}",), Usage(1, 1)) is None
    priced = catalogue.cost_text("openai", ("unknown", "plain"), Usage(0, 0))
    assert priced is not None
    assert priced[0] == "0.001"
