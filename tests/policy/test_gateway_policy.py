"""The policy engine in the gateway's request path, judged by both official SDKs.

The simulators echo the user's text ("Hello from <model>. You said: <text>"), so a value
that the gateway tokenized comes back as a placeholder that must be restored, and a
response rule sees values in the model output.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from smartflow.config.schema import parse_config
from smartflow.gateway.app import GATEWAY_KEY, POLICY_STORE_KEY, build_app, start_gateway
from smartflow.policy.documents import parse_documents
from smartflow.policy.engine import compile_policies
from smartflow.policy.loading import BUILTIN_DEFAULT
from smartflow.sim.script import split_chunks
from tests.conftest import PROVIDER_KEY, Stack, stack_config, start_stack, stop_stack
from tests.gateway.clients import anthropic_chat, anthropic_client, openai_chat, openai_client
from tests.policy.test_engine import FailingDetector

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
PROMPT = f"Mail {EMAIL} about card {CARD} today"

# (ingress, public model): the first two pass through, the last two are translated.
ROUTES = [
    ("openai", "gpt-4o"),
    ("anthropic", "claude-sonnet-4-5"),
    ("openai", "claude-sonnet-4-5"),
    ("anthropic", "gpt-4o"),
]
SIM_OF_MODEL = {"gpt-4o": "openai", "claude-sonnet-4-5": "anthropic"}


def policy_yaml(entities: str, *, extra: str = "", name: str = "test-policy") -> str:
    return (
        f"apiVersion: smartflow/v1\nkind: Policy\nmetadata: {{name: {name}}}\n"
        f"spec:\n  entities:\n{entities}{extra}"
    )


REDACT = policy_yaml(
    "    - {type: EMAIL, action: redact}\n    - {type: CREDIT_CARD, action: redact}\n"
)
TOKENIZE = policy_yaml(
    "    - {type: EMAIL, action: tokenize}\n    - {type: CREDIT_CARD, action: tokenize}\n"
)


def set_policy(stack: Stack, text: str, **options: Any) -> None:
    gateway = stack.gateway.runner.app[GATEWAY_KEY]
    gateway.set_policy(compile_policies(parse_documents(text), **options))


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    models = {
        "residency-model": [
            {"provider": "openai", "model": "gpt-4o", "site": "cloud"},
            {"provider": "anthropic", "model": "claude-sonnet-4-5", "site": "on-prem"},
        ],
        "cloud-only": [{"provider": "openai", "model": "gpt-4o-mini", "site": "cloud"}],
    }
    running = await start_stack(models=models)
    try:
        yield running
    finally:
        await stop_stack(running)


async def chat(url: str, ingress: str, model: str, text: str, *, stream: bool) -> str:
    messages = [{"role": "user", "content": text}]
    if ingress == "openai":
        return (await openai_chat(url, model, messages, stream=stream)).text
    return (await anthropic_chat(url, model, messages, stream=stream)).text


def last_body(stack: Stack, model: str) -> str:
    return json.dumps(stack.sim(SIM_OF_MODEL[model]).requests[-1].body)


# --- before the call ------------------------------------------------------------------


@pytest.mark.parametrize(("ingress", "model"), ROUTES)
async def test_redacted_prompt_reaches_provider(stack: Stack, ingress: str, model: str) -> None:
    set_policy(stack, REDACT)
    text = await chat(stack.url, ingress, model, PROMPT, stream=False)
    sent = last_body(stack, model)
    assert EMAIL not in sent
    assert CARD not in sent
    assert "Mail [EMAIL] about card [CREDIT_CARD] today" in sent
    assert text.endswith("You said: Mail [EMAIL] about card [CREDIT_CARD] today")


async def test_redacted_system_prompt_and_header(stack: Stack) -> None:
    set_policy(stack, REDACT)
    client = openai_client(stack.url)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": f"Escalate to {EMAIL}."},
            {"role": "user", "content": [{"type": "text", "text": f"card {CARD}"}]},
        ],
    )
    header = raw.headers["x-smartflow-policy"]
    assert header == (
        "policies=test-policy;request=CREDIT_CARD:1,EMAIL:1;actions=CREDIT_CARD:redact,EMAIL:redact"
    )
    sent = stack.openai.requests[-1].body
    assert sent["messages"][0]["content"] == "Escalate to [EMAIL]."
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "card [CREDIT_CARD]"}]


async def test_anthropic_tool_result_redacted(stack: Stack) -> None:
    set_policy(stack, REDACT)
    client = anthropic_client(stack.url)
    await client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        system=[{"type": "text", "text": f"Owner: {EMAIL}"}],
        messages=[
            {"role": "user", "content": "Look up the owner."},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": EMAIL}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": f"card {CARD}"}
                ],
            },
        ],
        tools=[{"name": "lookup", "input_schema": {"type": "object"}}],
    )
    sent = stack.anthropic.requests[-1].body
    assert sent["system"] == [{"type": "text", "text": "Owner: [EMAIL]"}]
    assert sent["messages"][1]["content"][0]["input"] == {"q": "[EMAIL]"}
    assert sent["messages"][2]["content"][0]["content"] == "card [CREDIT_CARD]"


async def test_count_tokens_text_redacted(stack: Stack) -> None:
    set_policy(stack, REDACT)
    client = anthropic_client(stack.url)
    counted = await client.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": PROMPT}]
    )
    assert counted.input_tokens > 0
    sent = stack.anthropic.requests[-1]
    assert sent.path == "/v1/messages/count_tokens"
    assert "Mail [EMAIL] about card [CREDIT_CARD] today" in json.dumps(sent.body)
    assert EMAIL not in json.dumps(sent.body)


@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
async def test_block_rule_rejects_before_call(stack: Stack, ingress: str) -> None:
    set_policy(stack, policy_yaml("    - {type: CREDIT_CARD, action: block}\n", name="no-cards"))
    before = len(stack.openai.requests)
    error_type = openai.BadRequestError if ingress == "openai" else anthropic.BadRequestError
    with pytest.raises(error_type) as caught:
        await chat(stack.url, ingress, "gpt-4o", PROMPT, stream=False)
    assert "no-cards" in str(caught.value)
    assert "4111" not in str(caught.value)
    assert len(stack.openai.requests) == before


# --- tokenize and restore -------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("ingress", "model"), ROUTES)
async def test_tokenized_values_restored(
    stack: Stack, ingress: str, model: str, stream: bool
) -> None:
    set_policy(stack, TOKENIZE)
    text = await chat(stack.url, ingress, model, PROMPT, stream=stream)
    sent = last_body(stack, model)
    assert EMAIL not in sent
    assert CARD not in sent
    assert "Mail <EMAIL_1> about card <CREDIT_CARD_1> today" in sent
    assert text.endswith(f"You said: {PROMPT}")
    assert "<EMAIL_1>" not in text


# --- response rules and streams -------------------------------------------------------

RESPONSE_REDACT = policy_yaml("    - {type: CREDIT_CARD, action: redact, on: [response]}\n")


def test_simulator_splits_card_across_chunks() -> None:
    # The stream tests below rely on this: no single chunk contains the whole card number.
    chunks = split_chunks(f"Hello from gpt-4o. You said: {PROMPT}")
    assert not any(CARD in chunk for chunk in chunks)
    assert any("4111" in chunk for chunk in chunks)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("ingress", "model"), ROUTES)
async def test_response_rule_redacts_model_value(
    stack: Stack, ingress: str, model: str, stream: bool
) -> None:
    set_policy(stack, RESPONSE_REDACT)
    text = await chat(stack.url, ingress, model, PROMPT, stream=stream)
    assert CARD in last_body(stack, model)
    assert CARD not in text
    assert "4111" not in text
    assert text.endswith(f"You said: Mail {EMAIL} about card [CREDIT_CARD] today")


@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
async def test_response_block_ends_stream(stack: Stack, ingress: str) -> None:
    set_policy(stack, policy_yaml("    - {type: CREDIT_CARD, action: block, on: [response]}\n"))
    error_type = openai.APIError if ingress == "openai" else anthropic.APIStatusError
    with pytest.raises(error_type) as caught:
        await chat(stack.url, ingress, "gpt-4o", PROMPT, stream=True)
    assert "test-policy" in str(caught.value)
    assert "4111" not in str(caught.value)


async def test_response_block_whole_response(stack: Stack) -> None:
    set_policy(stack, policy_yaml("    - {type: CREDIT_CARD, action: block, on: [response]}\n"))
    with pytest.raises(openai.BadRequestError, match="test-policy"):
        await chat(stack.url, "openai", "gpt-4o", PROMPT, stream=False)


# --- failures and audit ---------------------------------------------------------------


@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
async def test_failing_detector_blocks_request(stack: Stack, ingress: str) -> None:
    set_policy(stack, REDACT, extra_detectors=[FailingDetector()])
    before = len(stack.openai.requests)
    error_type = (
        openai.InternalServerError if ingress == "openai" else anthropic.InternalServerError
    )
    with pytest.raises(error_type) as caught:
        await chat(stack.url, ingress, "gpt-4o", PROMPT, stream=False)
    assert "policy evaluation failed" in str(caught.value)
    assert EMAIL not in str(caught.value)
    assert len(stack.openai.requests) == before


async def test_failing_detector_open_lets_through(stack: Stack) -> None:
    text = REDACT + "  failure: open\n"
    set_policy(stack, text, extra_detectors=[FailingDetector()])
    client = openai_client(stack.url)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}]
    )
    # The request and the response evaluation each failed once and were let through.
    assert "errors=2" in raw.headers["x-smartflow-policy"]
    assert EMAIL in last_body(stack, "gpt-4o")


async def test_audit_mode_records_only(stack: Stack) -> None:
    audit = policy_yaml(
        "    - {type: CREDIT_CARD, action: block}\n    - {type: EMAIL, action: redact}\n",
        extra="  mode: audit\n",
        name="watch",
    )
    set_policy(stack, audit)
    client = anthropic_client(stack.url)
    raw = await client.messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": PROMPT}],
    )
    message = await raw.parse()
    assert message.content[0].text.endswith(f"You said: {PROMPT}")  # type: ignore[union-attr]
    assert PROMPT in last_body(stack, "claude-sonnet-4-5")
    header = raw.headers["x-smartflow-policy"]
    assert "request=CREDIT_CARD:1,EMAIL:1" in header
    assert "audit=watch" in header
    assert "actions=" not in header


# --- residency ------------------------------------------------------------------------

RESIDENCY = policy_yaml(
    "    - {type: EMAIL, action: redact}\n",
    extra=(
        "  compliance:\n"
        "    labels_from_entities: [{entity: CREDIT_CARD, label: confidential}]\n"
        "    rules: [{label: confidential, allowed_sites: [on-prem], store_bodies: false}]\n"
    ),
    name="residency",
)


@pytest.mark.parametrize(
    ("labels", "prompt", "served"),
    [
        (None, "hello", "openai/gpt-4o"),
        ("confidential", "hello", "anthropic/claude-sonnet-4-5"),
        ("public, Confidential", "hello", "anthropic/claude-sonnet-4-5"),
        (None, f"card {CARD}", "anthropic/claude-sonnet-4-5"),
    ],
)
async def test_residency_routes_confidential_on_prem(
    stack: Stack, labels: str | None, prompt: str, served: str
) -> None:
    set_policy(stack, RESIDENCY)
    headers = {"x-smartflow-classification": labels} if labels else {}
    client = openai_client(stack.url)
    raw = await client.chat.completions.with_raw_response.create(
        model="residency-model",
        messages=[{"role": "user", "content": prompt}],
        extra_headers=headers,
    )
    assert raw.headers["x-smartflow-deployment"] == served


@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
async def test_residency_rejects_cloud_only_model(stack: Stack, ingress: str) -> None:
    set_policy(stack, RESIDENCY)
    before = len(stack.openai.requests)
    headers = {"x-smartflow-classification": "confidential"}
    messages = [{"role": "user", "content": "hello"}]
    if ingress == "openai":
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await openai_client(stack.url).chat.completions.create(
                model="cloud-only", messages=messages, extra_headers=headers
            )
    else:
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            await anthropic_client(stack.url).messages.create(
                model="cloud-only", max_tokens=10, messages=messages, extra_headers=headers
            )
    message = str(caught.value)
    assert "'confidential'" in message
    assert "'residency'" in message
    assert "on-prem" in message
    assert len(stack.openai.requests) == before


# --- loading at start -----------------------------------------------------------------


async def start_configured(tmp_path: Path, urls: list[str], **top: Any) -> Any:
    data = stack_config(*urls)
    data.update(top)
    app = build_app(parse_config(data), environ={"TEST_PROVIDER_KEY": PROVIDER_KEY})
    return app, await start_gateway(app, "127.0.0.1", 0)


async def test_policy_files_and_store_versions(stack: Stack, tmp_path: Path) -> None:
    urls = [stack.openai.base_url, stack.azure.base_url, stack.anthropic.base_url]
    app, running = await start_configured(
        tmp_path, urls, state_dir=str(tmp_path), policy_files=[BUILTIN_DEFAULT]
    )
    try:
        gateway = app[GATEWAY_KEY]
        assert gateway.policy is not None
        assert gateway.policy.names == ("default-redaction",)
        text = await chat(running.url, "openai", "gpt-4o", PROMPT, stream=False)
        assert text.endswith("You said: Mail [EMAIL] about card [CREDIT_CARD] today")

        app[POLICY_STORE_KEY].apply(parse_documents(TOKENIZE), author="test")
        assert gateway.policy.names == ("test-policy",)
        text = await chat(running.url, "openai", "gpt-4o", PROMPT, stream=False)
        assert text.endswith(f"You said: {PROMPT}")
    finally:
        await running.stop()

    # A restart loads the store's active version, which wins over policy_files.
    app, running = await start_configured(
        tmp_path, urls, state_dir=str(tmp_path), policy_files=[BUILTIN_DEFAULT]
    )
    try:
        assert app[GATEWAY_KEY].policy.names == ("test-policy",)
    finally:
        await running.stop()
