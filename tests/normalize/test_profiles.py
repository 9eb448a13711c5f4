"""Tests for loading, overriding and checking the capability profiles."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest
import yaml

from smartflow.core.errors import ConfigError
from smartflow.normalize import (
    ProfileSet,
    load_profiles,
    normalize,
    normalize_detailed,
    set_default_profiles,
)
from smartflow.normalize.loader import default_profiles
from smartflow.normalize.schema import PROVIDERS
from tests.normalize.builders import chat

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return load_profiles()


def test_every_provider_has_families(profiles: ProfileSet) -> None:
    assert set(profiles.providers) == set(PROVIDERS)
    for provider in PROVIDERS:
        assert len(profiles.order[provider]) >= 2, provider


def test_examples_resolve_to_their_family(profiles: ProfileSet) -> None:
    for family_id, family in profiles.families.items():
        for example in family.spec.examples:
            found = profiles.family_for(family.provider, example)
            assert found.id == family_id, example


@pytest.mark.parametrize(
    ("model", "provider", "family"),
    [
        ("us.anthropic.claude-opus-4-1-20250805-v1:0", "bedrock", "bedrock/claude-opus-4-1"),
        (
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-sonnet-4-6",
            "bedrock",
            "bedrock/claude-sonnet-4-6",
        ),
        ("claude-sonnet-4-5@20250929", "anthropic", "anthropic/claude-4-5"),
        ("CLAUDE-SONNET-4-5", "anthropic", "anthropic/claude-4-5"),
        ("ft:gpt-4o-mini-2024-07-18:org::abc", "openai", "openai/gpt-4o"),
        ("gpt-35-turbo-0125", "azure", "azure/gpt-4-legacy"),
        ("models/gemini-2.5-pro", "gemini", "gemini/2.5-pro"),
        ("command-r-plus-08-2024", "cohere", "cohere/command-r"),
        ("command-r7b-arabic-02-2025", "cohere", "cohere/command-a"),
    ],
)
def test_model_names_in_the_wild(
    profiles: ProfileSet, model: str, provider: str, family: str
) -> None:
    assert profiles.family_for(provider, model).id == family


def test_override_mapping_changes_a_family() -> None:
    override = {
        "provider": "anthropic",
        "families": [{"id": "anthropic/claude-4-5", "params": {"temperature": {"max": 0.8}}}],
    }
    custom = load_profiles(overrides=[override])

    result, changes = normalize(
        chat(temperature=0.9, top_p=1.0, max_tokens=5),
        "claude-sonnet-4-5",
        "anthropic",
        profiles=custom,
    )

    assert result.sampling.temperature == 0.8
    assert "0.0 to 0.8" in changes[0].reason
    # The rest of the family is untouched by the partial override.
    assert custom.families["anthropic/claude-4-5"].inactive["temperature"].low == 0.0
    assert custom.families["anthropic/claude-4-5"].exclusive


def test_override_new_family_matches_first() -> None:
    override = {
        "provider": "openai",
        "families": [
            {
                "id": "openai/house-model",
                "extends": "openai/gpt-4o",
                "match": [r"\bgpt-4o-house"],
                "examples": ["gpt-4o-house-2026"],
                "params": {"stop": {"max_items": 2}},
            }
        ],
    }
    custom = load_profiles(overrides=[override])

    result = normalize_detailed(
        chat(stop=list("abc")), "gpt-4o-house-2026", "openai", profiles=custom
    )

    assert result.family == "openai/house-model"
    assert result.request.sampling.stop == ["a", "b"]
    assert custom.family_for("openai", "gpt-4o").id == "openai/gpt-4o"


def test_config_directory_overrides(tmp_path: Path) -> None:
    (tmp_path / "cohere.yaml").write_text(
        yaml.safe_dump(
            {
                "provider": "cohere",
                "families": [{"id": "cohere/command-a", "params": {"stop": {"max_items": 3}}}],
            }
        )
    )
    (tmp_path / "budgets.yaml").write_text(yaml.safe_dump({"effort_budgets": {"high": 20000}}))
    custom = load_profiles(config_dir=tmp_path)

    result, _ = normalize(chat(stop=list("abcd")), "command-a-03-2025", "cohere", profiles=custom)
    budget, _ = normalize(
        chat(reasoning_effort="high"), "gemini-2.5-flash", "gemini", profiles=custom
    )

    assert result.sampling.stop == ["a", "b", "c"]
    assert budget.sampling.thinking_budget == 20000


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"provider": "openai", "families": [{"id": "openai/x", "extends": "openai/nope"}]},
            "unknown family",
        ),
        ({"provider": "openai", "families": [{"id": "gemini/x"}]}, "must start with"),
        (
            {
                "provider": "openai",
                "families": [{"id": "openai/gpt-4o", "params": {"temprature": {"max": 1}}}],
            },
            "unknown parameters",
        ),
        (
            {
                "provider": "openai",
                "families": [{"id": "openai/gpt-4o", "params": {"top_p": {"min": 2, "max": 1}}}],
            },
            "above max",
        ),
        (
            {"provider": "openai", "families": [{"id": "openai/gpt-4o", "match": ["("]}]},
            "invalid pattern",
        ),
        (
            {"provider": "openai", "families": [{"id": "openai/gpt-4o", "examples": ["o3"]}]},
            "resolves to",
        ),
        ({"provider": "mistral", "families": []}, "invalid capability profile"),
        ({"effort_budgets": {"low": 99999999}}, "grow strictly"),
        (
            {
                "provider": "openai",
                "families": [
                    {"id": "openai/a", "extends": "openai/b"},
                    {"id": "openai/b", "extends": "openai/a"},
                ],
            },
            "cycle",
        ),
    ],
)
def test_invalid_override_is_config_error(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_profiles(overrides=[override])

    assert message in caught.value.message


def test_missing_config_directory_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_profiles(config_dir=tmp_path / "absent")


def test_default_profiles_can_be_replaced() -> None:
    custom = load_profiles(overrides=[{"provider": "openai", "default_family": "openai/gpt-4o"}])
    set_default_profiles(custom)
    try:
        assert default_profiles() is custom
        assert normalize_detailed(chat(), "unknown", "openai").family == "openai/gpt-4o"
    finally:
        set_default_profiles(None)
    assert default_profiles().default_family["openai"] == "openai/gpt-4.1"


# --- the official SDKs as judges of the profile values ------------------------------


def _efforts(profiles: ProfileSet, provider: str) -> set[str]:
    values: set[str] = set()
    for family in profiles.families.values():
        if family.provider == provider and family.reasoning.mode == "effort":
            values |= set(family.reasoning.efforts)
    return values


def test_openai_efforts_exist_in_sdk(profiles: ProfileSet) -> None:
    from openai.types.shared.reasoning_effort import ReasoningEffort

    accepted = set(get_args(get_args(ReasoningEffort)[0]))
    assert _efforts(profiles, "openai") <= accepted
    assert _efforts(profiles, "azure") <= accepted


def test_anthropic_efforts_exist_in_sdk(profiles: ProfileSet) -> None:
    from anthropic.types.output_config_param import OutputConfigParam

    effort_type = get_type_hints(OutputConfigParam)["effort"]
    accepted = set(get_args(get_args(effort_type)[0]))
    assert accepted
    # "none" is sent as thinking type disabled, not as an effort value.
    assert _efforts(profiles, "anthropic") - {"none"} <= accepted


def test_gemini_levels_exist_in_sdk(profiles: ProfileSet) -> None:
    from google.genai.types import ThinkingLevel

    accepted = {level.value.lower() for level in ThinkingLevel}
    assert _efforts(profiles, "gemini") <= accepted


def test_cohere_tool_choice_modes_exist_in_sdk(profiles: ProfileSet) -> None:
    from cohere.v2.types.v2chat_request_tool_choice import V2ChatRequestToolChoice

    accepted = {value.lower() for value in get_args(get_args(V2ChatRequestToolChoice)[0])}
    for family in profiles.families.values():
        if family.provider == "cohere":
            assert family.choice_modes - {"auto"} <= accepted


def test_anthropic_budget_minimum_matches_sdk(profiles: ProfileSet) -> None:
    from anthropic.types import thinking_config_enabled_param

    source = inspect.getsource(thinking_config_enabled_param)
    assert "Must be ≥1024 and less than `max_tokens`" in source
    for family in profiles.families.values():
        if family.provider == "anthropic" and family.reasoning.mode == "budget":
            assert family.reasoning.budget_min == 1024
            assert family.reasoning.below_max_tokens


def test_bedrock_converse_limits_match_botocore(profiles: ProfileSet) -> None:
    import botocore.session

    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    shapes = model.shape_for("InferenceConfiguration").members
    temperature = shapes["temperature"].metadata
    stops = shapes["stopSequences"].metadata
    for family in profiles.families.values():
        if family.provider != "bedrock":
            continue
        table = family.inactive
        if table["temperature"].supported:
            assert table["temperature"].low >= temperature["min"]
            assert table["temperature"].high <= temperature["max"]
        assert table["stop"].max_items is not None
        assert table["stop"].max_items <= stops["max"]


# --- generated documentation ---------------------------------------------------------


def test_committed_doc_matches_profiles(profiles: ProfileSet) -> None:
    path = ROOT / "scripts" / "gen_normalisation_docs.py"
    spec = importlib.util.spec_from_file_location("gen_normalisation_docs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_normalisation_docs", module)
    spec.loader.exec_module(module)

    expected = module.render(profiles)

    committed = (ROOT / "docs" / "normalisation.md").read_text(encoding="utf-8")
    assert committed == expected, "run scripts/gen_normalisation_docs.py"
