"""Table tests for the known traps of moving parameters between providers."""

from __future__ import annotations

import copy

import pytest

from smartflow.core.errors import ConfigError, InvalidRequest
from smartflow.normalize import (
    Change,
    Policy,
    ProfileSet,
    load_profiles,
    normalize,
    normalize_detailed,
    report_header,
)
from tests.normalize.builders import chat


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return load_profiles()


def find(changes: list[Change], param: str, rule: str | None = None) -> Change:
    matches = [c for c in changes if c.param == param and (rule is None or c.rule == rule)]
    assert matches, f"no {rule or 'entry'} for {param} in {changes}"
    return matches[-1]


# --- temperature 1.5 to Claude ------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("claude-sonnet-4-5", "anthropic"),
        ("claude-3-5-haiku-20241022", "anthropic"),
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock"),
    ],
)
def test_temperature_above_claude_range_is_clamped(
    profiles: ProfileSet, model: str, provider: str
) -> None:
    request = chat(temperature=1.5, max_tokens=256)

    result, changes = normalize(request, model, provider, profiles=profiles)

    assert result.sampling.temperature == 1.0
    change = find(changes, "temperature", "clamp")
    assert change.before == 1.5
    assert change.after == 1.0
    assert "0.0 to 1.0" in change.reason
    assert "temperature=clamp(1.5->1.0)" in report_header(changes)


def test_temperature_above_claude_range_strict_raises(profiles: ProfileSet) -> None:
    request = chat(temperature=1.5, max_tokens=256)

    with pytest.raises(InvalidRequest) as caught:
        normalize(request, "claude-sonnet-4-5", "anthropic", strict=True, profiles=profiles)

    assert caught.value.param == "temperature"
    assert "0.0 to 1.0" in caught.value.message
    assert "claude-sonnet-4-5" in caught.value.message


def test_temperature_scale_policy_halves_for_claude(profiles: ProfileSet) -> None:
    policy = Policy(range_rules={"temperature": "scale"})
    request = chat(temperature=1.5, max_tokens=256)

    result, changes = normalize(
        request, "claude-sonnet-4-5", "anthropic", policy=policy, profiles=profiles
    )

    assert result.sampling.temperature == 0.75
    assert find(changes, "temperature").rule == "scale"


def test_temperature_reject_policy_raises(profiles: ProfileSet) -> None:
    policy = Policy(range_rules={"temperature": "reject"})

    with pytest.raises(InvalidRequest) as caught:
        normalize(
            chat(temperature=1.5),
            "claude-sonnet-4-5",
            "anthropic",
            policy=policy,
            profiles=profiles,
        )

    assert caught.value.param == "temperature"


# --- temperature with top_p to a Claude model that takes one ------------------------


@pytest.mark.parametrize(
    ("temperature", "top_p", "kept", "dropped"),
    [
        (0.3, 0.9, "temperature", "top_p"),
        (1.0, 0.9, "top_p", "temperature"),
        (1.0, 1.0, "temperature", "top_p"),
    ],
)
@pytest.mark.parametrize(
    "model", ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1", "claude-sonnet-4-6"]
)
def test_temperature_and_top_p_keep_one(
    profiles: ProfileSet,
    model: str,
    temperature: float,
    top_p: float,
    kept: str,
    dropped: str,
) -> None:
    request = chat(temperature=temperature, top_p=top_p, max_tokens=256)

    result, changes = normalize(request, model, "anthropic", profiles=profiles)

    assert getattr(result.sampling, kept) == getattr(request.sampling, kept)
    assert getattr(result.sampling, dropped) is None
    change = find(changes, dropped, "drop")
    assert "only one of temperature, top_p" in change.reason


def test_opus_4_5_keeps_both_samplers(profiles: ProfileSet) -> None:
    request = chat(temperature=0.3, top_p=0.9, max_tokens=256)

    result, changes = normalize(request, "claude-opus-4-5", "anthropic", profiles=profiles)

    assert result.sampling.temperature == 0.3
    assert result.sampling.top_p == 0.9
    assert changes == []


# --- temperature to an OpenAI reasoning model ---------------------------------------


@pytest.mark.parametrize(
    ("model", "provider"),
    [("o3", "openai"), ("o4-mini", "openai"), ("gpt-5", "openai"), ("o3-mini", "azure")],
)
def test_temperature_to_reasoning_model_is_dropped(
    profiles: ProfileSet, model: str, provider: str
) -> None:
    request = chat(temperature=0.2, top_p=0.5, presence_penalty=0.5, max_tokens=300)

    result, changes = normalize(request, model, provider, profiles=profiles)

    assert result.sampling.temperature is None
    assert result.sampling.top_p is None
    assert result.sampling.presence_penalty is None
    assert result.sampling.max_tokens == 300
    assert "reasoning models" in find(changes, "temperature", "drop").reason
    assert "temperature=drop(0.2)" in report_header(changes)


