"""The published JSON Schema of policy documents matches the models that validate them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smartflow.policy.documents import PolicyValidationError, parse_documents

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_policy_schema.py"
SCHEMA_FILE = ROOT / "docs" / "policy-schema.json"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_committed_schema_is_current() -> None:
    result = _run("--check")
    assert result.returncode == 0, result.stderr


def test_check_detects_stale_schema(tmp_path: Path) -> None:
    stale = tmp_path / "policy-schema.json"
    stale.write_text(SCHEMA_FILE.read_text().replace('"block"', '"shred"'))
    result = _run("--check", "--output", str(stale))
    assert result.returncode == 1
    assert "is out of date" in result.stderr


def test_schema_states_required_fields_and_actions() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert sorted(schema["required"]) == ["apiVersion", "kind", "metadata", "spec"]
    assert schema["additionalProperties"] is False
    entity_rule = schema["$defs"]["EntityRule"]
    assert entity_rule["properties"]["action"]["enum"] == ["redact", "mask", "tokenize", "block"]
    assert entity_rule["properties"]["on"]["items"]["enum"] == ["request", "response"]
    assert "EMAIL" in entity_rule["properties"]["type"]["description"]
    mode = schema["$defs"]["PolicySpec"]["properties"]["mode"]
    assert mode["enum"] == ["enforce", "audit"]
    assert "audit" in mode["description"]


def _document(name: str, pattern_name: str = "ticket") -> str:
    return f"""
apiVersion: smartflow/v1
kind: Policy
metadata: {{name: "{name}"}}
spec:
  custom:
    patterns: [{{name: "{pattern_name}", regex: "T-[0-9]+", action: mask}}]
"""


def _accepted(text: str) -> bool:
    try:
        parse_documents(text)
    except PolicyValidationError:
        return False
    return True


@pytest.mark.parametrize(
    "name", ["pii-default", "a", "x.y_z-1", "-lead", "has space", "é", "a" * 64]
)
def test_name_pattern_agrees_with_validator(name: str) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    pattern = schema["$defs"]["Metadata"]["properties"]["name"]["pattern"]
    assert (re.search(pattern, name) is not None) == _accepted(_document(name))


@pytest.mark.parametrize("name", ["ticket", "Ticket_2", "2ticket", "tick-et", "b" * 65])
def test_custom_name_pattern_agrees_with_validator(name: str) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    pattern = schema["$defs"]["CustomPattern"]["properties"]["name"]["pattern"]
    assert (re.search(pattern, name) is not None) == _accepted(_document("p", name))
