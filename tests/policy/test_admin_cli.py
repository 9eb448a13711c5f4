"""`smartflow policy` against a running `smartflow gateway`: real processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartflow.auth.keys import hash_key
from tests.conftest import free_port

SMARTFLOW = [sys.executable, "-m", "smartflow.cli"]
TOKENS = {
    "admin": "sf-admin-test-admin-token-0123456789",
    "policy_editor": "sf-admin-test-editor-token-0123456789",
    "viewer": "sf-admin-test-viewer-token-0123456789",
}
TOKEN_ENV = "SMARTFLOW_TEST_ADMIN_TOKEN"

PII_V1 = """\
apiVersion: smartflow/v1
kind: Policy
metadata:
  name: pii-default
  description: Redact e-mail addresses
spec:
  entities:
    - {type: EMAIL, action: redact, on: [request, response]}
"""
PII_V2 = PII_V1.replace("action: redact", "action: tokenize")
CONTENT = """\
apiVersion: smartflow/v1
kind: Policy
metadata: {name: competitors}
spec:
  mode: audit
  content:
    deny: [{name: competitors, words: [acme], whole_word: true, case_sensitive: false}]
"""
INVALID_ACTION = """\
apiVersion: smartflow/v1
kind: Policy
metadata: {name: bad-action}
spec:
  entities:
    - {type: EMAIL, action: redact}
    - {type: PHONE, action: mask}
    - {type: US_SSN, action: shred}
"""

TICKET = """\
apiVersion: smartflow/v1
kind: Policy
metadata: {name: NAME}
spec:
  custom:
    patterns: [{name: ticket, regex: "REGEX", action: mask}]
