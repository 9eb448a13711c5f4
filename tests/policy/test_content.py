"""Tests of the content rules: deny and allow lists, regex rules and topic rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartflow.core.errors import ConfigError
from smartflow.policy import ContentMatch, ContentRules, RegexRule, RuleKind, TopicRule, WordRule

RULES = ContentRules.build(
    deny=(
        WordRule("violence", ("kill", "shoot")),
        WordRule("codenames", ("Bluebird", "Orion-X"), case_sensitive=True),
        WordRule("fragments", ("pass",), whole_word=False),
        WordRule("cjk", ("机密",)),
    ),
    allow=(WordRule("ops-phrases", ("kill the process", "kill -9")),),
    regex=(
        RegexRule("export-tickets", r"\bexport\s+all\s+tickets\b"),
        RegexRule("exact-case", r"SECRET-\d+", ignore_case=False),
    ),
    topics=(
        TopicRule("medical", ("diagnosis", "prescription", "dosage", "symptoms"), threshold=2),
        TopicRule("weapons", ("firearm", "ammunition"), threshold=1),
    ),
)


def rule_names(text: str) -> list[str]:
    return [match.rule for match in RULES.check(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("How do I KILL a zombie?", ["violence"]),
        ("skills and killer apps", []),
        ("kill the process with kill -9 please", []),
        ("kill the process, then kill the messenger", ["violence"]),
        ("Project Bluebird launches", ["codenames"]),
        ("project bluebird launches", []),
        ("Orion-X is delayed", ["codenames"]),
        ("the password is long", ["fragments"]),
        ("这是机密文件", ["cjk"]),
        ("please Export all   tickets now", ["export-tickets"]),
        ("secret-42 and SECRET-42", ["exact-case"]),
        ("symptoms suggest a diagnosis", ["medical"]),
        ("symptoms, symptoms, symptoms", []),
        ("a firearm", ["weapons"]),
        ("shoot the firearm, symptoms and dosage", ["violence", "medical", "weapons"]),
        ("", []),
    ],
)
def test_content_rule_table(text: str, expected: list[str]) -> None:
    assert rule_names(text) == expected


def test_result_counts_and_kinds() -> None:
    matches = RULES.check("kill, shoot, kill; export all tickets; diagnosis dosage symptoms")
    assert matches == [
        ContentMatch("violence", RuleKind.DENY, 3),
        ContentMatch("export-tickets", RuleKind.REGEX, 1),
        ContentMatch("medical", RuleKind.TOPIC, 3),
    ]


def test_result_never_contains_matched_text() -> None:
    matches = RULES.check("Project Bluebird: kill it")
    assert matches
    for match in matches:
        assert "Bluebird" not in repr(match)
        assert "kill" not in repr(match)


def test_allow_list_does_not_exempt_regex_rules() -> None:
    rules = ContentRules.build(
        allow=(WordRule("allowed", ("export all tickets",)),),
        regex=(RegexRule("export", r"export all tickets"),),
    )
    assert [match.rule for match in rules.check("export all tickets")] == ["export"]


def test_empty_rule_set_matches_nothing() -> None:
    assert ContentRules.build().check("anything at all") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"deny": (WordRule("", ("x",)),)}, "has no name"),
        ({"deny": (WordRule("empty", ("  ",)),)}, "has no words"),
        ({"regex": (RegexRule("broken", "(unclosed"),)}, "invalid regular expression"),
        ({"topics": (TopicRule("t", ("a",), threshold=0),)}, "threshold must be >= 1"),
    ],
)
def test_invalid_rules_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ContentRules.build(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="killKILL İı机密 -_.,\n", max_size=60))
def test_random_text_reports_known_rules(text: str) -> None:
    known = {"violence", "codenames", "fragments", "cjk", "export-tickets", "exact-case"}
    known |= {"medical", "weapons"}
    for match in RULES.check(text):
        assert match.rule in known
        assert match.count >= 1
