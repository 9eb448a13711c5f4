"""The versioned policy store: versions, validation before commit, files on disk."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from smartflow.core.errors import ConfigError
from smartflow.policy.documents import PolicyDocument, PolicyValidationError, parse_documents
from smartflow.policy.store import (
    ActivePolicy,
    PolicyStore,
    PolicyStoreConflict,
    VersionNotFound,
    validate_only,
)

PII = """
apiVersion: smartflow/v1
kind: Policy
metadata: {name: pii-default, description: Redact contact data}
spec:
  entities:
    - {type: EMAIL, action: redact, on: [request, response]}
"""

CONTENT = """
apiVersion: smartflow/v1
kind: Policy
metadata: {name: competitors}
spec:
  mode: audit
  content:
    deny: [{name: competitors, words: [acme]}]
"""


def _documents(*texts: str) -> list[PolicyDocument]:
    return parse_documents("\n---\n".join(texts))


class _Compiler:
    """A compile callback that records its calls and rejects documents named ``broken``."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, documents: Sequence[PolicyDocument]) -> list[str]:
        names = [document.name for document in documents]
        self.calls.append(names)
        if "broken" in names:
            raise ConfigError("the engine cannot compile this set", param="spec.stream")
        return names


def _broken() -> list[PolicyDocument]:
    return _documents(PII.replace("pii-default", "broken"))


def test_apply_numbers_versions_from_one(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path, validate_only)
    assert store.active is None
    first = store.apply(_documents(PII), "alice")
    second = store.apply(_documents(PII, CONTENT), "bob")
    assert first.version == 1
    assert second.version == 2
    assert first.author == "alice"
    assert second.author == "bob"
    assert second.names == ["pii-default", "competitors"]
    assert first.created_at <= second.created_at
    assert [version.version for version in store.list_versions()] == [1, 2]
    assert store.active is not None
    assert store.active.version == second


def test_content_hash_follows_documents(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path, validate_only)
    first = store.apply(_documents(PII), "alice")
    same = store.apply(_documents(PII), "bob")
    other = store.apply(_documents(PII, CONTENT), "alice")
    assert len(first.sha256) == 64
    assert first.sha256 == same.sha256
    assert first.sha256 != other.sha256