def test_gpt_5_1_keeps_temperature_unless_reasoning(profiles: ProfileSet) -> None:
    plain, plain_changes = normalize(chat(temperature=0.2), "gpt-5.1", "openai", profiles=profiles)
    thinking, changes = normalize(
        chat(temperature=0.2, reasoning_effort="high"), "gpt-5.1", "openai", profiles=profiles
    )

    assert plain.sampling.temperature == 0.2
    assert plain_changes == []
    assert thinking.sampling.temperature is None
    assert thinking.sampling.reasoning_effort == "high"
    assert find(changes, "temperature", "drop").reason.endswith("(rejected while reasoning is on)")


def test_o3_drops_stop_sequences(profiles: ProfileSet) -> None:
    result, changes = normalize(chat(stop=["END"]), "o3", "openai", profiles=profiles)

    assert result.sampling.stop is None
    assert find(changes, "stop", "drop")


# --- reasoning_effort high to Claude with small max_tokens --------------------------


@pytest.mark.parametrize(
    ("max_tokens", "policy", "budget", "limit"),
    [
        (2000, Policy(), 1024, 2048),
        (1000, Policy(), 1024, 2048),
        (10000, Policy(), 8976, 10000),
        (2000, Policy(thinking_fit="raise_max_tokens"), 16384, 17408),
        (60000, Policy(thinking_fit="raise_max_tokens"), 16384, 60000),
        (2000, Policy(answer_tokens=512), 1488, 2000),
        (1200, Policy(answer_tokens=512), 1024, 1536),
    ],
)
def test_effort_high_fits_small_max_tokens(
    profiles: ProfileSet, max_tokens: int, policy: Policy, budget: int, limit: int
) -> None:
    request = chat(reasoning_effort="high", max_tokens=max_tokens)

    result, changes = normalize(
        request, "claude-sonnet-4-5", "anthropic", policy=policy, profiles=profiles
    )

    assert result.sampling.reasoning_effort is None
    assert result.sampling.thinking_budget == budget
    assert result.sampling.max_tokens == limit
    assert 1024 <= result.sampling.thinking_budget < result.sampling.max_tokens
    derived = find(changes, "reasoning_effort", "derive")
    assert derived.into == "thinking_budget"
    assert derived.after == 16384


def test_effort_high_without_max_tokens_gets_room(profiles: ProfileSet) -> None:
    request = chat(reasoning_effort="high")

    result, changes = normalize(
        request, "claude-4-5-sonnet-unknown", "anthropic", profiles=profiles
    )

    assert result.sampling.thinking_budget == 16384
    assert result.sampling.max_tokens == 16384 + 1024
    default = find(changes, "max_tokens", "default")
    assert "raised" in default.reason


def test_effort_high_capped_by_model_output_limit(profiles: ProfileSet) -> None:
    request = chat(reasoning_effort="max", max_tokens=1000)
    policy = Policy(thinking_fit="raise_max_tokens")

    result, _ = normalize(request, "claude-opus-4-1", "anthropic", policy=policy, profiles=profiles)

    assert result.sampling.max_tokens == 32000
    assert result.sampling.thinking_budget == 32000 - 1024


def test_effort_to_claude_strict_raises(profiles: ProfileSet) -> None:
    request = chat(reasoning_effort="high", max_tokens=20000)

    with pytest.raises(InvalidRequest) as caught:
        normalize(request, "claude-sonnet-4-5", "anthropic", strict=True, profiles=profiles)

    assert caught.value.param == "reasoning_effort"


def test_thinking_drops_top_k_and_temperature_on_claude(profiles: ProfileSet) -> None:
    request = chat(thinking_budget=4000, max_tokens=8000, temperature=0.5, top_k=20, top_p=0.9)

    result, changes = normalize(request, "claude-opus-4-5", "anthropic", profiles=profiles)

    assert result.sampling.thinking_budget == 4000
    assert result.sampling.temperature is None
    assert result.sampling.top_k is None
    assert result.sampling.top_p == 0.95
    assert find(changes, "top_p", "clamp").after == 0.95


def test_opus_4_7_takes_effort_not_budget(profiles: ProfileSet) -> None:
    request = chat(thinking_budget=20000, temperature=0.4, max_tokens=30000)

    result, changes = normalize(request, "claude-opus-4-7", "anthropic", profiles=profiles)

    assert result.sampling.thinking_budget is None
    assert result.sampling.reasoning_effort == "high"
    assert result.sampling.temperature is None
    assert find(changes, "thinking_budget", "derive").into == "reasoning_effort"
    assert "non-default sampling" in find(changes, "temperature", "drop").reason


# --- five stop sequences to a provider that takes four -------------------------------


