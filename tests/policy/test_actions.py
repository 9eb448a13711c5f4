"""Tests of the rewrite actions: redact, mask, tokenize, detokenize and block."""

from __future__ import annotations

import pytest

from smartflow.core.errors import PolicyViolation
from smartflow.policy import (
    Action,
    DetectorSet,
    EntityBlocked,
    TokenVault,
    apply_actions,
    block,
    detokenize,
    mask,
    mask_value,
    redact,
    tokenize,
)

DETECTORS = DetectorSet.build()
TEXT = (
    "Mail jane.roe@example.org or omar@example.com, card 4111 1111 1111 1111, "
    "again jane.roe@example.org."
)


def test_redact_uses_entity_labels() -> None:
    assert redact(TEXT, DETECTORS.find(TEXT)) == (
        "Mail [EMAIL] or [EMAIL], card [CREDIT_CARD], again [EMAIL]."
    )


def test_redact_without_findings_returns_text() -> None:
    assert redact("nothing here", []) == "nothing here"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4111 1111 1111 1111", "**** **** **** 1111"),
        ("4111-1111-1111-1111", "****-****-****-1111"),
        ("jane.roe@example.org", "****.***@******e.org"),
        ("+1 415 555 2671", "+* *** *** 2671"),
        ("AB12345", "****345"),
        ("12345678", "****5678"),
        ("1234", "****"),
        ("", ""),
    ],
)
def test_mask_value_keeps_last_four_and_separators(value: str, expected: str) -> None:
    assert mask_value(value) == expected


def test_mask_rewrites_each_finding() -> None:
    text = "card 4111 1111 1111 1111 ok"
    assert mask(text, DETECTORS.find(text)) == "card **** **** **** 1111 ok"


def test_tokenize_is_stable_per_value() -> None:
    rewritten, vault = tokenize(TEXT, DETECTORS.find(TEXT))
    assert rewritten == ("Mail <EMAIL_1> or <EMAIL_2>, card <CREDIT_CARD_1>, again <EMAIL_1>.")
    assert dict(vault) == {
        "<EMAIL_1>": "jane.roe@example.org",
        "<EMAIL_2>": "omar@example.com",
        "<CREDIT_CARD_1>": "4111 1111 1111 1111",
    }


def test_tokenize_shares_vault_across_messages() -> None:
    first = "from jane.roe@example.org"
    second = "cc omar@example.com and jane.roe@example.org"
    rewritten_first, vault = tokenize(first, DETECTORS.find(first))
    rewritten_second, same_vault = tokenize(second, DETECTORS.find(second), vault)
    assert same_vault is vault
    assert rewritten_first == "from <EMAIL_1>"
    assert rewritten_second == "cc <EMAIL_2> and <EMAIL_1>"


def test_detokenize_restores_originals() -> None:
    rewritten, vault = tokenize(TEXT, DETECTORS.find(TEXT))
    answer = "I will write to <EMAIL_1> and charge <CREDIT_CARD_1>; <EMAIL_9> is unknown."
    assert detokenize(answer, vault) == (
        "I will write to jane.roe@example.org and charge 4111 1111 1111 1111; <EMAIL_9> is unknown."
    )
    assert detokenize(rewritten, vault) == TEXT


def test_detokenize_with_empty_vault_is_identity() -> None:
    assert detokenize("<EMAIL_1>", TokenVault()) == "<EMAIL_1>"


def test_block_raises_policy_violation_without_value() -> None:
    findings = DETECTORS.find(TEXT)
    with pytest.raises(PolicyViolation) as caught:
        block(findings, rule="no-pii")
    error = caught.value
    assert isinstance(error, EntityBlocked)
    assert error.rule == "no-pii"
    assert error.entity == "EMAIL"
    assert "no-pii" in error.message
    assert "EMAIL" in error.message
    assert "jane.roe" not in str(error)
    assert error.status == 400
    assert error.code == "policy_violation"


def test_block_without_findings_passes() -> None:
    block([], rule="no-pii")


def test_apply_actions_per_entity() -> None:
    findings = DETECTORS.find(TEXT)
    result = apply_actions(
        TEXT, findings, {"EMAIL": Action.TOKENIZE, "CREDIT_CARD": Action.MASK}, rule="pii"
    )
    assert result.text == (
        "Mail <EMAIL_1> or <EMAIL_2>, card **** **** **** 1111, again <EMAIL_1>."
    )
    assert result.vault is not None
    assert result.vault["<EMAIL_2>"] == "omar@example.com"
    assert result.counts == {"EMAIL": 3, "CREDIT_CARD": 1}


def test_apply_actions_leaves_unlisted_entities() -> None:
    findings = DETECTORS.find(TEXT)
    result = apply_actions(TEXT, findings, {"CREDIT_CARD": Action.REDACT}, rule="cards")
    assert result.text == TEXT.replace("4111 1111 1111 1111", "[CREDIT_CARD]")
    assert result.vault is None
    assert result.counts == {"CREDIT_CARD": 1}


def test_apply_actions_blocks_before_rewriting() -> None:
    findings = DETECTORS.find(TEXT)
    actions = {"EMAIL": Action.REDACT, "CREDIT_CARD": Action.BLOCK}
    with pytest.raises(EntityBlocked) as caught:
        apply_actions(TEXT, findings, actions, rule="no-cards")
    assert caught.value.entity == "CREDIT_CARD"
    assert caught.value.rule == "no-cards"


def test_apply_actions_reuses_given_vault() -> None:
    vault = TokenVault()
    vault.placeholder_for("EMAIL", "someone@example.net")
    findings = DETECTORS.find(TEXT)
    result = apply_actions(TEXT, findings, {"EMAIL": Action.TOKENIZE}, rule="pii", vault=vault)
    assert result.vault is vault
    assert result.text.startswith("Mail <EMAIL_2> or <EMAIL_3>")
    assert len(vault) == 3


def test_vault_max_placeholder_length() -> None:
    vault = TokenVault()
    assert vault.max_placeholder_length == 0
    vault.placeholder_for("CREDIT_CARD", "4111111111111111")
    assert vault.max_placeholder_length == len("<CREDIT_CARD_1>")
