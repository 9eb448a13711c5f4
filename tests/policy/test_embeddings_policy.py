"""The policy engine on POST /v1/embeddings, through a running gateway and the openai SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.conftest import Stack, start_stack, stop_stack
from tests.gateway.clients import openai_client
from tests.policy.test_engine import FailingDetector
from tests.policy.test_gateway_policy import policy_yaml, set_policy

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
EMBED_MODEL = "text-embedding-3-small"

REDACT = policy_yaml("    - {type: EMAIL, action: redact}\n")
TOKENIZE = policy_yaml("    - {type: EMAIL, action: tokenize}\n")
MASK = policy_yaml("    - {type: CREDIT_CARD, action: mask}\n")
DENY = policy_yaml(
    "    - {type: EMAIL, action: redact}\n",
    extra="  content:\n    deny: [{name: project-names, words: [bluebird]}]\n",
    name="deny",
)
RESIDENCY = policy_yaml(
    "    - {type: EMAIL, action: redact}\n",
    extra=(
        "  compliance:\n"
        "    labels_from_entities: [{entity: CREDIT_CARD, label: confidential}]\n"
        "    rules: [{label: confidential, allowed_sites: [on-prem]}]\n"
    ),
    name="residency",
)
AUDIT = (
    "apiVersion: smartflow/v1\nkind: Policy\nmetadata: {name: watch}\n"
    "spec:\n  mode: audit\n  entities:\n    - {type: EMAIL, action: redact}\n"
)
COMPLIANCE_ONLY = (
    "apiVersion: smartflow/v1\nkind: Policy\nmetadata: {name: zones}\n"
    "spec:\n  compliance:\n    rules: [{label: confidential, allowed_sites: [on-prem]}]\n"
)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    models = {
        "embed": [
            {"provider": "openai", "model": EMBED_MODEL, "site": "cloud"},
            {"provider": "azure", "model": EMBED_MODEL, "site": "on-prem"},
        ],
        "embed-cloud": [{"provider": "openai", "model": EMBED_MODEL, "site": "cloud"}],
    }
    running = await start_stack(models=models)
    try:
        yield running
    finally:
        await stop_stack(running)


async def embed(
    stack: Stack, text_input: str | list[str] | list[int], *, model: str = "embed", **extra: Any
) -> Any:
    client = openai_client(stack.url)
    return await client.embeddings.with_raw_response.create(
        model=model,
        input=text_input,
        **extra,
    )


# --- rewriting ------------------------------------------------------------------------


async def test_email_reaches_provider_redacted(stack: Stack) -> None:
    set_policy(stack, REDACT)
    raw = await embed(stack, [f"Write to {EMAIL} today", "nothing here"])
    sent = stack.openai.requests[-1].body
    assert sent["input"] == ["Write to [EMAIL] today", "nothing here"]
    assert raw.headers["x-smartflow-policy"] == (
        "policies=test-policy;request=EMAIL:1;actions=EMAIL:redact"
    )
    result = raw.parse()
    assert len(result.data) == 2
    assert len(result.data[0].embedding) == 1536


async def test_single_string_stays_string(stack: Stack) -> None:
    set_policy(stack, REDACT)
    await embed(stack, f"contact {EMAIL}")
    assert stack.openai.requests[-1].body["input"] == "contact [EMAIL]"


async def test_tokenize_acts_as_redact(stack: Stack) -> None:
    set_policy(stack, TOKENIZE)
    raw = await embed(stack, [f"a {EMAIL}", f"b {EMAIL}"])
    sent = stack.openai.requests[-1].body["input"]
    assert sent == ["a [EMAIL]", "b [EMAIL]"]
    assert "actions=EMAIL:redact" in raw.headers["x-smartflow-policy"]


async def test_mask_keeps_last_digits(stack: Stack) -> None:
    set_policy(stack, MASK)
    await embed(stack, [f"card {CARD}"])
    assert stack.openai.requests[-1].body["input"] == ["card **** **** **** 1111"]


async def test_no_policy_no_header(stack: Stack) -> None:
    raw = await embed(stack, [f"Write to {EMAIL}"])
    assert "x-smartflow-policy" not in raw.headers
    assert stack.openai.requests[-1].body["input"] == [f"Write to {EMAIL}"]


# --- blocking and failure ---------------------------------------------------------------


async def test_deny_word_returns_400(stack: Stack) -> None:
    set_policy(stack, DENY)
    before = len(stack.openai.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        await embed(stack, ["fine", "the Bluebird launch plan"])
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "policy_violation"
    assert "deny/project-names" in body["message"]
    assert len(stack.openai.requests) == before


async def test_failing_detector_fails_closed(stack: Stack) -> None:
    set_policy(stack, REDACT, extra_detectors=[FailingDetector()])
    before = len(stack.openai.requests)
    with pytest.raises(openai.InternalServerError) as caught:
        await embed(stack, [f"Write to {EMAIL}"])
    assert caught.value.status_code == 500
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "policy_evaluation_failed"
    assert len(stack.openai.requests) == before


# --- residency --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "text", "served"),
    [
        (None, "hello", f"openai/{EMBED_MODEL}"),
        ("confidential", "hello", f"azure/{EMBED_MODEL}"),
        (None, f"card {CARD}", f"azure/{EMBED_MODEL}"),
    ],
)
async def test_residency_routes_on_prem(
    stack: Stack, labels: str | None, text: str, served: str
) -> None:
    set_policy(stack, RESIDENCY)
    headers = {"x-smartflow-classification": labels} if labels else {}
    raw = await embed(stack, [text], extra_headers=headers)
    assert raw.headers["x-smartflow-deployment"] == served


async def test_residency_rejects_cloud_only(stack: Stack) -> None:
    set_policy(stack, RESIDENCY)
    before = len(stack.openai.requests)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await embed(
            stack,
            ["hello"],
            model="embed-cloud",
            extra_headers={"x-smartflow-classification": "confidential"},
        )
    assert caught.value.status_code == 403
    message = str(caught.value)
    assert "'confidential'" in message
    assert "'residency'" in message
    assert "on-prem" in message
    assert len(stack.openai.requests) == before


# --- token arrays -----------------------------------------------------------------------


async def test_token_arrays_rejected_when_enforced(stack: Stack) -> None:
    set_policy(stack, REDACT)
    before = len(stack.openai.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        await embed(stack, [1212, 318, 257])
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "input"
    assert "test-policy" in body["message"]
    assert len(stack.openai.requests) == before


async def test_token_arrays_pass_audit_with_note(stack: Stack) -> None:
    set_policy(stack, AUDIT)
    raw = await embed(stack, [1212, 318, 257])
    assert raw.headers["x-smartflow-policy"] == "policies=watch;audit=watch;unscanned=token_arrays"
    assert stack.openai.requests[-1].body["input"] == [1212, 318, 257]


async def test_token_arrays_follow_residency(stack: Stack) -> None:
    set_policy(stack, COMPLIANCE_ONLY)
    raw = await embed(
        stack, [[1212, 318]], extra_headers={"x-smartflow-classification": "confidential"}
    )
    assert raw.headers["x-smartflow-deployment"] == f"azure/{EMBED_MODEL}"
    assert "unscanned" not in raw.headers["x-smartflow-policy"]
