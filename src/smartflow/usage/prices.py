"""Price catalogue per provider and model, and the cost of one request's tokens.

Rates are US dollars per million tokens, held as ``decimal.Decimal`` so that costs are
exact. The catalogue ships as ``prices.yaml`` beside this module; ``PriceCatalog.merged``
lays another file or dict over it, entry by entry.

Token counts follow ``core.types.Usage``: ``input_tokens`` includes cache reads and cache
writes, and ``output_tokens`` includes reasoning tokens. The cost therefore prices

- ``input - cached_input - cache_write`` at the input rate,
- ``cached_input`` at the cached-input rate and ``cache_write`` at the cache-write rate,
- ``output - reasoning`` at the output rate and ``reasoning`` at the reasoning rate,

plus the per-request fee, so no token is priced twice. A model without an entry gets no
cost at all, never a guess from a similar name.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from smartflow.core.errors import ConfigError
from smartflow.core.types import Usage

__all__ = ["Cost", "LongContextTier", "ModelPrice", "PriceCatalog", "Rates", "format_usd"]

logger = logging.getLogger(__name__)

_MILLION = Decimal(1_000_000)
_RATE_FIELDS = ("input", "output", "cached_input", "cache_write", "reasoning")
_ENTRY_FIELDS = frozenset({*_RATE_FIELDS, "request", "as_of", "source", "aliases", "long_context"})
_TIER_FIELDS = frozenset({"above_input_tokens", *_RATE_FIELDS})


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens of each kind.

    In the catalogue file only ``input`` and ``output`` are required. A missing
    ``cached_input`` or ``cache_write`` rate is the ``input`` rate, and a missing
    ``reasoning`` rate is the ``output`` rate, which is how a provider without a
    separate price bills those tokens.
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    reasoning: Decimal


@dataclass(frozen=True, slots=True)
class LongContextTier:
    """Rates for every token of a request whose input exceeds ``above_input_tokens``.

    Anthropic and Gemini bill a whole request at higher rates once its prompt, cache
    reads and writes included, passes a threshold (200,000 tokens for the models listed).
    """

    above_input_tokens: int
    rates: Rates


@dataclass(frozen=True, slots=True)
class ModelPrice:
    provider: str
    """Provider type, as in ``Provider.kind``: ``openai``, ``anthropic``, ``bedrock``..."""
    model: str
    rates: Rates
    request_fee: Decimal
    """USD charged per request, on top of the tokens."""
    as_of: str
    """ISO date on which the rates were checked against ``source``."""
    source: str | None = None
    long_context: LongContextTier | None = None

    def rates_for(self, input_tokens: int) -> Rates:
        tier = self.long_context
        if tier is not None and input_tokens > tier.above_input_tokens:
            return tier.rates
        return self.rates


@dataclass(frozen=True, slots=True)
class Cost:
    """The cost of one request, or ``usd=None`` with ``price`` ``None`` when no entry
    matched any of the model names tried."""

    usd: Decimal | None
    price: ModelPrice | None

    @property
    def missing(self) -> bool:
        return self.price is None


def format_usd(amount: Decimal) -> str:
    """Format dollars as a plain decimal string without exponent or trailing zeros."""
    text = format(amount.normalize(), "f")
    return text if text != "-0" else "0"


def cost_of(price: ModelPrice, usage: Usage) -> Decimal:
    """Return the exact cost in USD of ``usage`` at ``price`` (see the module docstring)."""
    rates = price.rates_for(usage.input_tokens)
    cached = max(usage.cached_input_tokens, 0)
    written = max(usage.cache_write_tokens, 0)
    reasoning = max(usage.reasoning_tokens, 0)
    uncached = usage.input_tokens - cached - written
    visible = usage.output_tokens - reasoning
    if uncached < 0 or visible < 0:
        # A provider reported more detail tokens than total tokens. Pricing the detail
        # counts and nothing else keeps every token priced once.
        logger.warning(
            "usage for %s/%s has detail counts above its totals (%s); pricing them as reported",
            price.provider,
            price.model,
            usage,
        )
        uncached, visible = max(uncached, 0), max(visible, 0)
    token_cost = (
        uncached * rates.input
        + cached * rates.cached_input
        + written * rates.cache_write
        + visible * rates.output
        + reasoning * rates.reasoning
    )
    return token_cost / _MILLION + price.request_fee


class PriceCatalog:
    """Prices keyed by provider type and model name, aliases included."""

    def __init__(self, prices: Iterable[ModelPrice] = (), *, version: str | None = None) -> None:
        self.version = version
        """Recorded in each event this catalogue prices: ``builtin`` for the packaged
        file, ``central-N`` with the control plane's overlay version N."""
        self._prices: dict[tuple[str, str], ModelPrice] = {}
        for price in prices:
            self._prices[(price.provider, price.model)] = price

    def __len__(self) -> int:
        return len(self._prices)

    def __iter__(self) -> Iterator[ModelPrice]:
        return iter(self._prices.values())

    # --- loading ------------------------------------------------------------------------

    @classmethod
    def default(cls) -> PriceCatalog:
        """Load the catalogue shipped with the package (``usage/prices.yaml``)."""
        text = (resources.files("smartflow.usage") / "prices.yaml").read_text(encoding="utf-8")
        catalog = cls.from_dict(yaml.safe_load(text), origin="the built-in prices.yaml")
        catalog.version = "builtin"
        return catalog

    @classmethod
    def with_overlay(cls, providers: Mapping[str, Any], version: int) -> PriceCatalog:
        """Lay the control plane's overlay (``prices.yaml`` layout) over the packaged file.

        Raises:
            ConfigError: the overlay is not a valid catalogue.
        """
        overlay = cls.from_dict(
            {"providers": dict(providers)}, origin=f"the central price catalogue {version}"
        )
        catalog = cls.default().merged(overlay)
        catalog.version = f"central-{version}"
        return catalog

    @classmethod
    def from_file(cls, path: str | Path) -> PriceCatalog:
        """Load a catalogue file of the same form as ``prices.yaml``.

        Raises:
            ConfigError: the file cannot be read or is not a valid catalogue.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = yaml.safe_load(text)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"Cannot read the price catalogue {path}: {exc}") from exc
        return cls.from_dict(data, origin=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, origin: str = "the price catalogue") -> PriceCatalog:
        """Build a catalogue from parsed YAML or JSON.

        The form is ``{"providers": {KIND: {"source": URL, "models": {MODEL: ENTRY}}}}``,
        where an entry has the rate fields, ``as_of``, and optionally ``request``,
        ``source``, ``aliases`` and ``long_context``.

        Raises:
            ConfigError: names the entry and field that is missing or invalid.
        """
        if not isinstance(data, dict) or not isinstance(data.get("providers"), dict):
            raise ConfigError(f"{origin} must be a mapping with a 'providers' mapping.")
        prices: list[ModelPrice] = []
        for kind, section in data["providers"].items():
            where = f"{origin}: providers.{kind}"
            if not isinstance(section, dict) or not isinstance(section.get("models"), dict):
                raise ConfigError(f"{where} must be a mapping with a 'models' mapping.")
            default_source = section.get("source")
            for model, entry in section["models"].items():
                prices.extend(
                    _parse_entry(str(kind), str(model), entry, default_source, f"{where}.{model}")
                )
        return cls(prices)

    def merged(self, other: PriceCatalog) -> PriceCatalog:
        """Return a catalogue with the entries of ``other`` replacing or adding to these.

        An entry that replaces a model also replaces the aliases listed with it here, such
        as its dated versions, unless ``other`` prices an alias itself.
        """
        combined = PriceCatalog(self, version=other.version or self.version)
        combined._prices.update(other._prices)
        # The names of one entry share its Rates object, the model first (see _parse_entry).
        groups: dict[int, list[tuple[str, str]]] = {}
        for key, price in self._prices.items():
            groups.setdefault(id(price.rates), []).append(key)
        for names in groups.values():
            model, aliases = names[0], names[1:]
            new = other._prices.get(model)
            if new is None:
                continue
            for alias in aliases:
                if alias not in other._prices:
                    combined._prices[alias] = dataclasses.replace(new, model=alias[1])
        return combined

    # --- lookup and cost ----------------------------------------------------------------

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        return self._prices.get((provider, model))

    def cost(self, provider: str, models: Sequence[str | None], usage: Usage) -> Cost:
        """Price ``usage`` with the first of ``models`` that has an entry for ``provider``.

        Pass the most specific name first: the model the provider reported, then the
        deployment's base model, then its upstream name.
        """
        for model in models:
            if not model:
                continue
            price = self.lookup(provider, model)
            if price is not None:
                return Cost(cost_of(price, usage), price)
        return Cost(None, None)


def _parse_entry(
    kind: str, model: str, entry: Any, default_source: Any, where: str
) -> list[ModelPrice]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping of rates.")
    unknown = set(entry) - _ENTRY_FIELDS
    if unknown:
        raise ConfigError(f"{where} has unknown fields: {', '.join(sorted(unknown))}.")
    as_of = entry.get("as_of")
    if isinstance(as_of, datetime.date):
        as_of = as_of.isoformat()
    if not isinstance(as_of, str) or not as_of:
        raise ConfigError(f"{where} needs 'as_of', the date its rates were checked.")
    rates = _parse_rates(entry, where)
    tier = None
    if entry.get("long_context") is not None:
        tier = _parse_tier(entry["long_context"], f"{where}.long_context")
    source = entry.get("source", default_source)
    fee = _decimal(entry.get("request", 0), f"{where}.request")
    aliases = entry.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ConfigError(f"{where}.aliases must be a list of model names.")
    return [
        ModelPrice(kind, name, rates, fee, as_of, str(source) if source else None, tier)
        for name in (model, *aliases)
    ]


def _parse_rates(entry: Mapping[str, Any], where: str) -> Rates:
    for required in ("input", "output"):
        if entry.get(required) is None:
            raise ConfigError(f"{where} needs '{required}', in USD per million tokens.")
    base_input = _decimal(entry["input"], f"{where}.input")
    base_output = _decimal(entry["output"], f"{where}.output")

    def optional(name: str, fallback: Decimal) -> Decimal:
        value = entry.get(name)
        return fallback if value is None else _decimal(value, f"{where}.{name}")

    return Rates(
        input=base_input,
        output=base_output,
        cached_input=optional("cached_input", base_input),
        cache_write=optional("cache_write", base_input),
        reasoning=optional("reasoning", base_output),
    )


def _parse_tier(data: Any, where: str) -> LongContextTier:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping.")
    unknown = set(data) - _TIER_FIELDS
    if unknown:
        raise ConfigError(f"{where} has unknown fields: {', '.join(sorted(unknown))}.")
    threshold = data.get("above_input_tokens")
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold <= 0:
        raise ConfigError(f"{where}.above_input_tokens must be a positive integer.")
    return LongContextTier(threshold, _parse_rates(data, where))


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where} must be a number, got {value!r}.")
    try:
        # str() first: Decimal(0.1) would keep the float's binary error.
        number = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{where} must be a number, got {value!r}.") from None
    if not number.is_finite() or number < 0:
        raise ConfigError(f"{where} must be a finite number of at least 0, got {value!r}.")
    return number