def test_five_stop_sequences_truncated_for_openai(profiles: ProfileSet) -> None:
    request = chat(stop=["a", "b", "c", "d", "e"])

    result, changes = normalize(request, "gpt-4o", "openai", profiles=profiles)

    assert result.sampling.stop == ["a", "b", "c", "d"]
    assert request.sampling.stop == ["a", "b", "c", "d", "e"]
    assert report_header(changes) == "stop=truncate(5->4)"
    assert "at most 4" in find(changes, "stop").reason


def test_five_stop_sequences_reject_policy(profiles: ProfileSet) -> None:
    request = chat(stop=["a", "b", "c", "d", "e"])

    with pytest.raises(InvalidRequest) as caught:
        normalize(
            request, "gpt-4o", "openai", policy=Policy(stop_overflow="reject"), profiles=profiles
        )

    assert caught.value.param == "stop"
    assert "at most 4" in caught.value.message


@pytest.mark.parametrize(
    ("model", "provider"), [("gemini-2.5-flash", "gemini"), ("command-a-03-2025", "cohere")]
)
def test_five_stop_sequences_fit_five(profiles: ProfileSet, model: str, provider: str) -> None:
    result, changes = normalize(chat(stop=list("abcde")), model, provider, profiles=profiles)

    assert result.sampling.stop == list("abcde")
    assert changes == []


def test_titan_keeps_only_its_stop_sequences(profiles: ProfileSet) -> None:
    request = chat(stop=["User:", "END", "||"])

    result, changes = normalize(
        request, "amazon.titan-text-express-v1", "bedrock", profiles=profiles
    )

    assert result.sampling.stop == ["User:", "||"]
    assert find(changes, "stop", "truncate").before == ["User:", "END", "||"]


# --- pinned tunings carried across providers ----------------------------------------


PINNED = {"top_k": 40, "thinking_budget": 8000}


@pytest.mark.parametrize(
    ("model", "provider", "expected"),
    [
        (
            "gemini-2.5-flash",
            "gemini",
            {"top_k": 40, "thinking_budget": 8000, "reasoning_effort": None},
        ),
        (
            "gemini-3-flash-preview",
            "gemini",
            {"top_k": 40, "thinking_budget": None, "reasoning_effort": "medium"},
        ),
        ("o3", "openai", {"top_k": None, "thinking_budget": None, "reasoning_effort": "medium"}),
        (
            "command-a-reasoning-08-2025",
            "cohere",
            {"top_k": 40, "thinking_budget": 8000, "reasoning_effort": None},
        ),
        (
            "claude-sonnet-4-5",
            "anthropic",
            {"top_k": None, "thinking_budget": 8000, "max_tokens": 9024},
        ),
        (
            "us.amazon.nova-2-lite-v1:0",
            "bedrock",
            {"top_k": 40, "thinking_budget": None, "reasoning_effort": "medium"},
        ),
        ("gpt-4o", "openai", {"top_k": None, "thinking_budget": None, "reasoning_effort": None}),
    ],
)
def test_pinned_tunings_carried_across_providers(
    profiles: ProfileSet, model: str, provider: str, expected: dict[str, object]
) -> None:
    request = chat(temperature=0.3, reasoning_effort="low")

    result = normalize_detailed(request, model, provider, pinned=PINNED, profiles=profiles)

    for name, value in expected.items():
        assert getattr(result.request.sampling, name) == value, name
    pins = [c for c in result.accounting if c.rule == "pin"]
    assert {c.param for c in pins} == {"top_k", "thinking_budget", "reasoning_effort"}
    replaced = find(result.accounting, "reasoning_effort", "pin")
    assert replaced.before == "low"
    assert replaced.after is None
    for change in result.accounting:
        if change.param in PINNED and change.rule != "pin":
            assert change.source == "pinned", change


def test_pinned_value_replaces_caller_value(profiles: ProfileSet) -> None:
    request = chat(temperature=0.3)

    result, changes = normalize(
        request, "gpt-4o", "openai", pinned={"temperature": 0.9}, profiles=profiles
    )

    assert result.sampling.temperature == 0.9
    pin = find(changes, "temperature", "pin")
    assert (pin.before, pin.after) == (0.3, 0.9)
    assert report_header(changes) == "temperature=pin(0.3->0.9)"


def test_pinned_values_survive_strict_mode(profiles: ProfileSet) -> None:
    result, changes = normalize(
        chat(temperature=0.3),
        "gpt-4o",
        "openai",
        pinned={"seed": 7},
        strict=True,
        profiles=profiles,
    )

    assert result.sampling.seed == 7
    assert [c.rule for c in changes] == ["pin"]


@pytest.mark.parametrize(
    "pinned", [{"top_kk": 3}, {"temperature": "hot"}, {"reasoning_effort": "extreme"}]
)
def test_invalid_pinned_tuning_is_config_error(profiles: ProfileSet, pinned: dict) -> None:
    with pytest.raises(ConfigError):
        normalize(chat(), "gpt-4o", "openai", pinned=pinned, profiles=profiles)


