"""Load capability profiles from the package, a config directory and dictionaries.

Documents are merged in that order. An override document may name a family that
already exists, and its fields are merged into that family (mappings merge key by
key, lists and scalars replace). A family with a new id is matched before the
existing families of its provider, so an override can carve a model out of a
broader family. The merged set is validated, inherited and compiled once; any
error raises ``ConfigError`` naming the document or family.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from smartflow.core.errors import ConfigError
from smartflow.normalize.compiled import ProfileSet, compile_family
from smartflow.normalize.schema import DefaultsDocument, ProviderDocument, ResolvedFamily

__all__ = ["default_profiles", "load_profiles", "set_default_profiles"]

logger = logging.getLogger(__name__)

# Keys a family never inherits from the family it extends.
_OWN_KEYS = ("id", "abstract", "extends", "description")

# The C loader is faster; PyYAML built without libyaml has only the Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_default: ProfileSet | None = None


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``update``: mappings merge, anything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            merged[key] = _deep_merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path | Traversable, name: str) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"failed to read capability profile {name}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"capability profile {name} must contain a mapping at the top")
    return data


def _package_documents() -> list[tuple[str, dict[str, Any]]]:
    folder = resources.files("smartflow.normalize") / "profiles"
    entries = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".yaml")),
        key=lambda entry: entry.name,
    )
    return [(f"package:{entry.name}", _read_yaml(entry, entry.name)) for entry in entries]


def _directory_documents(config_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    if not config_dir.is_dir():
        raise ConfigError(f"capability profile directory {config_dir} does not exist")
    paths = sorted(config_dir.glob("*.yaml")) + sorted(config_dir.glob("*.yml"))
    return [(str(path), _read_yaml(path, str(path))) for path in paths]


class _Merger:
    """Collects documents: package ones append families, override ones prepend them."""

    def __init__(self) -> None:
        self.defaults: dict[str, Any] = {}
        self.providers: dict[str, dict[str, Any]] = {}

    def add(self, name: str, document: Mapping[str, Any], *, override: bool) -> None:
        if "provider" not in document:
            self.defaults = _deep_merge(self.defaults, document)
            return
        try:
            parsed = ProviderDocument.model_validate(document)
        except ValidationError as exc:
            raise ConfigError(f"invalid capability profile {name}: {exc}") from exc
        current = self.providers.get(parsed.provider)
        if current is None:
            if parsed.default_family is None:
                raise ConfigError(f"capability profile {name} must name a default_family")
            current = {"default_family": None, "wire": {}, "families": []}
            self.providers[parsed.provider] = current
        if parsed.default_family is not None:
            current["default_family"] = parsed.default_family
        current["wire"] = {**current["wire"], **parsed.wire}
        self._merge_families(name, current["families"], parsed.families, override=override)

    @staticmethod
    def _merge_families(
        name: str, families: list[dict[str, Any]], new: list[dict[str, Any]], *, override: bool
    ) -> None:
        index = {family["id"]: position for position, family in enumerate(families)}
        added = []
        for family in new:
            family_id = family.get("id")
            if not isinstance(family_id, str):
                raise ConfigError(f"a family in capability profile {name} has no string 'id'")
            if family_id in index:
                position = index[family_id]
                families[position] = _deep_merge(families[position], family)
            else:
                added.append(copy.deepcopy(family))
        if override:
            families[0:0] = added
        else:
            families.extend(added)


def _resolve(
    family_id: str,
    raw: dict[str, dict[str, Any]],
    owner: dict[str, str],
    wires: dict[str, dict[str, str]],
    done: dict[str, dict[str, Any]],
    chain: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Return the family merged with its ancestors, with its provider's wire names."""
    if family_id in done:
        return done[family_id]
    if family_id in chain:
        raise ConfigError(f"capability profile families extend in a cycle: {' -> '.join(chain)}")
    own = raw.get(family_id)
    if own is None:
        parent_of = chain[-1] if chain else "?"
        raise ConfigError(f"family {parent_of} extends unknown family {family_id}")
    merged: dict[str, Any] = {}
    parent_id = own.get("extends")
    if parent_id is not None:
        parent = _resolve(parent_id, raw, owner, wires, done, (*chain, family_id))
        merged = {key: value for key, value in parent.items() if key not in _OWN_KEYS}
    merged = _deep_merge(merged, {k: v for k, v in own.items() if k != "extends"})
    merged["provider"] = owner[family_id]
    merged.setdefault("abstract", False)
    _apply_wire_names(merged, own, wires[owner[family_id]])
    done[family_id] = merged
    return merged