def test_compile_failure_creates_no_version(tmp_path: Path) -> None:
    compiler = _Compiler()
    store = PolicyStore.open(tmp_path, compiler)
    store.apply(_documents(PII), "alice")
    with pytest.raises(PolicyValidationError) as caught:
        store.apply(_broken(), "alice")
    assert caught.value.path == "spec.stream"
    assert "cannot compile" in caught.value.message
    assert [version.version for version in store.list_versions()] == [1]
    assert store.active is not None
    assert store.active.evaluator == ["pii-default"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["v000001.json"]
    assert compiler.calls == [["pii-default"], ["broken"]]


def test_empty_set_is_rejected(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path, validate_only)
    with pytest.raises(PolicyValidationError) as caught:
        store.apply([], "alice")
    assert "no policy documents" in caught.value.message
    assert store.list_versions() == []
    assert not any(tmp_path.iterdir())


def test_subscribers_get_each_active_version(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path, _Compiler())
    store.apply(_documents(PII), "alice")
    seen: list[ActivePolicy[list[str]]] = []
    store.subscribe(seen.append)
    assert [active.version.version for active in seen] == [1]

    def failing(active: ActivePolicy[list[str]]) -> None:
        raise RuntimeError("subscriber bug")

    store.subscribe(failing, replay=False)
    later: list[int] = []
    store.subscribe(lambda active: later.append(active.version.version), replay=False)
    store.apply(_documents(PII, CONTENT), "bob")
    with pytest.raises(PolicyValidationError):
        store.apply(_broken(), "bob")
    assert [active.version.version for active in seen] == [1, 2]
    assert seen[-1].evaluator == ["pii-default", "competitors"]
    assert later == [2]


def test_rollback_creates_a_copy(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path, validate_only)
    first = store.apply(_documents(PII), "alice")
    store.apply(_documents(PII, CONTENT), "alice")
    restored = store.rollback(1, "carol")
    assert restored.version == 3
    assert restored.rollback_of == 1
    assert restored.author == "carol"
    assert restored.sha256 == first.sha256
    assert restored.to_yaml() == first.to_yaml()
    assert store.active is not None
    assert store.active.version.version == 3
    assert store.diff(1, 3) == ""


def test_rollback_to_unknown_version(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path, validate_only)
    store.apply(_documents(PII), "alice")
    with pytest.raises(VersionNotFound) as caught:
        store.rollback(7, "alice")
    assert caught.value.status == 404
    assert "policy version 7 not found" in caught.value.message
    assert len(store.list_versions()) == 1


def test_diff_shows_changed_lines(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path, validate_only)
    store.apply(_documents(PII), "alice")
    store.apply(_documents(PII.replace("action: redact", "action: mask")), "alice")
    diff = store.diff(1, 2)
    assert diff.startswith("--- version 1\n+++ version 2\n")
    assert "-    action: redact\n" in diff
    assert "+    action: mask\n" in diff
    with pytest.raises(VersionNotFound):
        store.diff(1, 9)


def test_versions_survive_reopen(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path, validate_only)
    store.apply(_documents(PII), "alice")
    store.apply(_documents(PII, CONTENT), "bob")
    store.rollback(1, "carol")
    compiler = _Compiler()
    reopened = PolicyStore.open(tmp_path, compiler)
    assert reopened.list_versions() == store.list_versions()
    assert reopened.active is not None
    assert reopened.active.version.version == 3
    assert reopened.active.version.rollback_of == 1
    assert compiler.calls == [["pii-default"]]
    assert reopened.apply(_documents(CONTENT), "dave").version == 4


def test_version_file_layout(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path / "policies", validate_only)
    version = store.apply(_documents(PII), "alice")
    record = json.loads((tmp_path / "policies" / "v000001.json").read_text())
    assert record["version"] == 1
    assert record["author"] == "alice"
    assert record["sha256"] == version.sha256
    assert record["created_at"] == version.created_at
    assert record["documents"][0]["metadata"]["name"] == "pii-default"
    assert record["documents"][0]["spec"]["entities"][0]["action"] == "redact"


def test_tampered_file_fails_to_load(tmp_path: Path) -> None:
    PolicyStore.open(tmp_path, validate_only).apply(_documents(PII), "alice")
    path = tmp_path / "v000001.json"
    path.write_text(path.read_text().replace('"redact"', '"mask"'))
    with pytest.raises(ConfigError) as caught:
        PolicyStore.open(tmp_path, validate_only)
    assert "v000001.json is corrupt" in caught.value.message


def test_unreadable_file_fails_to_load(tmp_path: Path) -> None:
    (tmp_path / "v000001.json").write_text("{not json")
    with pytest.raises(ConfigError) as caught:
        PolicyStore.open(tmp_path, validate_only)
    assert "cannot read policy version file" in caught.value.message


def test_newest_version_must_compile_on_load(tmp_path: Path) -> None:
    PolicyStore.open(tmp_path, validate_only).apply(_broken(), "alice")
    with pytest.raises(ConfigError) as caught:
        PolicyStore.open(tmp_path, _Compiler())
    assert "stored policy version 1 no longer compiles" in caught.value.message
    assert "v000001.json" in caught.value.message


def test_unfinished_temp_file_is_removed(tmp_path: Path) -> None:
    PolicyStore.open(tmp_path, validate_only).apply(_documents(PII), "alice")
    leftover = tmp_path / ".tmp-abc123"
    leftover.write_text('{"version": 2')
    store = PolicyStore.open(tmp_path, validate_only)
    assert not leftover.exists()
    assert [version.version for version in store.list_versions()] == [1]


def test_existing_file_is_never_replaced(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path, validate_only)
    store.apply(_documents(PII), "alice")
    other = PolicyStore.open(tmp_path, validate_only)
    other.apply(_documents(CONTENT), "bob")
    written = (tmp_path / "v000002.json").read_bytes()
    with pytest.raises(PolicyStoreConflict) as caught:
        store.apply(_documents(PII, CONTENT), "alice")
    assert caught.value.status == 409
    assert (tmp_path / "v000002.json").read_bytes() == written
    assert store.active is not None
    assert store.active.version.version == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["v000001.json", "v000002.json"]


def test_get_returns_each_version(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path, validate_only)
    store.apply(_documents(PII), "alice")
    store.apply(_documents(CONTENT), "alice")
    assert store.get(1).names == ["pii-default"]
    assert store.get(2).names == ["competitors"]
    with pytest.raises(VersionNotFound):
        store.get(0)


def _ticket_policy(name: str, regex: str) -> str:
    return f"""
apiVersion: smartflow/v1
kind: Policy
metadata: {{name: {name}}}
spec:
  custom:
    patterns: [{{name: ticket, regex: "{regex}", action: mask}}]
"""


def test_engine_conflict_keeps_active_version(tmp_path: Path) -> None:
    from smartflow.policy.engine import Evaluator, compile_policies

    store = PolicyStore.open(tmp_path, compile_policies)
    store.apply(_documents(_ticket_policy("support", "TCK-[0-9]{6}")), "alice")
    active = store.active
    assert active is not None
    assert isinstance(active.evaluator, Evaluator)
    conflicting = _documents(
        _ticket_policy("support", "TCK-[0-9]{6}"), _ticket_policy("billing", "INV-[0-9]{4}")
    )
    with pytest.raises(PolicyValidationError) as caught:
        store.apply(conflicting, "alice")
    assert caught.value.document == "billing"
    assert caught.value.path == "spec.custom"
    assert "TICKET is defined differently" in caught.value.message
    assert store.active is active
    assert [version.version for version in store.list_versions()] == [1]


def test_newer_file_format_fails_to_load(tmp_path: Path) -> None:
    PolicyStore.open(tmp_path, validate_only).apply(_documents(PII), "alice")
    path = tmp_path / "v000001.json"
    record = json.loads(path.read_text())
    record["format"] = 99
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError) as caught:
        PolicyStore.open(tmp_path, validate_only)
    assert "has format 99, written by a newer smartflow" in caught.value.message


def test_concurrent_applies_stay_ordered(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = PolicyStore.open(tmp_path, validate_only)
    seen: list[int] = []
    store.subscribe(lambda active: seen.append(active.version.version))
    documents = _documents(PII)
    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(lambda i: store.apply(documents, f"user{i}"), range(40)))
    assert sorted(version.version for version in versions) == list(range(1, 41))
    assert seen == list(range(1, 41))
    assert store.active is not None
    assert store.active.version.version == 40
    assert len(list(tmp_path.glob("v*.json"))) == 40