# --- input safety and misc ------------------------------------------------------------


def test_input_request_is_not_mutated(profiles: ProfileSet) -> None:
    request = chat(temperature=1.5, stop=list("abcdef"), reasoning_effort="high", n=1)
    before = copy.deepcopy(request)

    normalize(request, "claude-sonnet-4-5", "anthropic", profiles=profiles)
    normalize(request, "o3", "openai", profiles=profiles)

    assert request == before


def test_result_lists_are_new_objects(profiles: ProfileSet) -> None:
    request = chat(stop=["x"])

    result, _ = normalize(request, "gpt-4o", "openai", profiles=profiles)

    assert result.messages is not request.messages
    assert result.tools is not request.tools
    assert result.sampling.stop is not request.sampling.stop
    assert result.model == "gpt-4o"


def test_unsupported_reject_policy_raises(profiles: ProfileSet) -> None:
    policy = Policy(unsupported_rules={"top_k": "reject"})

    with pytest.raises(InvalidRequest) as caught:
        normalize(chat(top_k=5), "gpt-4o", "openai", policy=policy, profiles=profiles)

    assert caught.value.param == "top_k"
    assert "does not accept top_k" in caught.value.message


def test_n_above_one_rejected_where_unsupported(profiles: ProfileSet) -> None:
    with pytest.raises(InvalidRequest) as caught:
        normalize(chat(n=3, max_tokens=10), "claude-sonnet-4-5", "anthropic", profiles=profiles)

    assert caught.value.param == "n"


def test_n_of_one_dropped_where_unsupported(profiles: ProfileSet) -> None:
    result, changes = normalize(
        chat(n=1, max_tokens=10), "claude-sonnet-4-5", "anthropic", profiles=profiles
    )

    assert result.sampling.n is None
    assert find(changes, "n", "drop").reason.endswith("the value has no effect")


def test_top_logprobs_sets_logprobs(profiles: ProfileSet) -> None:
    result, changes = normalize(chat(top_logprobs=5), "gpt-4o", "openai", profiles=profiles)

    assert result.sampling.logprobs is True
    assert find(changes, "logprobs", "derive").after is True


def test_top_logprobs_dropped_when_logprobs_false(profiles: ProfileSet) -> None:
    result, changes = normalize(
        chat(top_logprobs=5, logprobs=False), "gpt-4o", "openai", profiles=profiles
    )

    assert result.sampling.top_logprobs is None
    assert find(changes, "top_logprobs", "drop")


def test_cohere_ranges_clamped(profiles: ProfileSet) -> None:
    request = chat(top_p=1.0, frequency_penalty=-1.0, presence_penalty=1.5, top_k=800)

    result, _ = normalize(request, "command-a-03-2025", "cohere", profiles=profiles)

    assert result.sampling.top_p == 0.99
    assert result.sampling.frequency_penalty == 0.0
    assert result.sampling.presence_penalty == 1.0
    assert result.sampling.top_k == 500


def test_gemini_3_pro_effort_moves_to_nearest_level(profiles: ProfileSet) -> None:
    cases = {"minimal": "low", "medium": "high", "xhigh": "high", "none": "low"}
    for effort, level in cases.items():
        result, changes = normalize(
            chat(reasoning_effort=effort), "gemini-3-pro-preview", "gemini", profiles=profiles
        )

        assert result.sampling.reasoning_effort == level, effort
        assert find(changes, "reasoning_effort", "clamp").after == level


def test_gemini_2_5_pro_cannot_turn_thinking_off(profiles: ProfileSet) -> None:
    result, changes = normalize(
        chat(thinking_budget=0), "gemini-2.5-pro", "gemini", profiles=profiles
    )

    assert result.sampling.thinking_budget == 128
    assert "cannot turn thinking off" in find(changes, "thinking_budget", "clamp").reason


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": -0.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_k": True}, "top_k"),
        ({"reasoning_effort": "ultra"}, "reasoning_effort"),
        ({"thinking_budget": -5}, "thinking_budget"),
        ({"stop": "END"}, "stop"),
    ],
)
def test_invalid_canonical_values_rejected(profiles: ProfileSet, value: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        normalize(chat(**value), "gpt-4o", "openai", profiles=profiles)

    assert caught.value.param == param


def test_unknown_provider_is_config_error(profiles: ProfileSet) -> None:
    with pytest.raises(ConfigError):
        normalize(chat(), "gpt-4o", "mistral", profiles=profiles)


def test_unknown_model_gets_default_family(profiles: ProfileSet) -> None:
    result = normalize_detailed(chat(), "my-private-finetune", "anthropic", profiles=profiles)

    assert result.family == "anthropic/claude-4"
