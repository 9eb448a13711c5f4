"""The ``smartflow`` command as a user runs it: real processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from smartflow.auth.keys import hash_key
from tests.conftest import free_port
from tests.control.conftest import new_database

DEV_KEY = "sk-sf-cli-test-key-0123"
EMBEDDING_MODEL = "text-embedding-3-small"
SMARTFLOW = [sys.executable, "-m", "smartflow.cli"]


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


@dataclass
class UpStack:
    """A running `smartflow up`: the on-prem and cloud instances and the control plane."""

    url: str
    cloud_url: str
    control_url: str
    process: subprocess.Popen[str]
    banner: str = ""
    """What `smartflow up` printed once every service was ready."""


def _wait_until_configured(url: str, process: subprocess.Popen[str], timeout: float = 30) -> None:
    """Wait until the linked instance at ``url`` serves a configuration."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"smartflow exited early: {process.communicate()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=5) as reply:
                if json.loads(reply.read())["status"] == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} served no configuration within {timeout} s")


def _read_banner(process: subprocess.Popen[str], timeout: float = 60) -> str:
    """Read standard output up to the last line of the ready message."""
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    # Read the descriptor itself: a buffered readline would hide data from select.
    output = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.5):
                continue
            chunk = os.read(descriptor, 65536)
            if not chunk:
                raise AssertionError(f"smartflow exited early: {process.communicate()}")
            output += chunk
            text = output.decode("utf-8", "replace")
            if "\n  curl " in text and text.endswith("\n"):
                return text
    raise AssertionError(f"no ready message within {timeout} s; got {output!r}")


