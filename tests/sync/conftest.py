"""Fixtures for the sync agent tests: a control plane, a provider simulator and linked
gateway instances, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.sim.openai import OpenAISimulator
from smartflow.sync.linked import LinkedGateway, start_linked_gateway
from smartflow.sync.protocol import SnapshotMessage
from tests.conftest import PROVIDER_KEY, VIRTUAL_KEY
from tests.control.conftest import Api, api, api_backend  # noqa: F401 - fixtures used here

BLOCK_EMAIL_POLICY: dict[str, Any] = {
    "apiVersion": "smartflow/v1",
    "kind": "Policy",
    "metadata": {"name": "no-email"},
    "spec": {"entities": [{"type": "EMAIL", "action": "block", "on": ["request"]}]},
}
EMAIL_PROMPT = "Write to jane.doe@example.com about the invoice."


@pytest.fixture
async def simulator() -> AsyncIterator[str]:
    """An OpenAI simulator; yields its base URL including /v1."""
    sim = OpenAISimulator(api_keys=[PROVIDER_KEY])
    url = await sim.start()
    try:
        yield url + "/v1"
    finally:
        await sim.stop()


async def configure_site(control: Api, site: str, simulator_url: str, *, model: str) -> None:
    """Give ``site`` one OpenAI provider (with its key) and a model served by it."""
    provider = f"openai-{site}"
    await control.ok(
        "PUT",
        f"/v1/providers/{provider}",
        json={
            "site": site,
            "settings": {"type": "openai", "base_url": simulator_url},
            "credentials": {"api_key": PROVIDER_KEY},
        },
    )
    await control.ok(
        "PUT", f"/v1/deployments/{provider}-gpt", json={"provider": provider, "model": "gpt-4o"}
    )
    await control.ok("PUT", f"/v1/model-aliases/{model}", json={"deployments": [f"{provider}-gpt"]})


async def add_virtual_key(control: Api) -> None:
    await control.ok(
        "PUT", "/v1/keys/test", json={"sha256": hash_key(VIRTUAL_KEY), "team": "default"}
    )


async def enrollment_token(control: Api, site: str) -> str:
    created = await control.ok("POST", "/v1/enrollment-tokens", json={"site": site})
    return str(created["token"])


def linked_config(
    state_dir: Path, control_plane_url: str, name: str, site: str, **link: Any
) -> dict[str, Any]:
    return {
        "state_dir": str(state_dir),
        "server": {"access_log": False, "instance": name, "site": site},
        "retry": {"attempts_per_deployment": 1},
        "timeouts": {"connect_s": 2, "read_s": 5},
        "control_plane": {
            "url": control_plane_url,
            "retry_initial_s": 0.05,
            "retry_max_s": 0.3,
            **link,
        },
    }


StartLinked = Callable[..., Awaitable[LinkedGateway]]


@pytest.fixture
async def start_linked(tmp_path: Path) -> AsyncIterator[StartLinked]:
    """Start linked instances in this process; each is stopped at the end of the test."""
    started: list[LinkedGateway] = []

    async def start(
        url: str,
        name: str,
        site: str,
        token: str | None = None,
        *,
        usage: dict[str, Any] | None = None,
        **link: Any,
    ) -> LinkedGateway:
        data = linked_config(tmp_path / name, url, name, site, **link)
        if usage is not None:
            data["usage"] = usage
        config = parse_config(data)
        linked = await start_linked_gateway(
            config, port=0, enroll_token=token, environ={}, wait_for_sync_s=None
        )
        started.append(linked)
        return linked

    yield start
    for linked in started:
        await linked.stop()


def saved_message(linked: LinkedGateway) -> SnapshotMessage:
    """Return the snapshot message the instance saved, read back and verified."""
    enrollment = linked.files.load_enrollment()
    assert enrollment is not None
    saved = linked.files.load_snapshot({enrollment.verify_key.key_id: enrollment.verify_key})
    assert saved is not None
    return saved.message


async def chat(http: aiohttp.ClientSession, url: str, text: str) -> tuple[int, Any]:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    headers = {"Authorization": f"Bearer {VIRTUAL_KEY}"}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as reply:
        return reply.status, await reply.json(content_type=None)


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 that can cut the link part-way through what the server sends.

    After ``cut_after(n)``, it forwards ``n`` more bytes from the server and then closes
    both connections, as a network failure in the middle of a message would.
    """

    def __init__(self, target_url: str) -> None:
        host, _, port = target_url.removeprefix("http://").partition(":")
        self._target = (host, int(port))
        self._budget: int | None = None
        self._replacement: tuple[bytes, bytes] | None = None
        self.replaced = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.cuts = 0
        self.url = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def cut_after(self, n_bytes: int | None) -> None:
        self._budget = n_bytes

    def replace(self, old: bytes, new: bytes) -> None:
        """Replace ``old`` by ``new`` (same length) once, in what the server sends next."""
        assert len(old) == len(new)
        self._replacement = (old, new)

    async def stop(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))
        up = asyncio.create_task(self._pump(reader, upstream_writer, downstream=False))
        down = asyncio.create_task(self._pump(upstream_reader, writer, downstream=True))
        await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for each in (writer, upstream_writer):
            each.close()
            self._writers.discard(each)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, downstream: bool
    ) -> None:
        while chunk := await reader.read(1024 * 1024):
            if downstream and self._replacement is not None and self._replacement[0] in chunk:
                chunk = chunk.replace(*self._replacement, 1)
                self._replacement = None
                self.replaced += 1
            if downstream and self._budget is not None:
                if len(chunk) >= self._budget:
                    writer.write(chunk[: self._budget])
                    await writer.drain()
                    self._budget = None
                    self.cuts += 1
                    return
                self._budget -= len(chunk)
            writer.write(chunk)
            await writer.drain()
