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


_DECIMAL_LIMIT = 10**28
"""The smallest integer with more digits than the 28 significant digits of the default
``decimal`` context, in which ``cost_of`` computes."""


@dataclass(frozen=True, slots=True)
class _UnitRates:
    """One set of rates and the request fee in whole units of ``10**-places`` USD per token.

    A cost is then an exact sum of integers, computed in less than half the instructions of
    the ``Decimal`` arithmetic in ``cost_of``. A test checks that both give the same text.
    """

    places: int
    unit: int
    """``10**places``: the units in one dollar."""
    input: int
    output: int
    cached_input: int
    cache_write: int
    reasoning: int
    fee: int

    @classmethod
    def of(cls, rates: Rates, fee: Decimal) -> _UnitRates | None:
        """Convert ``rates`` and ``fee`` to units. Returns None unless all are finite and
        at least 0, which the catalogue files ensure but prices built in code may not."""
        per_million = (
            rates.input,
            rates.output,
            rates.cached_input,
            rates.cache_write,
            rates.reasoning,
        )
        if not all(number.is_finite() and number >= 0 for number in (*per_million, fee)):
            return None
        # The smallest power of ten that turns every per-token rate and the fee into whole units.
        places = max(0, -_exponent(fee), *(6 - _exponent(rate) for rate in per_million))
        return cls(
            places=places,
            unit=10**places,
            input=_whole_units(rates.input, places - 6),
            output=_whole_units(rates.output, places - 6),
            cached_input=_whole_units(rates.cached_input, places - 6),
            cache_write=_whole_units(rates.cache_write, places - 6),
            reasoning=_whole_units(rates.reasoning, places - 6),
            fee=_whole_units(fee, places),
        )

    def usd_text(self, usage: Usage) -> str | None:
        """Return the cost of ``usage`` as ``format_usd(cost_of(...))`` writes it, or None
        when ``cost_of`` must decide.

        ``cost_of`` decides for detail counts above their totals, which it logs, and for
        counts that are not ``int``, such as a float from a provider's JSON, which it
        rejects. It also decides for a cost with more significant digits than its
        ``decimal`` context keeps.
        """
        cached = usage.cached_input_tokens
        written = usage.cache_write_tokens
        reasoning = usage.reasoning_tokens
        uncached = usage.input_tokens - cached - written
        visible = usage.output_tokens - reasoning
        if cached < 0 or written < 0 or reasoning < 0 or uncached < 0 or visible < 0:
            return None
        total = (
            uncached * self.input
            + cached * self.cached_input
            + written * self.cache_write
            + visible * self.output
            + reasoning * self.reasoning
            + self.fee
        )
        # A count of another type makes the total a float or Decimal. Every value in
        # cost_of has a coefficient of at most total (its exponent is at least -places),
        # so below _DECIMAL_LIMIT cost_of rounds nothing and returns this exact value.
        if type(total) is not int or total >= _DECIMAL_LIMIT:
            return None
        whole, fraction = divmod(total, self.unit)
        if not fraction:
            return str(whole)
        # unit + fraction has a leading 1 and then fraction padded with zeros to places digits.
        return f"{whole}.{str(self.unit + fraction)[1:].rstrip('0')}"


def _exponent(number: Decimal) -> int:
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int), "only finite numbers have a whole exponent"
    return exponent


def _whole_units(number: Decimal, places: int) -> int:
    """Return ``number * 10**places`` exactly. ``places`` must make it a whole number.

    The digits are shifted as text, because Decimal arithmetic rounds to 28 digits.
    """
    digits = number.as_tuple().digits
    shift = _exponent(number) + places
    assert shift >= 0, "places must make the number whole"
    # Catalogue numbers are at least 0, so the sign only ever belongs to a zero.
    return int("".join(map(str, digits)) + "0" * shift)


_MAX_CACHED_LOOKUPS = 4096
"""Lookup results that a ``PriceCatalog`` keeps. It clears them all when it has this many."""


_Found = tuple[ModelPrice, _UnitRates | None, _UnitRates | None]
"""A catalogue entry with its rates, and those of its long-context tier, in units (None
for the rates of an entry without a tier, or that ``_UnitRates.of`` cannot convert)."""
_NOT_LOOKED_UP: Any = object()


class PriceCatalog:
    """Prices keyed by provider type and model name, aliases included."""

    def __init__(self, prices: Iterable[ModelPrice] = (), *, version: str | None = None) -> None:
        self.version = version
        """Recorded in each event this catalogue prices: ``builtin`` for the packaged
        file, ``central-N`` with the control plane's overlay version N."""
        self._prices: dict[tuple[str, str], ModelPrice] = {}
        for price in prices:
            self._prices[(price.provider, price.model)] = price
        # The entry found for a provider type and model names, with its rates in units.
        self._found: dict[tuple[str, tuple[str | None, ...]], _Found | None] = {}

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
        found = self._find(provider, models)
        if found is None:
            return Cost(None, None)
        return Cost(cost_of(found[0], usage), found[0])

    def cost_text(
        self, provider: str, models: Sequence[str | None], usage: Usage
    ) -> tuple[str, ModelPrice] | None:
        """Return ``format_usd`` of the cost that ``cost`` computes, and the entry that
        priced it, or None when no entry matched.

        The usage event takes its cost in this form. The text is computed with integers,
        without ``Decimal``, unless ``_UnitRates.usd_text`` leaves it to ``cost_of``.
        """
        found = self._find(provider, models)
        if found is None:
            return None
        price, base, long_context = found
        rates = base
        tier = price.long_context
        if tier is not None and usage.input_tokens > tier.above_input_tokens:
            rates = long_context
        text = None if rates is None else rates.usd_text(usage)
        if text is None:
            text = format_usd(cost_of(price, usage))
        return text, price

    def _find(self, provider: str, models: Sequence[str | None]) -> _Found | None:
        """Return the entry for the first of ``models`` with one, with its rates in units.

        The result for each provider type and tuple of names is kept, because the gateway
        prices every request with the names of one of a few deployments.
        """
        names = models if type(models) is tuple else tuple(models)
        key = (provider, names)
        found: _Found | None = self._found.get(key, _NOT_LOOKED_UP)
        if found is not _NOT_LOOKED_UP:
            return found
        found = None
        for model in names:
            if not model:
                continue
            price = self.lookup(provider, model)
            if price is not None:
                tier = price.long_context
                found = (
                    price,
                    _UnitRates.of(price.rates, price.request_fee),
                    None if tier is None else _UnitRates.of(tier.rates, price.request_fee),
                )
                break
        if len(self._found) >= _MAX_CACHED_LOOKUPS:
            self._found.clear()
        self._found[key] = found
        return found


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