def start_up(data_dir: Path, *extra: str, control_port: int | None = None) -> UpStack:
    port, cloud_port = free_port(), free_port()
    control_port = control_port or free_port()
    process = subprocess.Popen(
        [
            *SMARTFLOW,
            "up",
            "--port",
            str(port),
            "--cloud-port",
            str(cloud_port),
            "--control-plane-port",
            str(control_port),
            "--data-dir",
            str(data_dir),
            "--dev-key",
            DEV_KEY,
            *extra,
        ],
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stack = UpStack(
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{cloud_port}",
        f"http://127.0.0.1:{control_port}",
        process,
    )
    try:
        _wait_for_port(cloud_port, process, timeout=60)
        _wait_until_configured(stack.url, process)
        _wait_until_configured(stack.cloud_url, process)
        stack.banner = _read_banner(process)
    except AssertionError as exc:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
        raise AssertionError(f"{exc}\nstandard error:\n{stderr[-3000:]}") from None
    except BaseException:
        process.terminate()
        process.communicate(timeout=20)
        raise
    return stack


@pytest.fixture
def up(tmp_path: Path) -> Iterator[UpStack]:
    stack = start_up(tmp_path / "data")
    try:
        yield stack
    finally:
        stack.process.terminate()
        stack.process.communicate(timeout=20)


def test_up_serves_both_sdks(up: UpStack) -> None:
    url = up.url
    gpt = openai.OpenAI(base_url=url + "/v1", api_key=DEV_KEY, max_retries=0)
    reply = gpt.chat.completions.create(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    content = reply.choices[0].message.content or ""
    assert content.startswith("Hello from claude-sonnet-4-5")
    assert content.endswith("You said: hi")
    models = {m.id for m in gpt.models.list()}
    assert {
        "gpt-4o",
        "azure-gpt-4o",
        "claude-sonnet-4-5",
        "bedrock-llama-3-1-70b",
        "gemini-2.5-flash",
        "command-a",
    } <= models

    for model in sorted(models - {EMBEDDING_MODEL}):
        answer = gpt.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].finish_reason in ("stop", "length"), model
    vectors = gpt.embeddings.create(model=EMBEDDING_MODEL, input=["one", "two"])
    assert len(vectors.data) == 2
    assert len(vectors.data[0].embedding) > 0

    claude = anthropic.Anthropic(base_url=url, api_key=DEV_KEY, max_retries=0)
    message = claude.messages.create(
        model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text.endswith("You said: hi")


def test_up_cloud_instance_serves_on_prem_models(up: UpStack) -> None:
    claude = anthropic.Anthropic(base_url=up.cloud_url, api_key=DEV_KEY, max_retries=0)
    reply = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.headers["x-smartflow-deployment"] == "anthropic/claude-sonnet-4-5"
    message = reply.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text.endswith("You said: hi")


def test_up_residency_rule_blocks_forwarding(up: UpStack) -> None:
    """A compliance rule made at the control plane stops on-prem from forwarding to cloud."""
    token = _admin_token(up.banner)
    assert token is not None
    rule = json.dumps({"label": "confidential", "allowed_sites": ["on-prem"]}).encode()
    request = urllib.request.Request(
        up.control_url + "/v1/compliance-rules/on-prem-only",
        data=rule,
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
    gpt = openai.OpenAI(
        base_url=up.url + "/v1",
        api_key=DEV_KEY,
        max_retries=0,
        default_headers={"x-smartflow-classification": "confidential"},
    )
    messages: Any = [{"role": "user", "content": "hi"}]
    deadline = time.monotonic() + 10
    while True:
        try:
            gpt.chat.completions.create(model="gemini-2.5-flash", messages=messages)
        except openai.PermissionDeniedError as exc:
            error = str(exc)
            break
        assert time.monotonic() < deadline, "the rule was not enforced within 10 s"
        time.sleep(0.1)
    assert "compliance rule for label 'confidential'" in error
    assert "gemini/gemini-2.5-flash at site cloud" in error
    reply = gpt.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert (reply.choices[0].message.content or "").endswith("You said: hi")


def test_up_prints_models_and_simulated_providers(up: UpStack) -> None:
    stdout = up.banner
    assert f"Smartflow gateway ready at {up.url} (instance on-prem, site on-prem" in stdout
    assert f"Smartflow gateway ready at {up.cloud_url} (instance cloud, site cloud" in stdout
    assert f"Control plane: {up.control_url}" in stdout
    assert "gpt-4o-mini" in stdout
    for provider in ("openai", "azure", "anthropic", "bedrock", "gemini", "cohere"):
        assert f"Provider {provider}: simulated at http://127.0.0.1:" in stdout


def _admin_token(stdout: str) -> str | None:
    for line in stdout.splitlines():
        if line.startswith("Admin token (role admin, printed only this once): "):
            return line.rsplit(" ", 1)[1]
    return None


def _instances(control_url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        control_url + "/v1/instances", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return {item["name"]: item for item in json.loads(reply.read())["items"]}


def test_up_enrolls_both_instances_and_prints_token_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_up(data_dir)
    try:
        token = _admin_token(first.banner)
        assert token is not None
        assert token.startswith("sf-admin-")
    finally:
        first.process.terminate()
        first.process.communicate(timeout=20)
    # The instances dial the control plane at the address they enrolled with.
    second = start_up(data_dir, control_port=int(first.control_url.rsplit(":", 1)[1]))
    try:
        # The control plane records an acknowledgement just after the instance sends it.
        deadline = time.monotonic() + 10
        instances = _instances(second.control_url, token)
        while time.monotonic() < deadline and any(
            state["applied_version"] != state["head_version"] for state in instances.values()
        ):
            time.sleep(0.1)
            instances = _instances(second.control_url, token)
    finally:
        second.process.terminate()
        second.process.communicate(timeout=20)
    assert _admin_token(second.banner) is None
    assert "Admin token: printed when this data directory was first used" in second.banner
    assert "--new-admin-token" in second.banner
    assert set(instances) == {"on-prem", "cloud"}
    for name, state in instances.items():
        assert state["site"] == name
        assert state["applied_version"] == state["head_version"], state
        # Version 1 is the empty configuration. Each start seeds in one version (the
        # second start moves the simulator addresses), not one version per object.
        assert state["head_version"] == 3, state
    assert (data_dir / "control" / "control-plane.db").exists()
    assert (data_dir / "on-prem").is_dir()
    assert (data_dir / "cloud").is_dir()

    moved = subprocess.run(
        [
            *SMARTFLOW,
            "up",
            "--port",
            str(free_port()),
            "--cloud-port",
            str(free_port()),
            "--control-plane-port",
            str(free_port()),
            "--data-dir",
            str(data_dir),
            "--dev-key",
            DEV_KEY,
        ],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert moved.returncode == 2
    assert "enrolled with the control plane at" in moved.stderr

    control_port = int(first.control_url.rsplit(":", 1)[1])
    third = start_up(data_dir, "--new-admin-token", control_port=control_port)
    try:
        recovered = _admin_token(third.banner)
        assert recovered is not None
        assert recovered != token
        assert set(_instances(third.control_url, recovered)) == {"on-prem", "cloud"}
    finally:
        third.process.terminate()
        third.process.communicate(timeout=20)


def test_up_busy_port_rejected_before_writing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken_port = busy.getsockname()[1]
        result = subprocess.run(
            [
                *SMARTFLOW,
                "up",
                "--port",
                str(free_port()),
                "--cloud-port",
                str(taken_port),
                "--control-plane-port",
                str(free_port()),
                "--data-dir",
                str(data_dir),
                "--dev-key",
                DEV_KEY,
            ],
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"port {taken_port}" in result.stderr
    assert "--cloud-port" in result.stderr
    assert not data_dir.exists()


def test_gateway_command_with_config(tmp_path: Path) -> None:
    """A configured gateway whose only provider is unreachable still answers in dialect."""
    port = free_port()
    dead_port = free_port()
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
            "up": [
                "--host",
                "--port",
                "--cloud-port",
                "--control-plane-port",
                "--data-dir",
                "--postgres",
                "--dev-key",
                "--log-level",
            ],
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
    port = free_port()
    state_dir = tmp_path / "cp"
    token = "sf-admin-not-read"
    process = subprocess.Popen(
        [*SMARTFLOW, "control-plane", "--port", str(port), "--state-dir", str(state_dir)],
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
        assert process.stdout is not None
        assert process.stdout.readline().startswith("Admin token (role admin, shown only")
        token = process.stdout.readline().strip()
        assert token.startswith("sf-admin-")
        assert _instances(f"http://127.0.0.1:{port}", token) == {}
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    # The first admin token is shown once and never stored or logged in clear.
    assert token not in stderr
    for path in state_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


async def test_up_with_postgres(tmp_path: Path) -> None:
    async with new_database("postgresql", tmp_path) as url:
        data_dir = tmp_path / "data"
        stack = start_up(data_dir, "--postgres", url)
        try:
            token = _admin_token(stack.banner)
            assert token is not None
            instances = _instances(stack.control_url, token)
            gpt = openai.OpenAI(base_url=stack.cloud_url + "/v1", api_key=DEV_KEY, max_retries=0)
            reply = gpt.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
        finally:
            stack.process.terminate()
            stack.process.communicate(timeout=20)
    assert set(instances) == {"on-prem", "cloud"}
    assert (reply.choices[0].message.content or "").endswith("You said: hi")
    assert not (data_dir / "control" / "control-plane.db").exists()
