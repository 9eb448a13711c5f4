"""Optional recognisers switched on per policy: validation, compiling, and a running gateway.

Presidio is not installed here, so its tests cover the rejection path. The plumbing is
proven with a recogniser defined below that finds one fixed word, registered in the same
registry as ``presidio``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import openai
import pytest

from smartflow.core.types import ChatRequest, Message, TextPart
from smartflow.gateway.app import POLICY_STORE_KEY
from smartflow.policy.detectors import Detector, Finding, ScanContext
from smartflow.policy.documents import (
    PolicyDocument,
    PolicyValidationError,
    parse_documents,
    validate_documents,
)
from smartflow.policy.engine import RequestContext, compile_policies
from smartflow.policy.recognizers import (
    PRESIDIO,
    RecognizerError,
    RecognizerOptions,
    register_recognizer,
    registered_recognizers,
    unregister_recognizer,
)
from smartflow.policy.store import PolicyStore
from tests.conftest import Stack
from tests.gateway.clients import anthropic_client, openai_client

WORD = "Bluebird"
CODENAME = "CODENAME"
SCORE = 0.8
CONTEXT = RequestContext(site="local", team="qa", key="test", model="gpt-4o")


class FixedWordDetector:
    """Reports every whole-word ``Bluebird`` as CODENAME, with the score ``SCORE``."""

    keywords: Mapping[str, tuple[str, ...]] = {}
    anchors: Mapping[str, tuple[str, ...]] = {}

    def __init__(self, options: RecognizerOptions) -> None:
        self.options = options

    @property
    def entities(self) -> frozenset[str]:
        return self.options.entities

    def find(self, scan: ScanContext) -> list[Finding]:
        if SCORE < self.options.min_score:
            return []
        return [
            Finding(CODENAME, match.start(), match.end(), match.group())
            for match in re.finditer(rf"\b{WORD}\b", scan.text)
        ]


class FixedWordRecognizer:
    """A recogniser factory that counts the detectors it creates."""

    name = "fixed-word"

    def __init__(self) -> None:
        self.created = 0

    def create(self, options: RecognizerOptions) -> Detector:
        unsupported = sorted(options.entities - {CODENAME})
        if unsupported:
            raise RecognizerError(
                f"fixed-word reports only {CODENAME}, not {', '.join(unsupported)}",
                param="entities",
            )
        self.created += 1
        return FixedWordDetector(options)


@pytest.fixture
def fixed_word() -> Iterator[FixedWordRecognizer]:
    factory = FixedWordRecognizer()
    register_recognizer(factory)
    try:
        yield factory
    finally:
        unregister_recognizer(factory.name)


def policy(name: str, spec: str) -> str:
    return f"apiVersion: smartflow/v1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n{spec}"


def recognizer_policy(action: str = "redact", *, name: str = "codenames", extra: str = "") -> str:
    entry = f"{{name: fixed-word, entities: [{CODENAME}], action: {action}{extra}}}"
    return policy(name, f"  recognizers:\n    - {entry}\n")


EMAIL_POLICY = policy("emails", "  entities:\n    - {type: EMAIL, action: redact}\n")
PRESIDIO_POLICY = policy(
    "names",
    "  recognizers:\n"
    "    - {name: presidio, entities: [PERSON, LOCATION], min_score: 0.6, action: redact}\n",
)

needs_no_presidio = pytest.mark.skipif(
    importlib.util.find_spec("presidio_analyzer") is not None,
    reason="presidio_analyzer is installed, so the not-installed path cannot be reached",
)


def user(text: str) -> ChatRequest:
    return ChatRequest(model="gpt-4o", messages=[Message("user", [TextPart(text)])])


def store_of(stack: Stack) -> PolicyStore[Any]:
    return stack.gateway.runner.app[POLICY_STORE_KEY]


def sent_text(stack: Stack) -> str:
    return json.dumps(stack.openai.requests[-1].body)


async def ask_openai(stack: Stack, text: str) -> tuple[str, str]:
    """Send ``text`` through the gateway; return the reply and the x-smartflow-policy header."""
    client = openai_client(stack.url)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}]
    )
    reply = raw.parse().choices[0].message.content or ""
    return reply, raw.headers.get("x-smartflow-policy", "")


# --- documents ------------------------------------------------------------------------


def test_recognizer_entry_defaults() -> None:
    (document,) = parse_documents(recognizer_policy())
    (rule,) = document.spec.recognizers
    assert rule.name == "fixed-word"
    assert rule.entities == [CODENAME]
    assert rule.min_score == 0.5
    assert rule.language == "en"
    assert rule.model == ""
    assert rule.on == ["request", "response"]


def test_no_recognizers_by_default() -> None:
    (document,) = parse_documents(EMAIL_POLICY)
    assert document.spec.recognizers == []


@pytest.mark.parametrize(
    ("extra", "path", "text"),
    [
        (", model: ../models/en_core_web_lg", "spec.recognizers[0].model", "not a path"),
        (", min_score: 1.5", "spec.recognizers[0].min_score", "less than or equal to 1"),
        (", language: English", "spec.recognizers[0].language", "invalid language code"),
        (", bogus: 1", "spec.recognizers[0].bogus", "unknown field"),
    ],
)
def test_invalid_recognizer_fields(extra: str, path: str, text: str) -> None:
    with pytest.raises(PolicyValidationError) as caught:
        parse_documents(recognizer_policy(extra=extra))
    assert caught.value.document == "codenames"
    assert caught.value.path == path
    assert text in caught.value.message


def test_recognizer_entity_listed_twice() -> None:
    text = policy(
        "twice",
        "  recognizers:\n"
        "    - {name: fixed-word, entities: [CODENAME], action: redact}\n"
        "    - {name: presidio, entities: [codename], action: mask}\n",
    )
    with pytest.raises(PolicyValidationError) as caught:
        parse_documents(text)
    assert caught.value.path == "spec.recognizers"
    assert "'CODENAME' is listed twice" in caught.value.message


def test_recognizer_entity_clashes_with_custom() -> None:
    text = recognizer_policy() + (
        "  custom:\n    word_lists: [{name: codename, words: [falcon], action: mask}]\n"
    )
    with pytest.raises(PolicyValidationError) as caught:
        parse_documents(text)
    assert caught.value.path == "spec.recognizers[0].entities[0]"
    assert "also a custom entity" in caught.value.message


# --- compiling ------------------------------------------------------------------------


def test_presidio_is_registered() -> None:
    assert PRESIDIO in registered_recognizers()


@needs_no_presidio
def test_presidio_not_installed_fails_compile() -> None:
    with pytest.raises(PolicyValidationError) as caught:
        compile_policies(parse_documents(PRESIDIO_POLICY))
    issue = caught.value.issues[0]
    assert issue.document == "names"
    assert issue.path == "spec.recognizers[0].name"
    assert "'presidio' is not installed" in issue.message
    assert "pip install presidio-analyzer" in issue.message
    assert "spaCy model" in issue.message


def test_unknown_recognizer_fails_compile(fixed_word: FixedWordRecognizer) -> None:
    text = policy(
        "typo", "  recognizers:\n    - {name: presidi0, entities: [PERSON], action: mask}\n"
    )
    with pytest.raises(PolicyValidationError) as caught:
        compile_policies(parse_documents(text))
    assert caught.value.document == "typo"
    assert caught.value.path == "spec.recognizers[0].name"
    assert "unknown recognizer 'presidi0'" in caught.value.message
    assert "fixed-word" in caught.value.message
    assert PRESIDIO in caught.value.message


def test_unsupported_entity_fails_compile(fixed_word: FixedWordRecognizer) -> None:
    text = policy(
        "people", "  recognizers:\n    - {name: fixed-word, entities: [PERSON], action: mask}\n"
    )
    with pytest.raises(PolicyValidationError) as caught:
        compile_policies(parse_documents(text))
    assert caught.value.path == "spec.recognizers[0].entities"
    assert "not PERSON" in caught.value.message


def test_recognizer_redacts_in_evaluator(fixed_word: FixedWordRecognizer) -> None:
    evaluator = compile_policies(parse_documents(recognizer_policy()))
    run = evaluator.evaluate_request(CONTEXT, user(f"Ship {WORD} today"))
    assert run.request is not None
    assert run.request.messages[0].text() == f"Ship [{CODENAME}] today"


def test_min_score_drops_findings(fixed_word: FixedWordRecognizer) -> None:
    evaluator = compile_policies(parse_documents(recognizer_policy(extra=", min_score: 0.9")))
    run = evaluator.evaluate_request(CONTEXT, user(f"Ship {WORD} today"))
    assert run.request is not None
    assert run.request.messages[0].text() == f"Ship {WORD} today"


def test_equal_entries_share_one_detector(fixed_word: FixedWordRecognizer) -> None:
    documents = parse_documents(recognizer_policy(name="a") + "---\n" + recognizer_policy(name="b"))
    compile_policies(documents)
    assert fixed_word.created == 1


def test_label_from_recognizer_entity(fixed_word: FixedWordRecognizer) -> None:
    text = recognizer_policy(extra=", on: [response]") + (
        "  compliance:\n    labels_from_entities: [{entity: CODENAME, label: secret-project}]\n"
    )
    evaluator = compile_policies(parse_documents(text))
    run = evaluator.evaluate_request(CONTEXT, user(f"Ship {WORD} today"))
    assert run.request is not None
    assert run.request.messages[0].text() == f"Ship {WORD} today"
    assert "secret-project" in run.decision.labels


def test_plan_without_switch_has_no_recognizer(fixed_word: FixedWordRecognizer) -> None:
    evaluator = compile_policies(parse_documents(EMAIL_POLICY))
    plan = evaluator.plan_for(CONTEXT)
    detectors = plan.detectors["request"]
    assert detectors is not None
    assert CODENAME not in detectors.entities
    assert fixed_word.created == 0


# --- the policy store -----------------------------------------------------------------


@needs_no_presidio
def test_store_rejects_presidio_not_installed(tmp_path: Path) -> None:
    store: PolicyStore[Any] = PolicyStore(tmp_path, compile_policies)
    store.apply(parse_documents(EMAIL_POLICY), author="alice")
    with pytest.raises(PolicyValidationError) as caught:
        store.apply(parse_documents(PRESIDIO_POLICY), author="alice")
    assert str(caught.value).startswith("invalid policy: names: spec.recognizers[0].name: ")
    assert "pip install presidio-analyzer" in str(caught.value)
    active = store.active
    assert active is not None
    assert active.version.version == 1
    assert active.version.names == ["emails"]
    assert [path.name for path in tmp_path.iterdir()] == ["v000001.json"]


# --- through a running gateway --------------------------------------------------------


@needs_no_presidio
async def test_gateway_keeps_policy_when_presidio_missing(stack: Stack) -> None:
    store = store_of(stack)
    store.apply(parse_documents(EMAIL_POLICY), author="alice")
    with pytest.raises(PolicyValidationError) as caught:
        store.apply(parse_documents(PRESIDIO_POLICY), author="alice")
    assert caught.value.path == "spec.recognizers[0].name"
    await ask_openai(stack, "Mail jane.doe@example.com about Jane Doe")
    assert "jane.doe@example.com" not in sent_text(stack)
    assert "Mail [EMAIL] about Jane Doe" in sent_text(stack)


async def test_gateway_redacts_recognizer_findings(
    stack: Stack, fixed_word: FixedWordRecognizer
) -> None:
    store_of(stack).apply(parse_documents(recognizer_policy()), author="alice")
    reply, header = await ask_openai(stack, f"Ship {WORD} on Friday")
    assert WORD not in sent_text(stack)
    assert f"Ship [{CODENAME}] on Friday" in sent_text(stack)
    assert reply.endswith(f"You said: Ship [{CODENAME}] on Friday")
    assert f"actions={CODENAME}:redact" in header
    assert "policies=codenames" in header


async def test_gateway_redacts_on_anthropic_ingress(
    stack: Stack, fixed_word: FixedWordRecognizer
) -> None:
    store_of(stack).apply(parse_documents(recognizer_policy()), author="alice")
    client = anthropic_client(stack.url)
    await client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=50,
        messages=[{"role": "user", "content": f"Ship {WORD} on Friday"}],
    )
    sent = json.dumps(stack.anthropic.requests[-1].body)
    assert WORD not in sent
    assert f"Ship [{CODENAME}] on Friday" in sent


async def test_gateway_tokenizes_and_restores(
    stack: Stack, fixed_word: FixedWordRecognizer
) -> None:
    store_of(stack).apply(parse_documents(recognizer_policy("tokenize")), author="alice")
    reply, _ = await ask_openai(stack, f"Ship {WORD} on Friday")
    assert WORD not in sent_text(stack)
    assert f"<{CODENAME}_1>" in sent_text(stack)
    assert reply.endswith(f"You said: Ship {WORD} on Friday")


async def test_gateway_blocks_recognizer_findings(
    stack: Stack, fixed_word: FixedWordRecognizer
) -> None:
    store_of(stack).apply(parse_documents(recognizer_policy("block")), author="alice")
    before = len(stack.openai.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        await ask_openai(stack, f"Ship {WORD} on Friday")
    assert caught.value.status_code == 400
    assert "codenames" in str(caught.value)
    assert WORD not in str(caught.value)
    assert len(stack.openai.requests) == before


async def test_gateway_response_only_rule(stack: Stack, fixed_word: FixedWordRecognizer) -> None:
    text = recognizer_policy(extra=", on: [response]")
    store_of(stack).apply(parse_documents(text), author="alice")
    reply, _ = await ask_openai(stack, f"Ship {WORD} on Friday")
    assert f"Ship {WORD} on Friday" in sent_text(stack)
    assert reply.endswith(f"You said: Ship [{CODENAME}] on Friday")


async def test_gateway_without_switch_unchanged(
    stack: Stack, fixed_word: FixedWordRecognizer
) -> None:
    store_of(stack).apply(parse_documents(EMAIL_POLICY), author="alice")
    reply, header = await ask_openai(stack, f"Ship {WORD} to jane.doe@example.com")
    assert f"Ship {WORD} to [EMAIL]" in sent_text(stack)
    assert reply.endswith(f"You said: Ship {WORD} to [EMAIL]")
    assert CODENAME not in header
    assert fixed_word.created == 0


async def test_gateway_scope_limits_recognizer(
    stack: Stack, fixed_word: FixedWordRecognizer
) -> None:
    text = recognizer_policy() + "  scope: {keys: [another-key]}\n"
    store_of(stack).apply(parse_documents(text), author="alice")
    await ask_openai(stack, f"Ship {WORD} on Friday")
    assert f"Ship {WORD} on Friday" in sent_text(stack)


def test_validated_documents_round_trip(fixed_word: FixedWordRecognizer) -> None:
    (document,) = parse_documents(
        recognizer_policy(extra=", min_score: 0.7, model: en_core_web_sm")
    )
    again: list[PolicyDocument] = validate_documents([document.to_dict()])
    assert again[0] == document
    assert again[0].spec.recognizers[0].model == "en_core_web_sm"