def _apply_wire_names(
    merged: dict[str, Any], own: Mapping[str, Any], wire: Mapping[str, str]
) -> None:
    """Give inherited entries the provider's wire names unless the family sets its own."""
    own_params = own.get("params") or {}
    params = merged.setdefault("params", {})
    for name, wire_name in wire.items():
        if name in ("reasoning", "response_format", "tool_choice"):
            key = "tools" if name == "tool_choice" else name
            section = merged.setdefault(key, {})
            if "wire" not in (own.get(key) or {}):
                section["wire"] = wire_name
            continue
        if name in params and "wire" not in (own_params.get(name) or {}):
            params[name] = {**params[name], "wire": wire_name}


def _build(merger: _Merger) -> ProfileSet:
    try:
        defaults = DefaultsDocument.model_validate(merger.defaults)
    except ValidationError as exc:
        raise ConfigError(f"invalid capability profile defaults: {exc}") from exc
    raw: dict[str, dict[str, Any]] = {}
    owner: dict[str, str] = {}
    for provider, document in merger.providers.items():
        for family in document["families"]:
            family_id = family["id"]
            if not family_id.startswith(f"{provider}/"):
                raise ConfigError(f"family id {family_id} must start with '{provider}/'")
            raw[family_id] = family
            owner[family_id] = provider

    wires = {provider: document["wire"] for provider, document in merger.providers.items()}
    done: dict[str, dict[str, Any]] = {}
    specs: dict[str, ResolvedFamily] = {}
    for family_id in raw:
        resolved = _resolve(family_id, raw, owner, wires, done)
        try:
            specs[family_id] = ResolvedFamily.model_validate(resolved)
        except ValidationError as exc:
            raise ConfigError(f"invalid capability profile family {family_id}: {exc}") from exc

    budgets = {str(k): v for k, v in defaults.effort_budgets.items() if k != "none"}
    families = {
        family_id: compile_family(spec, budgets)
        for family_id, spec in specs.items()
        if not spec.abstract
    }
    profiles = ProfileSet(families=families, specs=specs, effort_budgets=budgets)

    for provider, document in merger.providers.items():
        order = [f["id"] for f in document["families"] if f["id"] in families]
        default = document["default_family"]
        if default not in families or owner.get(default) != provider:
            raise ConfigError(f"default family {default} of {provider} is not a concrete family")
        _check_patterns(specs, order)
        profiles.add_provider(provider, order, default)
    _check_examples(profiles)
    return profiles


def _check_patterns(specs: dict[str, ResolvedFamily], order: list[str]) -> None:
    for family_id in order:
        for pattern in specs[family_id].match:
            try:
                re.compile(pattern)
            except re.error as exc:
                message = f"family {family_id} has an invalid pattern {pattern!r}: {exc}"
                raise ConfigError(message) from exc


def _check_examples(profiles: ProfileSet) -> None:
    """Raise ``ConfigError`` when an example model resolves to another family.

    This catches a pattern that an earlier family shadows.
    """
    for family in profiles.families.values():
        for example in family.spec.examples:
            found = profiles.family_for(family.provider, example)
            if found is not family:
                raise ConfigError(
                    f"example {example!r} of family {family.id} resolves to {found.id}; "
                    "reorder the families or make the patterns narrower"
                )


def load_profiles(
    config_dir: str | Path | None = None, overrides: Iterable[Mapping[str, Any]] = ()
) -> ProfileSet:
    """Load the packaged profiles, then merge a config directory and override mappings.

    Each override mapping has the shape of one profile file: either a provider document
    (``provider``, ``default_family``, ``wire``, ``families``) or a defaults document
    (``effort_budgets``).
    """
    merger = _Merger()
    for name, document in _package_documents():
        merger.add(name, document, override=False)
    if config_dir is not None:
        for name, document in _directory_documents(Path(config_dir)):
            merger.add(name, document, override=True)
    for position, mapping in enumerate(overrides):
        merger.add(f"override #{position}", mapping, override=True)
    profiles = _build(merger)
    logger.info(
        "loaded %d model families for providers %s", len(profiles.families), profiles.providers
    )
    return profiles


def default_profiles() -> ProfileSet:
    """Return the process-wide profiles, loading the packaged ones on first use."""
    global _default
    if _default is None:
        _default = load_profiles()
    return _default


def set_default_profiles(profiles: ProfileSet | None) -> None:
    """Replace the process-wide profiles; ``None`` reloads the packaged ones on next use."""
    global _default
    _default = profiles
