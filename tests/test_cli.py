"""The ``smartflow`` command as a user runs it: real processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

from smartflow.auth.keys import hash_key

DEV_KEY = "sk-sf-cli-test-key-0123"
SMARTFLOW = [sys.executable, "-m", "smartflow.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    # Nothing that could make `smartflow up` use a real provider may reach the child.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEY", "_ENDPOINT", "_ACCESS_TOKEN", "_CREDENTIALS"))
        and not k.startswith("AWS_")
    }
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["SMARTFLOW_LOG_LEVEL"] = "WARNING"
    return env


def _wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"smartflow exited early: {process.communicate()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listened on port {port} within {timeout} s")


@pytest.fixture
def up() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = _free_port()
    process = subprocess.Popen(
        [*SMARTFLOW, "up", "--port", str(port), "--dev-key", DEV_KEY],
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_up_serves_both_sdks(up: tuple[str, subprocess.Popen[str]]) -> None:
    url, _ = up
    gpt = openai.OpenAI(base_url=url + "/v1", api_key=DEV_KEY, max_retries=0)
    reply = gpt.chat.completions.create(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    content = reply.choices[0].message.content or ""
    assert content.startswith("Hello from claude-sonnet-4-5")
    assert content.endswith("You said: hi")
    models = {m.id for m in gpt.models.list()}
    assert {"gpt-4o", "azure-gpt-4o", "claude-sonnet-4-5", "bedrock-llama-3-1-70b", "gemini-2.5-flash", "command-a"} <= models

    for model in sorted(models):
        answer = gpt.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].finish_reason in ("stop", "length"), model

    claude = anthropic.Anthropic(base_url=url, api_key=DEV_KEY, max_retries=0)
    message = claude.messages.create(
        model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text.endswith("You said: hi")


def test_up_prints_models_and_simulated_providers(up: tuple[str, subprocess.Popen[str]]) -> None:
    _, process = up
    process.terminate()
    stdout, _ = process.communicate(timeout=10)
    assert "Smartflow gateway ready at http://127.0.0.1:" in stdout
    assert "gpt-4o-mini" in stdout
    for provider in ("openai", "azure", "anthropic", "bedrock", "gemini", "cohere"):
        assert f"Provider {provider}: simulated at http://127.0.0.1:" in stdout


def test_gateway_command_with_config(tmp_path: Path) -> None:
    """A configured gateway whose only provider is unreachable still answers in dialect."""
    port = _free_port()
    dead_port = _free_port()
    config = {
        "server": {"port": port},
        "providers": {
            "local": {
                "type": "openai",
                "base_url": f"http://127.0.0.1:{dead_port}/v1",
                "api_key_env": "LOCAL_KEY",
            }
        },
        "models": {"m": [{"provider": "local", "model": "m"}]},
        "keys": [{"name": "k", "sha256": hash_key(DEV_KEY)}],
        "retry": {"attempts_per_deployment": 1},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**_clean_env(), "LOCAL_KEY": "not-a-real-key"}
    process = subprocess.Popen(
        [*SMARTFLOW, "gateway", "--config", str(path)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(port, process)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=DEV_KEY, max_retries=0
        )
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 502
        assert "Cannot connect to local" in str(caught.value)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "not-a-real-key" not in stderr


def test_gateway_rejects_missing_credential(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        yaml.safe_dump(
            {"providers": {"p": {"type": "anthropic", "api_key_env": "NOT_SET_ANYWHERE"}}}
        )
    )
    result = subprocess.run(
        [*SMARTFLOW, "gateway", "--config", str(path)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "NOT_SET_ANYWHERE is not set" in result.stderr


def test_config_with_inline_key_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        yaml.safe_dump({"providers": {"p": {"type": "openai", "api_key": "sk-inline"}}})
    )
    result = subprocess.run(
        [*SMARTFLOW, "gateway", "--config", str(path)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "providers.p: 'api_key' is not allowed" in result.stderr
    assert "sk-inline" not in result.stderr


def test_help_documents_every_option() -> None:
    for command in (["up"], ["gateway"]):
        result = subprocess.run(
            [*SMARTFLOW, *command, "--help"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0
        for option in {
            "up": ["--host", "--port", "--dev-key", "--log-level"],
            "gateway": ["--config", "--host", "--port", "--log-level"],
        }[command[0]]:
            assert option in result.stdout


def test_keys_hash_matches_library() -> None:
    result = subprocess.run(
        [*SMARTFLOW, "keys", "hash"],
        input=DEV_KEY + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.strip() == hash_key(DEV_KEY)


def test_control_plane_command_serves_openapi(tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [*SMARTFLOW, "control-plane", "--port", str(port), "--state-dir", str(tmp_path / "cp")],
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_port(port, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=10) as reply:
            spec = json.loads(reply.read())
        assert spec["openapi"].startswith("3.1")
        assert "/v1/sync" in spec["paths"]
    finally:
        process.terminate()
        process.communicate(timeout=10)
    token_file = tmp_path / "cp" / "initial-admin-token"
    assert token_file.stat().st_mode & 0o077 == 0
