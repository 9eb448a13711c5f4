"""End to end with real processes: `smartflow control-plane`, two linked `smartflow gateway`
instances and `smartflow policy apply`, on free 127.0.0.1 ports."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from smartflow.config.schema import ControlPlaneLinkSettings
from smartflow.sync.state import LinkFiles
from tests.conftest import free_port
from tests.control.conftest import ADMIN_TOKEN, Api, wait_for
from tests.sync.conftest import (
    BLOCK_EMAIL_POLICY,
    EMAIL_PROMPT,
    CuttingProxy,
    add_virtual_key,
    chat,
)

PROVIDER_ENV = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MISSING_KEY_VAR")


def _environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in PROVIDER_ENV}
    env.update(extra)
    return env


@dataclass
class Processes:
    """The processes of one test, each logging to a file in ``directory``."""

    directory: Path
    running: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def start(self, name: str, *args: str, **env: str) -> None:
        log = (self.directory / f"{name}.log").open("ab")
        self.running[name] = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "smartflow.cli",
            *args,
            stdout=log,
            stderr=log,
            env=_environment(**env),
        )

    async def stop(self, name: str, *, kill: bool = False) -> None:
        process = self.running.pop(name)
        if process.returncode is None:
            if kill:
                process.kill()
            else:
                process.terminate()
        await process.wait()

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    started = Processes(tmp_path)
    yield started
    for name in list(started.running):
        await started.stop(name, kill=True)


async def _wait_healthy(
    http: aiohttp.ClientSession, url: str, processes: Processes, name: str
) -> None:
    async def healthy() -> bool:
        try:
            async with http.get(url + "/healthz") as reply:
                return reply.status == 200
        except aiohttp.ClientError:
            process = processes.running[name]
            assert process.returncode is None, processes.log(name)
            return False

    await wait_for(healthy, timeout=20)


async def _health(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/healthz") as reply:
        return dict(await reply.json())


async def _converged(http: aiohttp.ClientSession, urls: list[str], version: int) -> None:
    async def done() -> bool:
        for url in urls:
            if (await _health(http, url))["version"] != version:
                return False
        return True

    await wait_for(done, timeout=15)


async def _apply_with_cli(processes: Processes, control_url: str, policy_file: Path) -> str:
    apply = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smartflow.cli",
        "policy",
        "apply",
        "--control-plane",
        control_url,
        str(policy_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_environment(SMARTFLOW_ADMIN_TOKEN=ADMIN_TOKEN),
    )
    out, err = await apply.communicate()
    assert apply.returncode == 0, err.decode()
    return out.decode()


async def _configure(control: Api, simulator: str) -> None:
    for site in ("on-prem", "cloud"):
        provider = f"openai-{site}"
        await control.ok(
            "PUT",
            f"/v1/providers/{provider}",
            json={
                "site": site,
                "settings": {"type": "openai", "base_url": simulator},
                "credentials": {"api_key": "provider-test-key"},
            },
        )
        await control.ok(
            "PUT", f"/v1/deployments/{provider}-gpt", json={"provider": provider, "model": "gpt-4o"}
        )
    # One public model, served at each site by that site's own deployment.
    await control.ok(
        "PUT",
        "/v1/model-aliases/gpt-4o",
        json={"deployments": ["openai-on-prem-gpt", "openai-cloud-gpt"]},
    )
    await add_virtual_key(control)


async def test_linked_instances_end_to_end(
    tmp_path: Path, simulator: str, processes: Processes
) -> None:
    control_port = free_port()
    control_url = f"http://127.0.0.1:{control_port}"
    control_args = (
        "control-plane",
        "--port",
        str(control_port),
        "--state-dir",
        str(tmp_path / "cp"),
    )
    await processes.start("control", *control_args, SMARTFLOW_CONTROL_ADMIN_TOKEN=ADMIN_TOKEN)
    instances = {"onprem": ("on-prem", free_port()), "cloud": ("cloud", free_port())}
    urls = {name: f"http://127.0.0.1:{port}" for name, (_, port) in instances.items()}

    def instance_args(name: str) -> list[str]:
        site, port = instances[name]
        return [
            "gateway",
            "--control-plane",
            control_url,
            "--name",
            name,
            "--site",
            site,
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / name),
        ]

    async with aiohttp.ClientSession() as http:
        control = Api(control_url, http, None)  # type: ignore[arg-type]
        await _wait_healthy(http, control_url, processes, "control")
        await _configure(control, simulator)
        for name, (site, _) in instances.items():
            token = (await control.ok("POST", "/v1/enrollment-tokens", json={"site": site}))[
                "token"
            ]
            await processes.start(name, *instance_args(name), "--enroll-token", token)
        for name in instances:
            await _wait_healthy(http, urls[name], processes, name)

        # 1. A policy applied through the CLI is enforced at both instances.
        policy_file = tmp_path / "no-email.yaml"
        policy_file.write_text(yaml.safe_dump(BLOCK_EMAIL_POLICY))
        output = await _apply_with_cli(processes, control_url, policy_file)
        assert "applied no-email as its version 1" in output
        head = (await control.ok("GET", "/healthz"))["version"]
        await _converged(http, list(urls.values()), head)
        for url in urls.values():
            status, body = await chat(http, url, EMAIL_PROMPT)
            assert status == 400, body
            assert body["error"]["code"] == "policy_violation"
            status, body = await chat(http, url, "Hello")
            assert status == 200, body

        # 2. A version that fails validation at one instance is rejected there only.
        await control.ok(
            "PUT",
            "/v1/providers/onprem-local",
            json={
                "site": "on-prem",
                "settings": {
                    "type": "openai",
                    "base_url": simulator,
                    "api_key_env": "MISSING_KEY_VAR",
                },
            },
        )
        bad = (await control.ok("GET", "/healthz"))["version"]

        async def reported() -> bool:
            onprem = await control.ok("GET", "/v1/instances/onprem")
            cloud = await control.ok("GET", "/v1/instances/cloud")
            return bool(onprem["sync_state"] == "rejected" and cloud["applied_version"] == bad)

        await wait_for(reported, timeout=15)
        onprem = await control.ok("GET", "/v1/instances/onprem")
        assert "MISSING_KEY_VAR" in onprem["last_error"]
        assert onprem["applied_version"] == head
        assert (await _health(http, urls["onprem"]))["version"] == head
        status, body = await chat(http, urls["onprem"], EMAIL_PROMPT)
        assert status == 400, body
        await control.ok("DELETE", "/v1/providers/onprem-local")

        # 3. The control plane dies; a restarted instance serves the last policy.
        await processes.stop("control", kill=True)
        await processes.stop("onprem")
        await processes.start("onprem", *instance_args("onprem"))
        await _wait_healthy(http, urls["onprem"], processes, "onprem")
        health = await _health(http, urls["onprem"])
        assert health["link"] == "down"
        assert health["version"] >= head
        for url in urls.values():
            status, body = await chat(http, url, EMAIL_PROMPT)
            assert status == 400, body

        # 4. The control plane returns with a newer version: both instances converge.
        await processes.start("control", *control_args)
        await _wait_healthy(http, control_url, processes, "control")
        relaxed = {
            **BLOCK_EMAIL_POLICY,
            "spec": {"entities": [{"type": "EMAIL", "action": "redact", "on": ["request"]}]},
        }
        policy_file.write_text(yaml.safe_dump(relaxed))
        output = await _apply_with_cli(processes, control_url, policy_file)
        assert "applied no-email as its version 2" in output
        newest = (await control.ok("GET", "/healthz"))["version"]
        await _converged(http, list(urls.values()), newest)
        for url in urls.values():
            status, body = await chat(http, url, EMAIL_PROMPT)
            assert status == 200, body
        listed = await control.ok("GET", "/v1/instances")
        assert {item["name"]: item["sync_state"] for item in listed["items"]} == {
            "cloud": "in_sync",
            "onprem": "in_sync",
        }


def _saved_version(state_dir: Path) -> int:
    """Return the version of the snapshot an instance saved, read back and verified."""
    files = LinkFiles(state_dir, ControlPlaneLinkSettings.model_fields["secret_key_env"].default)
    enrollment = files.load_enrollment()
    assert enrollment is not None
    saved = files.load_snapshot({enrollment.verify_key.key_id: enrollment.verify_key})
    assert saved is not None
    return saved.snapshot.version


async def test_instance_process_ignores_snapshot_cut_mid_transfer(
    tmp_path: Path, api: Api, simulator: str, processes: Processes
) -> None:
    await _configure(api, simulator)
    token = (await api.ok("POST", "/v1/enrollment-tokens", json={"site": "on-prem"}))["token"]
    proxy = CuttingProxy(api.url)
    await proxy.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state_dir = tmp_path / "onprem"
    args = ["gateway", "--control-plane", proxy.url, "--name", "onprem", "--site", "on-prem"]
    args += ["--port", str(port), "--state-dir", str(state_dir), "--enroll-token", token]
    try:
        await processes.start("onprem", *args)
        async with aiohttp.ClientSession() as http:
            await _wait_healthy(http, url, processes, "onprem")
            good = (await api.ok("GET", "/healthz"))["version"]
            await _converged(http, [url], good)
            assert _saved_version(state_dir) == good

            proxy.cut_after(300)
            await api.ok("PUT", "/v1/policies/no-email", json=BLOCK_EMAIL_POLICY)
            head = (await api.ok("GET", "/healthz"))["version"]

            async def cut() -> bool:
                return proxy.cuts == 1

            await wait_for(cut)
            # The instance process applied and saved nothing of the cut message.
            assert (await _health(http, url))["version"] == good
            assert _saved_version(state_dir) == good
            status, body = await chat(http, url, EMAIL_PROMPT)
            assert status == 200, body

            # It reconnects, receives the whole version and enforces it.
            await _converged(http, [url], head)
            status, body = await chat(http, url, EMAIL_PROMPT)
            assert status == 400, body
    finally:
        await proxy.stop()
