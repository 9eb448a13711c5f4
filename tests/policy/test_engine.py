"""Unit tests of policy documents, compiling and the evaluator, without a gateway."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest
import yaml

from smartflow.core.errors import PolicyViolation
from smartflow.core.types import ChatRequest, Message, TextPart, ToolCall
from smartflow.policy.decision import PolicyEvaluationFailed, ResidencyRejected
from smartflow.policy.detectors import Finding, ScanContext
from smartflow.policy.documents import (
    PolicyDocument,
    PolicyValidationError,
    dump_documents,
    parse_documents,
    validate_documents,
)
from smartflow.policy.engine import Evaluator, RequestContext, compile_policies
from smartflow.policy.loading import BUILTIN_DEFAULT, load_policy_files
from smartflow.policy.run import PolicyRun
from smartflow.providers.base import Deployment
from smartflow.providers.openai import OpenAIProvider

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
CONTEXT = RequestContext(site="local", team="qa", key="test", model="gpt-4o")


def doc(name: str = "p", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "smartflow/v1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": spec,
    }


def evaluator(*documents: dict[str, Any], **options: Any) -> Evaluator:
    return compile_policies(validate_documents(list(documents)), **options)


def user(text: str) -> ChatRequest:
    return ChatRequest(model="gpt-4o", messages=[Message("user", [TextPart(text)])])


def run_on(
    policy: Evaluator, text: str, context: RequestContext = CONTEXT
) -> tuple[PolicyRun, str]:
    run = policy.evaluate_request(context, user(text))
    assert run.request is not None
    return run, run.request.messages[0].text()


# --- documents ------------------------------------------------------------------------

FULL = """
apiVersion: smartflow/v1
kind: Policy
metadata: {name: pii-default, description: "All the sections"}
spec:
  mode: enforce
  failure: closed
  scope: {sites: [], teams: [], keys: [], models: []}
  entities:
    - {type: EMAIL, action: redact, on: [request, response]}
  custom:
    patterns: [{name: ticket, regex: "TCK-[0-9]{6}", action: mask}]
    word_lists: [{name: codenames, words: [bluebird], action: block}]
  content:
    deny: [{name: competitors, words: [acme], whole_word: true, case_sensitive: false}]
    allow: [{name: safe-terms, words: [acme corp]}]
    regex: [{name: no-sql, pattern: "DROP TABLE"}]
    topics: [{name: medical, keywords: [diagnosis, prescription], threshold: 2}]
  compliance:
    labels_from_entities: [{entity: CREDIT_CARD, label: confidential}]
    rules: [{label: confidential, allowed_sites: [on-prem], store_bodies: false}]
  stream: {window_chars: 64}
