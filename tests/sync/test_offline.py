"""A linked instance without its control plane: start from the saved snapshot, staleness."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from smartflow.control import start_control_plane
from smartflow.control.app import RunningControlPlane
from smartflow.core.errors import ConfigError
from tests.conftest import VIRTUAL_KEY
from tests.control.conftest import Api, make_settings, wait_for
from tests.sync.conftest import (
    BLOCK_EMAIL_POLICY,
    EMAIL_PROMPT,
    StartLinked,
    add_virtual_key,
    chat,
    configure_site,
    enrollment_token,
)


async def _start_plane(tmp_path: Path, port: int = 0) -> RunningControlPlane:
    url = f"sqlite+aiosqlite:///{tmp_path / 'control.db'}"
    return await start_control_plane(make_settings(tmp_path / "plane", url, port=port))


async def test_restart_offline_serves_saved_policy(
    tmp_path: Path, simulator: str, start_linked: StartLinked
) -> None:
    plane = await _start_plane(tmp_path)
    port = int(plane.url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as http:
        api = Api(plane.url, http, plane)
        try:
            await configure_site(api, "on-prem", simulator, model="gpt-4o")
            await add_virtual_key(api)
            await api.ok("PUT", "/v1/policies/no-email", json=BLOCK_EMAIL_POLICY)
            first = await start_linked(
                plane.url, "onprem-1", "on-prem", await enrollment_token(api, "on-prem")
            )
            version = await first.agent.wait_for_version(None, timeout=5)
            await first.stop()
        finally:
            await plane.stop()

        # The control plane is down; the instance restarts from its saved snapshot.
        again = await start_linked(plane.url, "onprem-1", "on-prem")
        assert again.live.state is not None
        assert again.live.state.version == version
        async with http.get(again.url + "/healthz") as reply:
            health = await reply.json()
        assert health == {"status": "ok", "version": version, "link": "down"}
        status, body = await chat(http, again.url, EMAIL_PROMPT)
        assert status == 400, body
        assert body["error"]["code"] == "policy_violation"
        status, body = await chat(http, again.url, "Hello")
        assert status == 200, body

        # Back with a newer version: the instance reconnects and converges.
        plane = await _start_plane(tmp_path, port)
        api = Api(plane.url, http, plane)
        try:
            await api.ok("DELETE", "/v1/policies/no-email")
            head = (await api.ok("GET", "/healthz"))["version"]
            await again.agent.wait_for_version(head, timeout=10)
            status, body = await chat(http, again.url, EMAIL_PROMPT)
            assert status == 200, body
        finally:
            await again.stop()
            await plane.stop()


async def test_stale_configuration_rejected(
    tmp_path: Path, simulator: str, start_linked: StartLinked
) -> None:
    plane = await _start_plane(tmp_path)
    port = int(plane.url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as http:
        api = Api(plane.url, http, plane)
        try:
            await configure_site(api, "on-prem", simulator, model="gpt-4o")
            await add_virtual_key(api)
            linked = await start_linked(
                plane.url,
                "onprem-1",
                "on-prem",
                await enrollment_token(api, "on-prem"),
                max_staleness_s=0.5,
                on_stale="reject",
            )
            await linked.agent.wait_for_version(None, timeout=5)
        except BaseException:
            await plane.stop()
            raise
        await plane.stop()

        # Within the limit the instance serves; past it, it rejects in each dialect.
        status, body = await chat(http, linked.url, "Hello")
        assert status == 200, body
        await asyncio.sleep(0.7)
        status, body = await chat(http, linked.url, "Hello")
        assert status == 503, body
        assert body["error"]["code"] == "configuration_unavailable"
        assert "0.5 s" in body["error"]["message"]
        headers = {"x-api-key": VIRTUAL_KEY, "anthropic-version": "2023-06-01"}
        message = {
            "model": "gpt-4o",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Hi"}],
        }
        async with http.post(linked.url + "/v1/messages", json=message, headers=headers) as reply:
            anthropic = await reply.json()
            assert reply.status == 503
        assert anthropic["type"] == "error"
        assert anthropic["error"]["type"] == "api_error"

        # The link comes back: requests are served again.
        plane = await _start_plane(tmp_path, port)
        try:

            async def served() -> bool:
                return (await chat(http, linked.url, "Hello"))[0] == 200

            await wait_for(served, timeout=10)
        finally:
            await linked.stop()
            await plane.stop()


async def test_unenrolled_without_token_fails(tmp_path: Path, start_linked: StartLinked) -> None:
    plane = await _start_plane(tmp_path)
    try:
        try:
            await start_linked(plane.url, "onprem-1", "on-prem")
        except ConfigError as exc:
            assert "not enrolled yet" in str(exc)
        else:
            raise AssertionError("an instance without enrollment or token must not start")
    finally:
        await plane.stop()