"""


def _env(token: str | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEY", "_ENDPOINT", "_ACCESS_TOKEN", "_CREDENTIALS"))
        and not k.startswith("AWS_")
    }
    env.pop(TOKEN_ENV, None)
    env["SMARTFLOW_LOG_LEVEL"] = "WARNING"
    if token is not None:
        env[TOKEN_ENV] = token
    return env


@dataclass
class Gateway:
    """A `smartflow gateway` process and what the tests need to reach it."""

    url: str
    config: Path
    port: int
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*SMARTFLOW, "gateway", "--config", str(self.config)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited early: {self.process.communicate()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"nothing listened on port {self.port} within 20 s")

    def stop(self) -> str:
        """Stop the process and return its standard error."""
        assert self.process is not None
        self.process.terminate()
        _, stderr = self.process.communicate(timeout=10)
        self.process = None
        return stderr


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    port = free_port()
    config = {
        "state_dir": str(tmp_path / "state"),
        "server": {"port": port, "access_log": False},
        "admin_tokens": [
            {"name": f"{role}-user", "sha256": hash_key(token), "role": role}
            for role, token in TOKENS.items()
        ],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    running = Gateway(f"http://127.0.0.1:{port}", path, port)
    running.start()
    try:
        yield running
    finally:
        if running.process is not None:
            running.stop()


def policy(
    gateway: Gateway, *args: str, role: str | None = "admin", stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `smartflow policy ARGS` with the token of ``role`` in the environment."""
    return subprocess.run(
        [*SMARTFLOW, "policy", *args, "--url", gateway.url, "--token-env", TOKEN_ENV],
        env=_env(TOKENS[role] if role else None),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def admin_get(gateway: Gateway, path: str, role: str = "viewer") -> Any:
    request = urllib.request.Request(gateway.url + path)
    request.add_header("Authorization", f"Bearer {TOKENS[role]}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def admin_error(
    gateway: Gateway, method: str, path: str, body: bytes, token: str | None
) -> tuple[int, Any]:
    request = urllib.request.Request(gateway.url + path, data=body, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    return caught.value.code, json.loads(caught.value.read())


def test_versions_diff_rollback_and_restart(gateway: Gateway, tmp_path: Path) -> None:
    pii_v1 = write(tmp_path, "pii.yaml", PII_V1)
    content = write(tmp_path, "content.yaml", CONTENT)

    first = policy(gateway, "apply", pii_v1)
    assert first.returncode == 0, first.stderr
    assert "applied as version 1 (documents: pii-default;" in first.stdout

    pii_v2 = write(tmp_path, "pii-v2.yaml", PII_V2)
    second = policy(gateway, "apply", pii_v2, content, role="policy_editor")
    assert second.returncode == 0, second.stderr
    assert "applied as version 2 (documents: pii-default, competitors;" in second.stdout

    listing = policy(gateway, "list", role="viewer")
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()
    assert rows[0].split() == ["VERSION", "CREATED", "AUTHOR", "SHA256", "DOCUMENTS"]
    assert rows[1].split()[0] == "1"
    assert "admin-user" in rows[1]
    assert rows[2].split()[:2] == ["*", "2"]
    assert "policy_editor-user" in rows[2]

    diff = policy(gateway, "diff", "--from", "1", "--to", "2", role="viewer")
    assert diff.returncode == 0, diff.stderr
    assert "--- version 1" in diff.stdout
    assert "-    action: redact" in diff.stdout
    assert "+    action: tokenize" in diff.stdout
    assert "+  name: competitors" in diff.stdout

    rollback = policy(gateway, "rollback", "--to", "1")
    assert rollback.returncode == 0, rollback.stderr
    assert "rolled back to version 1: now version 3" in rollback.stdout
    active = admin_get(gateway, "/admin/policies/active")
    assert active["version"] == 3
    assert active["rollback_of"] == 1
    assert active["yaml"] == admin_get(gateway, "/admin/policies/1")["yaml"]
    assert active["sha256"] == admin_get(gateway, "/admin/policies/1")["sha256"]

    gateway.stop()
    gateway.start()
    after = admin_get(gateway, "/admin/policies")
    assert after["active"] == 3
    assert [item["version"] for item in after["versions"]] == [1, 2, 3]
    assert admin_get(gateway, "/admin/policies/active")["yaml"] == active["yaml"]
    fourth = policy(gateway, "apply", content)
    assert fourth.returncode == 0, fourth.stderr
    assert "applied as version 4" in fourth.stdout


def test_invalid_policy_is_rejected_with_path(gateway: Gateway, tmp_path: Path) -> None:
    good = write(tmp_path, "pii.yaml", PII_V1)
    assert policy(gateway, "apply", good).returncode == 0
    bad = write(tmp_path, "bad.yaml", INVALID_ACTION)

    for action in ("validate", "apply"):
        result = policy(gateway, action, bad)
        assert result.returncode == 1, action
        assert "bad-action spec.entities[2].action" in result.stderr, action
        assert "'redact', 'mask', 'tokenize' or 'block'" in result.stderr, action

    # Each document is valid alone; the engine rejects the set because both define TICKET.
    support = write(
        tmp_path, "support.yaml", TICKET.replace("NAME", "support").replace("REGEX", "TCK-[0-9]{6}")
    )
    billing = write(
        tmp_path, "billing.yaml", TICKET.replace("NAME", "billing").replace("REGEX", "INV-[0-9]{4}")
    )
    conflict = policy(gateway, "apply", support, billing)
    assert conflict.returncode == 1
    assert "billing spec.custom: custom entity TICKET is defined differently" in conflict.stderr

    versions = admin_get(gateway, "/admin/policies")
    assert versions["active"] == 1
    assert len(versions["versions"]) == 1

    status, body = admin_error(
        gateway, "POST", "/admin/policies", INVALID_ACTION.encode(), TOKENS["admin"]
    )
    assert status == 422
    assert body["error"]["document"] == "bad-action"
    assert body["error"]["path"] == "spec.entities[2].action"
    assert "'block'" in body["error"]["message"]


def test_validate_reports_every_document(gateway: Gateway, tmp_path: Path) -> None:
    files = [write(tmp_path, "pii.yaml", PII_V1), write(tmp_path, "content.yaml", CONTENT)]
    result = policy(gateway, "validate", *files, role="viewer")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "valid: 2 document(s): pii-default, competitors\n"
    assert admin_get(gateway, "/admin/policies")["versions"] == []

    duplicate = policy(gateway, "validate", files[0], files[0])
    assert duplicate.returncode == 1
    assert "pii-default metadata.name: another document (index 0) has the same name" in (
        duplicate.stderr
    )

    unknown = policy(gateway, "validate", "-", stdin=PII_V1.replace("entities:", "entitys:"))
    assert unknown.returncode == 1
    assert "pii-default spec.entitys: unknown field; allowed here: mode, failure" in (
        unknown.stderr
    )


def test_yaml_syntax_error_names_the_file(gateway: Gateway, tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.yaml", "spec: [unclosed\n")
    result = policy(gateway, "apply", broken)
    assert result.returncode == 1
    assert f"{broken}: invalid YAML" in result.stderr
    assert admin_get(gateway, "/admin/policies")["versions"] == []


def test_viewer_cannot_change_policies(gateway: Gateway, tmp_path: Path) -> None:
    pii = write(tmp_path, "pii.yaml", PII_V1)
    assert policy(gateway, "apply", pii).returncode == 0

    applied = policy(gateway, "apply", pii, role="viewer")
    assert applied.returncode == 1
    assert "'viewer-user' has the role 'viewer'" in applied.stderr
    rolled = policy(gateway, "rollback", "--to", "1", role="viewer")
    assert rolled.returncode == 1
    assert "needs the role admin or policy_editor" in rolled.stderr
    assert len(admin_get(gateway, "/admin/policies")["versions"]) == 1

    status, body = admin_error(gateway, "POST", "/admin/policies", PII_V1.encode(), None)
    assert status == 401
    assert "Missing admin token" in body["error"]["message"]
    status, body = admin_error(
        gateway, "POST", "/admin/policies", PII_V1.encode(), "sf-admin-not-configured"
    )
    assert status == 401
    assert "Invalid admin token" in body["error"]["message"]


def test_unknown_versions_and_bad_arguments(gateway: Gateway, tmp_path: Path) -> None:
    assert policy(gateway, "apply", write(tmp_path, "pii.yaml", PII_V1)).returncode == 0

    diff = policy(gateway, "diff", "--from", "1", "--to", "5")
    assert diff.returncode == 1
    assert "policy version 5 not found" in diff.stderr
    rollback = policy(gateway, "rollback", "--to", "9")
    assert rollback.returncode == 1
    assert "policy version 9 not found" in rollback.stderr
    same = policy(gateway, "diff", "--from", "1", "--to", "1")
    assert same.returncode == 0
    assert "have the same documents" in same.stdout

    status, body = admin_error(
        gateway, "POST", "/admin/policies/rollback", b'{"version": "1"}', TOKENS["admin"]
    )
    assert status == 400
    assert body["error"]["code"] == "invalid_request"
    request = urllib.request.Request(gateway.url + "/admin/policies/diff?from=1&to=x")
    request.add_header("Authorization", f"Bearer {TOKENS['viewer']}")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert "'to' must be a version number" in json.loads(caught.value.read())["error"]["message"]


def test_usage_and_connection_errors(gateway: Gateway, tmp_path: Path) -> None:
    pii = write(tmp_path, "pii.yaml", PII_V1)
    no_token = policy(gateway, "list", role=None)
    assert no_token.returncode == 2
    assert f"the environment variable {TOKEN_ENV} is not set" in no_token.stderr

    missing = policy(gateway, "apply", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr

    dead_url = f"http://127.0.0.1:{free_port()}"
    refused = subprocess.run(
        [*SMARTFLOW, "policy", "apply", pii, "--url", dead_url, "--token-env", TOKEN_ENV],
        env=_env(TOKENS["admin"]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2
    assert f"cannot connect to {dead_url}" in refused.stderr

    usage = policy(gateway, "diff", "--from", "1")
    assert usage.returncode == 2
    assert "--to" in usage.stderr


def test_admin_token_new_prints_its_hash() -> None:
    result = subprocess.run(
        [*SMARTFLOW, "admin", "token", "new", "--name", "ci", "--role", "viewer"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    token = lines[0].removeprefix("token:").strip()
    digest = lines[1].removeprefix("sha256:").strip()
    assert token.startswith("sf-admin-")
    assert digest == hash_key(token)
    snippet = yaml.safe_load(result.stdout.split("keep the token itself out of it:\n")[1])
    assert snippet == {"admin_tokens": [{"name": "ci", "sha256": digest, "role": "viewer"}]}