"""


def test_documents_parse_full_example() -> None:
    [document] = parse_documents(FULL)
    assert document.name == "pii-default"
    assert document.spec.entities[0].on == ["request", "response"]
    assert document.spec.custom.patterns[0].regex == "TCK-[0-9]{6}"
    assert document.spec.compliance.rules[0].store_bodies is False


def test_documents_round_trip_through_yaml() -> None:
    documents = parse_documents(FULL)
    assert parse_documents(dump_documents(documents)) == documents


def test_documents_on_key_from_plain_safe_load() -> None:
    # yaml.safe_load reads the key "on" as True (YAML 1.1); validation still accepts it.
    [document] = validate_documents([yaml.safe_load(FULL)])
    assert document.spec.entities[0].on == ["request", "response"]


@pytest.mark.parametrize(
    ("old", "new", "path", "message"),
    [
        ("action: redact", "action: erase", "spec.entities[0].action", "'redact', 'mask'"),
        ("type: EMAIL", "type: EMAILS", "spec.entities[0].type", "expected one of"),
        ("TCK-[0-9]{6}", "TCK-[0-9", "spec.custom.patterns[0].regex", "invalid regular"),
        ("TCK-[0-9]{6}", "(TCK)-\\\\1", "spec.custom.patterns[0].regex", "no backreferences"),
        ("DROP TABLE", "(?<=x)DROP", "spec.content.regex[0].pattern", "RE2 syntax"),
        ("window_chars: 64", "window_chars: 64, size: 1", "spec.stream.size", "window_chars"),
        ("mode: enforce", "mode: dry-run", "spec.mode", "'enforce' or 'audit'"),
        ("entity: CREDIT_CARD", "entity: CARD", "labels_from_entities[0].entity", "CREDIT_CARD"),
        ("name: codenames", "name: email", "spec.custom.word_lists[0].name", "built-in"),
    ],
)
def test_documents_invalid_field_named(old: str, new: str, path: str, message: str) -> None:
    with pytest.raises(PolicyValidationError) as caught:
        parse_documents(FULL.replace(old, new))
    error = caught.value
    assert error.document == "pii-default"
    assert error.path.endswith(path)
    assert message in error.message


def test_documents_list_every_issue() -> None:
    text = FULL.replace("action: redact", "action: erase").replace("mode: enforce", "mode: x")
    with pytest.raises(PolicyValidationError) as caught:
        parse_documents(text)
    paths = {issue.path for issue in caught.value.issues}
    assert paths == {"spec.mode", "spec.entities[0].action"}


def test_documents_duplicate_names_rejected() -> None:
    with pytest.raises(PolicyValidationError) as caught:
        parse_documents(FULL + "---\n" + FULL)
    assert caught.value.path == "metadata.name"


def test_documents_unnamed_document_uses_index() -> None:
    with pytest.raises(PolicyValidationError) as caught:
        parse_documents("apiVersion: smartflow/v1\nkind: Policy\nspec: {}\n")
    assert caught.value.document == "document[0]"
    assert caught.value.path == "metadata"


def test_documents_invalid_yaml_rejected() -> None:
    with pytest.raises(PolicyValidationError, match="invalid YAML"):
        parse_documents("spec: [unclosed")


def test_default_policy_file_loads() -> None:
    documents = load_policy_files([BUILTIN_DEFAULT])
    policy = compile_policies(documents)
    run, text = run_on(policy, f"mail {EMAIL}, card {CARD}, key sk-proj-{'a1B2' * 10}")
    assert EMAIL not in text
    assert CARD not in text
    assert "sk-proj-" not in text
    assert run.decision.request_entities == {"EMAIL": 1, "CREDIT_CARD": 1, "OPENAI_API_KEY": 1}


# --- compiling ------------------------------------------------------------------------


def test_compile_rejects_conflicting_custom_entity() -> None:
    first = doc("a", custom={"patterns": [{"name": "ticket", "regex": "T-1", "action": "mask"}]})
    second = doc("b", custom={"patterns": [{"name": "ticket", "regex": "T-2", "action": "mask"}]})
    with pytest.raises(PolicyValidationError) as caught:
        evaluator(first, second)
    assert caught.value.document == "b"
    assert "defined differently" in caught.value.message


def test_compile_rejects_regex_that_skipped_validation() -> None:
    valid = validate_documents(
        [doc(custom={"patterns": [{"name": "t", "regex": "x", "action": "mask"}]})]
    )
    spec = valid[0].spec
    pattern = spec.custom.patterns[0].model_copy(update={"regex": "(unclosed"})
    custom = spec.custom.model_copy(update={"patterns": [pattern]})
    broken = valid[0].model_copy(update={"spec": spec.model_copy(update={"custom": custom})})
    with pytest.raises(PolicyValidationError) as caught:
        compile_policies([broken])
    assert caught.value.document == "p"
    assert "regular expression" in caught.value.message


# --- request actions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("redact", "mail [EMAIL] now"),
        ("mask", "mail ****.***@*******.com now"),
        ("tokenize", "mail <EMAIL_1> now"),
    ],
)
def test_request_action_rewrites_text(action: str, expected: str) -> None:
    policy = evaluator(doc(entities=[{"type": "EMAIL", "action": action}]))
    run, text = run_on(policy, f"mail {EMAIL} now")
    if action == "mask":
        assert text.endswith(".com now")
        assert EMAIL not in text
    else:
        assert text == expected
    assert run.decision.request_entities["EMAIL"] == 1
    assert run.decision.actions == {"EMAIL": action}


def test_request_block_names_rule_not_value() -> None:
    policy = evaluator(doc("cards", entities=[{"type": "CREDIT_CARD", "action": "block"}]))
    with pytest.raises(PolicyViolation) as caught:
        run_on(policy, f"my card is {CARD}")
    assert "cards" in caught.value.message
    assert "CREDIT_CARD" in caught.value.message
    assert "4111" not in caught.value.message
    assert policy.counters.blocked == 1


def test_request_rewrites_system_tools_and_results() -> None:
    policy = evaluator(doc(entities=[{"type": "EMAIL", "action": "tokenize"}]))
    arguments = orjson.dumps({"to": EMAIL, "count": 2}).decode()
    request = ChatRequest(
        model="gpt-4o",
        messages=[
            Message("system", [TextPart(f"Admin is {EMAIL}.")]),
            Message("user", [TextPart("Mail the admin.")]),
            Message("assistant", tool_calls=[ToolCall("call_1", "send", arguments)]),
            Message("tool", [TextPart(f"sent to {EMAIL}")], tool_call_id="call_1"),
        ],
    )
    run = policy.evaluate_request(CONTEXT, request)
    assert run.request is not None
    messages = run.request.messages
    assert messages[0].text() == "Admin is <EMAIL_1>."
    assert orjson.loads(messages[2].tool_calls[0].arguments) == {"to": "<EMAIL_1>", "count": 2}
    assert messages[3].text() == "sent to <EMAIL_1>"
    assert run.decision.request_entities["EMAIL"] == 3
    assert request.messages[0].text() == f"Admin is {EMAIL}."


def test_request_without_findings_keeps_object() -> None:
    policy = evaluator(doc(entities=[{"type": "EMAIL", "action": "redact"}]))
    request = user("nothing to see")
    run = policy.evaluate_request(CONTEXT, request)
    assert run.request is request
    assert run.header() == "policies=p"


def test_custom_pattern_and_word_list() -> None:
    custom = {
        "patterns": [{"name": "ticket", "regex": "TCK-[0-9]{6}", "action": "redact"}],
        "word_lists": [{"name": "codenames", "words": ["bluebird"], "action": "block"}],
    }
    policy = evaluator(doc(custom=custom))
    _, text = run_on(policy, "see TCK-123456")
    assert text == "see [TICKET]"
    with pytest.raises(PolicyViolation, match="CODENAMES"):
        run_on(policy, "project Bluebird ships")


def test_content_deny_blocks_and_allow_exempts() -> None:
    content = {
        "deny": [{"name": "competitors", "words": ["acme"]}],
        "allow": [{"name": "ok", "words": ["acme corp museum"]}],
        "topics": [{"name": "medical", "keywords": ["diagnosis", "prescription"]}],
    }
    policy = evaluator(doc("content", content=content))
    with pytest.raises(PolicyViolation, match="content/competitors"):
        run_on(policy, "compare us with ACME")
    run, _ = run_on(policy, "visit the acme corp museum")
    assert run.decision.rules == []
    with pytest.raises(PolicyViolation, match="medical"):
        run_on(policy, "my diagnosis needs a prescription")


def test_audit_mode_records_without_enforcing() -> None:
    spec = {
        "mode": "audit",
        "entities": [{"type": "CREDIT_CARD", "action": "block"}],
        "content": {"deny": [{"name": "competitors", "words": ["acme"]}]},
    }
    policy = evaluator(doc("watch", **spec))
    run, text = run_on(policy, f"acme card {CARD}")
    assert text == f"acme card {CARD}"
    assert run.decision.request_entities["CREDIT_CARD"] == 1
    assert run.decision.actions == {}
    assert [hit.rule for hit in run.decision.rules] == ["competitors"]
    assert run.decision.rules[0].enforced is False
    assert "audit=watch" in run.header()


def test_stricter_action_wins_across_documents() -> None:
    soft = doc("soft", entities=[{"type": "EMAIL", "action": "mask"}])
    hard = doc("hard", entities=[{"type": "EMAIL", "action": "block"}])
    with pytest.raises(PolicyViolation, match="'hard'"):
        run_on(evaluator(soft, hard), f"mail {EMAIL}")


# --- scope ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "applies"),
    [
        ({}, True),
        ({"teams": ["qa"]}, True),
        ({"teams": ["finance"]}, False),
        ({"keys": ["test"], "models": ["gpt-4o"]}, True),
        ({"models": ["claude-sonnet-4-5"]}, False),
        ({"sites": ["on-prem"]}, False),
        ({"sites": ["local"]}, True),
    ],
)
def test_scope_selects_documents(scope: dict[str, list[str]], applies: bool) -> None:
    policy = evaluator(doc(scope=scope, entities=[{"type": "EMAIL", "action": "redact"}]))
    run, text = run_on(policy, f"mail {EMAIL}")
    assert run.active is applies
    assert (text == "mail [EMAIL]") is applies


# --- failures -------------------------------------------------------------------------


class FailingDetector:
    """A detector whose ``find`` raises, standing in for a broken recogniser."""

    entities = frozenset({"BROKEN"})
    keywords: Mapping[str, tuple[str, ...]] = {}
    anchors: Mapping[str, tuple[str, ...]] = {}

    def find(self, scan: ScanContext) -> list[Finding]:
        raise RuntimeError(f"recogniser crashed on {scan.text!r}")


@pytest.mark.parametrize("failure", ["closed", "open"])
def test_failing_detector_per_failure_mode(failure: str) -> None:
    spec = {"failure": failure, "entities": [{"type": "EMAIL", "action": "redact"}]}
    policy = evaluator(doc("guard", **spec), extra_detectors=[FailingDetector()])
    if failure == "closed":
        with pytest.raises(PolicyEvaluationFailed) as caught:
            run_on(policy, f"mail {EMAIL}")
        assert "RuntimeError" in caught.value.message
        assert EMAIL not in caught.value.message
        assert policy.counters.errors_blocked == 1
    else:
        run, text = run_on(policy, f"mail {EMAIL}")
        assert text == f"mail {EMAIL}"
        assert run.decision.errors == 1
        assert policy.counters.errors_let_through == 1


def test_failing_detector_in_audit_lets_through() -> None:
    spec = {"mode": "audit", "entities": [{"type": "EMAIL", "action": "redact"}]}
    policy = evaluator(doc(**spec), extra_detectors=[FailingDetector()])
    run, text = run_on(policy, "hello")
    assert text == "hello"
    assert "errors=1" in run.header()


# --- compliance -----------------------------------------------------------------------


def deployment(model: str, site: str) -> Deployment:
    provider = OpenAIProvider("openai", api_key=None, base_url="http://127.0.0.1:9/v1")  # type: ignore[arg-type]
    return Deployment("gpt-4o", provider, model, site=site)


RESIDENCY = doc(
    "residency",
    compliance={
        "labels_from_entities": [{"entity": "CREDIT_CARD", "label": "confidential"}],
        "rules": [{"label": "confidential", "allowed_sites": ["on-prem"], "store_bodies": False}],
    },
)


def test_residency_keeps_allowed_sites() -> None:
    policy = evaluator(RESIDENCY)
    context = RequestContext(site="local", labels=frozenset({"confidential"}))
    run, _ = run_on(policy, "hello", context)
    cloud, on_prem = deployment("a", "cloud"), deployment("b", "on-prem")
    assert run.allowed_deployments([cloud, on_prem]) == [on_prem]
    assert run.decision.store_bodies is False
    assert "residency=confidential:residency" in run.header()
    assert "store_bodies=false" in run.header()


def test_residency_label_from_entity() -> None:
    run, text = run_on(evaluator(RESIDENCY), f"card {CARD}")
    assert text == f"card {CARD}"
    assert run.decision.labels == {"confidential"}
    with pytest.raises(ResidencyRejected) as caught:
        run.allowed_deployments([deployment("a", "cloud")])
    message = caught.value.message
    assert "'confidential'" in message
    assert "'residency'" in message
    assert "on-prem" in message
    assert caught.value.status == 403


def test_residency_unlabelled_request_unrestricted() -> None:
    run, _ = run_on(evaluator(RESIDENCY), "hello")
    cloud = deployment("a", "cloud")
    assert run.allowed_deployments([cloud]) == [cloud]
    assert run.decision.store_bodies is True


# --- responses ------------------------------------------------------------------------


def test_response_restores_placeholders() -> None:
    policy = evaluator(doc(entities=[{"type": "EMAIL", "action": "tokenize"}]))
    run, text = run_on(policy, f"mail {EMAIL}")
    assert run.rewrite_response_text(f"You said: {text}") == f"You said: mail {EMAIL}"
    escaped = run.rewrite_response_text('{"to": "<EMAIL_1>"}', json_escaped=True)
    assert orjson.loads(escaped) == {"to": EMAIL}


def test_response_restored_value_escaped_in_json() -> None:
    custom = {"patterns": [{"name": "quoted", "regex": 'Q"[a-z]+', "action": "tokenize"}]}
    run, text = run_on(evaluator(doc(custom=custom)), 'say Q"abc')
    assert text == "say <QUOTED_1>"
    restored = run.rewrite_response_text('{"v": "<QUOTED_1>"}', json_escaped=True)
    assert orjson.loads(restored) == {"v": 'Q"abc'}


def test_response_rule_redacts_model_value() -> None:
    policy = evaluator(doc(entities=[{"type": "EMAIL", "action": "redact", "on": ["response"]}]))
    run, text = run_on(policy, f"mail {EMAIL}")
    assert text == f"mail {EMAIL}"
    assert run.rewrite_response_text(f"Write to {EMAIL}.") == "Write to [EMAIL]."
    assert run.decision.response_entities["EMAIL"] == 1


def test_response_block_rule_raises() -> None:
    policy = evaluator(doc(entities=[{"type": "CREDIT_CARD", "action": "block"}]))
    run, _ = run_on(policy, "hello")
    with pytest.raises(PolicyViolation):
        run.rewrite_response_text(f"Use {CARD}")
    assert run.decision.blocked_by == "p/CREDIT_CARD"


def test_stream_channel_value_split_across_chunks() -> None:
    policy = evaluator(doc(entities=[{"type": "CREDIT_CARD", "action": "redact"}]))
    run, _ = run_on(policy, "hello")
    channel = run.open_channel()
    pieces = ["Your card is 4111 11", "11 1111 1111", " and that is all."]
    out = "".join(channel.feed(piece) for piece in pieces) + channel.flush()
    assert out == "Your card is [CREDIT_CARD] and that is all."
    assert run.decision.response_entities["CREDIT_CARD"] == 1


def test_stream_channel_restores_split_placeholder() -> None:
    policy = evaluator(doc(entities=[{"type": "EMAIL", "action": "tokenize", "on": ["request"]}]))
    run, _ = run_on(policy, f"mail {EMAIL}")
    channel = run.open_channel()
    pieces = ["You said: mail <EMA", "IL_1", "> ok"]
    out = "".join(channel.feed(piece) for piece in pieces) + channel.flush()
    assert out == f"You said: mail {EMAIL} ok"


def test_stream_channel_content_rule_blocks() -> None:
    content = {"deny": [{"name": "competitors", "words": ["acme"], "on": ["response"]}]}
    run, _ = run_on(evaluator(doc(content=content)), "hello")
    channel = run.open_channel()
    channel.feed("We compare well with Ac")
    with pytest.raises(PolicyViolation, match="competitors"):
        channel.feed("me and others, as everyone knows by now.") + channel.flush()


def test_header_never_contains_values() -> None:
    policy = evaluator(doc(entities=[{"type": "EMAIL", "action": "tokenize"}]))
    run, _ = run_on(policy, f"mail {EMAIL}")
    run.rewrite_response_text("ok <EMAIL_1>")
    header = run.header()
    assert header == "policies=p;request=EMAIL:1;actions=EMAIL:tokenize"
    assert EMAIL not in repr(run.decision)


def test_plan_cached_per_selection() -> None:
    policy = evaluator(doc(entities=[{"type": "EMAIL", "action": "redact"}]))
    assert policy.plan_for(CONTEXT) is policy.plan_for(CONTEXT)


def test_document_to_dict_uses_yaml_names() -> None:
    document: PolicyDocument = parse_documents(FULL)[0]
    data = document.to_dict()
    assert data["apiVersion"] == "smartflow/v1"
    assert data["spec"]["entities"][0]["on"] == ["request", "response"]


def test_nested_quantifier_pattern_matches_in_linear_time() -> None:
    # (a+)+$ backtracks exponentially in Python's re: on 60 letters and a "!" the scan
    # would not end within the test timeout. RE2 finds no match at once.
    policy = evaluator(
        doc(
            custom={"patterns": [{"name": "nested", "regex": "(a+)+$", "action": "redact"}]},
            content={"regex": [{"name": "nested-rule", "pattern": "(b+)+$"}]},
        )
    )
    run, text = run_on(policy, "a" * 60 + "! " + "b" * 60 + "!")
    assert text == "a" * 60 + "! " + "b" * 60 + "!"
    assert run.decision.request_entities == {}


def test_custom_pattern_value_group_after_non_ascii() -> None:
    pattern = {"name": "employee", "regex": "id: (?P<value>E[0-9]{6})", "action": "redact"}
    policy = evaluator(doc(custom={"patterns": [pattern]}))
    _, text = run_on(policy, "Größe 日本 id: E123456 ok")
    assert text == "Größe 日本 id: [EMPLOYEE] ok"
