"""Sync stream tests with a real aiohttp WebSocket client playing the instance."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import event

from smartflow.config.schema import parse_config
from smartflow.control import start_control_plane
from smartflow.control.services.context import SYSTEM
from smartflow.control.services.notifier import VersionNotifier
from smartflow.control.services.plane import ControlPlane
from smartflow.control.services.transactions import Store
from smartflow.policy.engine import compile_policies
from smartflow.sync.protocol import (
    COMPLIANCE_DOCUMENT,
    ErrorMessage,
    Snapshot,
    SnapshotMessage,
    parse_server_message,
    snapshot_policy_documents,
)
from smartflow.sync.signing import (
    PUBLIC_KEY_FILE,
    SignatureError,
    SigningKey,
    VerifyKey,
    verify_snapshot,
)
from tests.control.conftest import Api, make_settings, wait_for

SITE_A_SECRET = "sk-fake-site-a-secret-1111"
SITE_B_SECRET = "sk-fake-site-b-secret-2222"


class FakeInstance:
    """A sync client: receives snapshots, verifies them and replies."""

    def __init__(self, stream: aiohttp.ClientWebSocketResponse, enrolled: dict[str, Any]) -> None:
        self.stream = stream
        self.enrolled = enrolled
        key = VerifyKey.from_base64(enrolled["signing_key"]["public_key"])
        assert key.key_id == enrolled["signing_key"]["key_id"]
        self.trusted = {key.key_id: key}
        self.raw: list[str] = []

    async def receive(self, timeout: float = 5.0) -> SnapshotMessage | ErrorMessage:
        message = await self.stream.receive(timeout=timeout)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        self.raw.append(message.data)
        return parse_server_message(message.data)

    async def snapshot(self, timeout: float = 5.0) -> tuple[SnapshotMessage, Snapshot]:
        message = await self.receive(timeout)
        assert isinstance(message, SnapshotMessage), message
        return message, verify_snapshot(message, self.trusted)

    async def ack(self, version: int) -> None:
        await self.stream.send_json({"version": version})

    async def reject(self, version: int, error: str) -> None:
        await self.stream.send_json({"version": version, "error": error})


@asynccontextmanager
async def connect(api: Api, enrolled: dict[str, Any]) -> AsyncIterator[FakeInstance]:
    headers = {"Authorization": f"Bearer {enrolled['credential']}"}
    async with api.http.ws_connect(api.url + enrolled["sync_path"], headers=headers) as stream:
        yield FakeInstance(stream, enrolled)


async def instance_state(api: Api, name: str) -> dict[str, Any]:
    return dict(await api.ok("GET", f"/v1/instances/{name}"))


def provider(site: str, secret: str) -> dict[str, Any]:
    return {
        "site": site,
        "settings": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"},
        "credentials": {"api_key": secret},
    }


async def configure_two_sites(api: Api) -> None:
    await api.ok("PUT", "/v1/providers/openai-a", json=provider("site-a", SITE_A_SECRET))
    await api.ok("PUT", "/v1/providers/openai-b", json=provider("site-b", SITE_B_SECRET))
    for name, target in (("dep-a", "openai-a"), ("dep-b", "openai-b")):
        await api.ok("PUT", f"/v1/deployments/{name}", json={"provider": target, "model": "gpt-4o"})
    await api.ok("PUT", "/v1/model-aliases/gpt-4o", json={"deployments": ["dep-a", "dep-b"]})
    await api.ok("PUT", "/v1/pinned-tunings/dep-b", json={"params": {"top_k": 40}})
    await api.ok("PUT", "/v1/keys/app", json={"labels": ["internal"]})


# --- the first snapshot and its signature ---------------------------------------------


async def test_snapshot_on_connect_verifies(api: Api) -> None:
    await configure_two_sites(api)
    enrolled = await api.enroll("edge-a", "site-a")
    async with connect(api, enrolled) as instance:
        message, snapshot = await instance.snapshot()
    head = (await api.ok("GET", "/healthz", token=None))["version"]
    assert snapshot.version == head
    assert snapshot.instance == "edge-a"
    assert snapshot.site == "site-a"
    assert message.key_id == enrolled["signing_key"]["key_id"]
    assert snapshot.content.keys[0].name == "app"
    assert snapshot.content.models["gpt-4o"][1].pinned == {"top_k": 40}


async def test_signing_key_file_matches_published_key(api: Api) -> None:
    published = await api.ok("GET", "/v1/signing-key", token=None)
    state_dir = api.plane.settings.state_dir
    pem = (state_dir / PUBLIC_KEY_FILE).read_bytes()
    public_key = serialization.load_pem_public_key(pem)
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert base64.b64encode(raw).decode() == published["public_key"]
    mode = (state_dir / "snapshot-signing.key").stat().st_mode & 0o777
    assert mode == 0o600


async def test_tampered_snapshot_fails_verification(api: Api) -> None:
    await configure_two_sites(api)
    enrolled = await api.enroll("edge-a", "site-a")
    async with connect(api, enrolled) as instance:
        message, _ = await instance.snapshot()
    changed = copy.deepcopy(message.snapshot)
    changed["content"]["keys"][0]["team"] = "attacker"
    with pytest.raises(SignatureError, match="does not verify"):
        verify_snapshot(message.model_copy(update={"snapshot": changed}), instance.trusted)
    version_bumped = copy.deepcopy(message.snapshot)
    version_bumped["version"] += 1
    with pytest.raises(SignatureError):
        verify_snapshot(message.model_copy(update={"snapshot": version_bumped}), instance.trusted)
    signature = bytearray(base64.b64decode(message.signature))
    signature[0] ^= 1
    flipped = message.model_copy(update={"signature": base64.b64encode(signature).decode()})
    with pytest.raises(SignatureError):
        verify_snapshot(flipped, instance.trusted)
    with pytest.raises(SignatureError, match="unknown key"):
        verify_snapshot(message.model_copy(update={"key_id": "ed25519:other"}), instance.trusted)


async def test_other_key_fails_verification(api: Api) -> None:
    enrolled = await api.enroll("edge-a", "site-a")
    async with connect(api, enrolled) as instance:
        message, _ = await instance.snapshot()
    impostor = SigningKey(Ed25519PrivateKey.generate()).verify_key
    with pytest.raises(SignatureError):
        verify_snapshot(message, {message.key_id: impostor})


# --- pushes, acks and rejects ---------------------------------------------------------------------


async def test_change_pushed_within_a_second(api: Api) -> None:
    enrolled = await api.enroll("edge-a", "site-a")
    async with connect(api, enrolled) as instance:
        _, first = await instance.snapshot()
        await instance.ack(first.version)
        started = time.monotonic()
        await api.ok("PUT", "/v1/teams/research", json={"monthly_budget_usd": 100})
        _, pushed = await instance.snapshot(timeout=1.0)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert pushed.version == first.version + 1
    assert [team.name for team in pushed.content.teams] == ["research"]


async def test_ack_recorded(api: Api) -> None:
    enrolled = await api.enroll("edge-a", "site-a")
    async with connect(api, enrolled) as instance:
        _, snapshot = await instance.snapshot()
        await instance.ack(snapshot.version)

        async def applied() -> bool:
            return (await instance_state(api, "edge-a"))["applied_version"] == snapshot.version

        await wait_for(applied)
        state = await instance_state(api, "edge-a")
        assert state["sync_state"] == "in_sync"
        assert state["connected"] is True
        assert state["last_seen"] is not None
        assert state["last_error"] is None

    async def disconnected() -> bool:
        return (await instance_state(api, "edge-a"))["sync_state"] == "disconnected"

    await wait_for(disconnected)


async def test_reject_recorded_with_error(api: Api) -> None:
    enrolled = await api.enroll("edge-a", "site-a")
    async with connect(api, enrolled) as instance:
        _, first = await instance.snapshot()
        await instance.ack(first.version)
        await api.ok("PUT", "/v1/teams/t", json={})
        _, second = await instance.snapshot()
        await instance.reject(second.version, "provider openai-a: base_url unreachable")

        async def rejected() -> bool:
            return (await instance_state(api, "edge-a"))["sync_state"] == "rejected"

        await wait_for(rejected)
        state = await instance_state(api, "edge-a")
        assert state["last_error"] == "provider openai-a: base_url unreachable"
        assert state["applied_version"] == first.version
        await api.ok("PUT", "/v1/teams/t", json={"description": "fixed"})
        _, third = await instance.snapshot()
        await instance.ack(third.version)

        async def recovered() -> bool:
            return (await instance_state(api, "edge-a"))["applied_version"] == third.version

        await wait_for(recovered)
        assert (await instance_state(api, "edge-a"))["last_error"] is None


async def test_reply_for_unsent_version_rejected(api: Api) -> None:
    enrolled = await api.enroll("edge-a", "site-a")
    async with connect(api, enrolled) as instance:
        _, snapshot = await instance.snapshot()
        await instance.ack(snapshot.version + 10)
        error = await instance.receive()
        assert isinstance(error, ErrorMessage)
        assert "was not sent" in error.message
        await instance.stream.send_str("not json")
        error = await instance.receive()
        assert isinstance(error, ErrorMessage)
        assert "not valid JSON" in error.message
    state = await instance_state(api, "edge-a")
    assert state["applied_version"] is None


# --- secrets per site -----------------------------------------------------------------


async def test_site_receives_only_its_credentials(api: Api) -> None:
    await configure_two_sites(api)
    site_a = await api.enroll("edge-a", "site-a")
    site_b = await api.enroll("edge-b", "site-b")
    async with connect(api, site_a) as instance_a, connect(api, site_b) as instance_b:
        _, snapshot_a = await instance_a.snapshot()
        _, snapshot_b = await instance_b.snapshot()
        await api.ok("PUT", "/v1/teams/t", json={})
        _, pushed_a = await instance_a.snapshot()
    providers_a = snapshot_a.content.providers
    credentials_a = providers_a["openai-a"].credentials
    assert credentials_a is not None
    assert credentials_a.api_key is not None
    assert credentials_a.api_key.get_secret_value() == SITE_A_SECRET
    assert providers_a["openai-b"].credentials is None
    assert snapshot_b.content.providers["openai-a"].credentials is None
    credentials_b = snapshot_b.content.providers["openai-b"].credentials
    assert credentials_b is not None
    assert credentials_b.api_key is not None
    assert credentials_b.api_key.get_secret_value() == SITE_B_SECRET
    assert pushed_a.content.providers["openai-b"].credentials is None
    for text in instance_a.raw:
        assert SITE_B_SECRET not in text
    for text in instance_b.raw:
        assert SITE_A_SECRET not in text


# --- what an instance can build from a snapshot ---------------------------------------


async def test_snapshot_forms_gateway_config(api: Api) -> None:
    await configure_two_sites(api)
    rule = {"label": "confidential", "allowed_sites": ["site-a"]}
    await api.ok("PUT", "/v1/compliance-rules/confidential", json=rule)
    policy = {
        "apiVersion": "smartflow/v1",
        "kind": "Policy",
        "metadata": {"name": "pii"},
        "spec": {"entities": [{"type": "EMAIL", "action": "redact"}]},
    }
    await api.ok("PUT", "/v1/policies/pii", json=policy)

    enrolled = await api.enroll("edge-a", "site-a")
    async with connect(api, enrolled) as instance:
        _, snapshot = await instance.snapshot()

    content = snapshot.content
    config = parse_config(
        {
            "server": {"instance": snapshot.instance, "site": snapshot.site},
            "providers": {
                name: entry.settings.model_dump(exclude_unset=True)
                for name, entry in content.providers.items()
            },
            "models": {
                name: [deployment.model_dump() for deployment in deployments]
                for name, deployments in content.models.items()
            },
            "keys": [key.model_dump() for key in content.keys],
        }
    )
    assert [d.site for d in config.models["gpt-4o"]] == ["site-a", "site-b"]

    documents = snapshot_policy_documents(content)
    assert [document.name for document in documents] == ["pii", COMPLIANCE_DOCUMENT]
    evaluator = compile_policies(documents)
    assert evaluator is not None


# --- stream lifecycle -----------------------------------------------------------------


async def test_bad_credential_is_401(api: Api) -> None:
    headers = {"Authorization": "Bearer sf-inst-wrong"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as failure:
        async with api.http.ws_connect(api.url + "/v1/sync", headers=headers):
            pass
    assert failure.value.status == 401


async def test_deleted_instance_stream_closed(api: Api) -> None:
    enrolled = await api.enroll("edge-a", "site-a")
    async with connect(api, enrolled) as instance:
        await instance.snapshot()
        await api.ok("DELETE", "/v1/instances/edge-a")
        message = await instance.stream.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == 4001
    with pytest.raises(aiohttp.WSServerHandshakeError):
        async with connect(api, enrolled):
            pass


async def test_new_stream_replaces_old(api: Api) -> None:
    enrolled = await api.enroll("edge-a", "site-a")
    async with connect(api, enrolled) as first:
        await first.snapshot()
        async with connect(api, enrolled) as second:
            await second.snapshot()
            message = await first.stream.receive(timeout=5)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert message.data == 4000
            await asyncio.sleep(0.1)
            state = await instance_state(api, "edge-a")
            assert state["connected"] is True
            assert state["sync_state"] != "disconnected"


@pytest.mark.parametrize("api_backend", ["sqlite", "postgresql"])
async def test_fan_out_reads_version_once(api: Api) -> None:
    await configure_two_sites(api)
    names = [f"edge-{index}" for index in range(12)]
    enrolled = [
        await api.enroll(name, "site-a" if index % 2 else "site-b")
        for index, name in enumerate(names)
    ]
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    engine = api.plane.database.engine.sync_engine
    async with contextlib.AsyncExitStack() as streams:
        instances = [await streams.enter_async_context(connect(api, each)) for each in enrolled]
        for instance in instances:
            _, first = await instance.snapshot()
            await instance.ack(first.version)
        await wait_for(lambda: _all_in_state(api, names, "in_sync"))
        event.listen(engine, "before_cursor_execute", record)
        try:
            await api.ok("PUT", "/v1/teams/fan-out", json={})
            for name, instance in zip(names, instances, strict=True):
                _, snapshot = await instance.snapshot()
                assert snapshot.version == first.version + 1
                assert snapshot.instance == name
                own, other = (SITE_A_SECRET, SITE_B_SECRET)[
                    :: 1 if snapshot.site == "site-a" else -1
                ]
                assert own in instance.raw[-1]
                assert other not in instance.raw[-1]
            for instance in instances:
                await instance.ack(first.version + 1)
            await wait_for(lambda: _all_applied(api, names, first.version + 1))
        finally:
            event.remove(engine, "before_cursor_execute", record)
    version_reads = [
        s for s in statements if s.startswith("SELECT") and "FROM snapshot_versions" in s
    ]
    status_writes = [s for s in statements if s.startswith("UPDATE instances")]
    # One read of the new version for all 12 streams, and status written in batches,
    # not one read and two writes per stream.
    assert len(version_reads) == 1, version_reads
    assert 1 <= len(status_writes) < len(names), status_writes


async def _all_in_state(api: Api, names: list[str], state: str) -> bool:
    listed = await api.ok("GET", "/v1/instances")
    states = {row["name"]: row["sync_state"] for row in _rows(listed)}
    return all(states.get(name) == state for name in names)


async def _all_applied(api: Api, names: list[str], version: int) -> bool:
    listed = await api.ok("GET", "/v1/instances")
    rows = {row["name"]: row for row in _rows(listed)}
    return all(
        rows[name]["applied_version"] == version and rows[name]["sync_state"] == "in_sync"
        for name in names
    )


def _rows(listed: dict[str, Any]) -> list[dict[str, Any]]:
    return list(listed["items"])


async def test_plain_get_without_upgrade_is_400(api: Api) -> None:
    enrolled = await api.enroll("edge-a", "site-a")
    status, body = await api.call("GET", "/v1/sync", token=enrolled["credential"])
    assert status == 400
    assert "WebSocket" in body["error"]["message"]


@pytest.mark.parametrize("api_backend", ["postgresql"])
async def test_sync_on_postgresql(api: Api) -> None:
    await configure_two_sites(api)
    enrolled = await api.enroll("edge-a", "site-a")
    async with connect(api, enrolled) as instance:
        _, first = await instance.snapshot()
        await instance.ack(first.version)
        await api.ok("PUT", "/v1/teams/t", json={})
        _, second = await instance.snapshot(timeout=1.0)
        assert second.version == first.version + 1
        await instance.reject(second.version, "bad")

        async def rejected() -> bool:
            return (await instance_state(api, "edge-a"))["sync_state"] == "rejected"

        await wait_for(rejected)
    assert SITE_B_SECRET not in "".join(instance.raw)


async def test_polling_finds_versions_from_other_processes(api: Api) -> None:
    enrolled = await api.enroll("edge-a", "site-a")
    async with connect(api, enrolled) as instance:
        _, first = await instance.snapshot()

        async def sent_recorded() -> bool:
            return (await instance_state(api, "edge-a"))["sync_state"] == "syncing"

        # The second Store below does not share this process's write lock, and two
        # writers on one SQLite file are not supported: let the queued status write land.
        await wait_for(sent_recorded)
        # A change made through a second Store on the same database is not announced to
        # this process's notifier, so the stream must find it by polling.
        other = Store(api.plane.database, VersionNotifier(), snapshot_retention=200)
        async with other.write(SYSTEM) as tx:
            tx.changed("change from another process")
        _, pushed = await instance.snapshot(timeout=api.plane.settings.sync_poll_interval_s + 2)
    assert pushed.version == first.version + 1
    await asyncio.sleep(0)


async def test_shutdown_marks_disconnected(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state", f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    running = await start_control_plane(settings)
    async with aiohttp.ClientSession() as http:
        api = Api(running.url, http, running)
        enrolled = await api.enroll("edge-a", "site-a")
        async with connect(api, enrolled) as instance:
            _, snapshot = await instance.snapshot()
            await instance.ack(snapshot.version)
            await wait_for(lambda: _applied(api, "edge-a", snapshot.version))
            await running.stop()
            message = await instance.stream.receive(timeout=5)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert message.data == 1001
    reopened = await ControlPlane.open(settings, lambda _: False)
    try:
        state = await reopened.instances.get("edge-a")
    finally:
        await reopened.close()
    assert state.sync_state == "disconnected"
    assert state.applied_version == snapshot.version


async def _applied(api: Api, name: str, version: int) -> bool:
    return (await instance_state(api, name))["applied_version"] == version
