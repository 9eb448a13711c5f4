"""The sync agent against a real control plane, with linked instances in this process."""

from __future__ import annotations

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from smartflow.sim.openai import OpenAISimulator
from smartflow.sync.signing import SigningKey, sign_snapshot
from tests.conftest import PROVIDER_KEY, VIRTUAL_KEY
from tests.control.conftest import Api, wait_for
from tests.sync.conftest import (
    BLOCK_EMAIL_POLICY,
    EMAIL_PROMPT,
    CuttingProxy,
    StartLinked,
    add_virtual_key,
    chat,
    configure_site,
    enrollment_token,
    saved_message,
)


async def test_policy_reaches_linked_instance(
    api: Api, simulator: str, start_linked: StartLinked
) -> None:
    await configure_site(api, "on-prem", simulator, model="gpt-4o")
    await add_virtual_key(api)
    token = await enrollment_token(api, "on-prem")
    linked = await start_linked(api.url, "onprem-1", "on-prem", token)
    await linked.agent.wait_for_version(None, timeout=5)

    async with aiohttp.ClientSession() as http:
        status, body = await chat(http, linked.url, EMAIL_PROMPT)
        assert status == 200, body

        await api.ok("PUT", "/v1/policies/no-email", json=BLOCK_EMAIL_POLICY)
        head = (await api.ok("GET", "/healthz"))["version"]
        await linked.agent.wait_for_version(head, timeout=5)

        status, body = await chat(http, linked.url, EMAIL_PROMPT)
        assert status == 400, body
        assert body["error"]["code"] == "policy_violation"
        status, body = await chat(http, linked.url, "Hello there")
        assert status == 200, body

    async def in_sync() -> bool:
        instance = await api.ok("GET", "/v1/instances/onprem-1")
        return bool(instance["sync_state"] == "in_sync" and instance["applied_version"] == head)

    await wait_for(in_sync)


async def test_invalid_snapshot_rejected_and_reported(
    api: Api, simulator: str, start_linked: StartLinked
) -> None:
    await configure_site(api, "on-prem", simulator, model="gpt-4o")
    await add_virtual_key(api)
    await api.ok("PUT", "/v1/policies/no-email", json=BLOCK_EMAIL_POLICY)
    linked = await start_linked(
        api.url, "onprem-1", "on-prem", await enrollment_token(api, "on-prem")
    )
    good = await linked.agent.wait_for_version(None, timeout=5)

    # Valid at the control plane, but this site has no such variable for the key.
    await api.ok(
        "PUT",
        "/v1/providers/local-only",
        json={
            "site": "on-prem",
            "settings": {"type": "openai", "base_url": simulator, "api_key_env": "MISSING_KEY_VAR"},
        },
    )
    head = (await api.ok("GET", "/healthz"))["version"]

    async def rejected() -> bool:
        instance = await api.ok("GET", "/v1/instances/onprem-1")
        return bool(instance["sync_state"] == "rejected")

    await wait_for(rejected)
    instance = await api.ok("GET", "/v1/instances/onprem-1")
    assert "MISSING_KEY_VAR" in instance["last_error"]
    assert instance["applied_version"] == good
    assert head > good
    assert linked.agent.applied_version == good
    assert linked.live.state is not None
    assert linked.live.state.version == good
    async with aiohttp.ClientSession() as http:
        status, body = await chat(http, linked.url, EMAIL_PROMPT)
        assert status == 400, body
        assert body["error"]["code"] == "policy_violation"


async def test_tampered_snapshot_rejected(
    api: Api, simulator: str, start_linked: StartLinked
) -> None:
    await configure_site(api, "on-prem", simulator, model="gpt-4o")
    await add_virtual_key(api)
    proxy = CuttingProxy(api.url)
    await proxy.start()
    try:
        linked = await start_linked(
            proxy.url, "onprem-1", "on-prem", await enrollment_token(api, "on-prem")
        )
        good = await linked.agent.wait_for_version(None, timeout=5)
        # A man in the middle turns "block" into "allow" in the next snapshot, keeping
        # the frame's length, so only the signature can tell.
        proxy.replace(b'"action":"block"', b'"action":"allow"')
        await api.ok("PUT", "/v1/policies/no-email", json=BLOCK_EMAIL_POLICY)

        async def rejected() -> bool:
            instance = await api.ok("GET", "/v1/instances/onprem-1")
            return bool(instance["sync_state"] == "rejected")

        await wait_for(rejected)
        assert proxy.replaced == 1
        instance = await api.ok("GET", "/v1/instances/onprem-1")
        assert "signature" in instance["last_error"]
        assert linked.agent.applied_version == good
    finally:
        await proxy.stop()


async def test_link_cut_mid_snapshot(api: Api, simulator: str, start_linked: StartLinked) -> None:
    await configure_site(api, "on-prem", simulator, model="gpt-4o")
    await add_virtual_key(api)
    proxy = CuttingProxy(api.url)
    await proxy.start()
    try:
        linked = await start_linked(
            proxy.url, "onprem-1", "on-prem", await enrollment_token(api, "on-prem")
        )
        good = await linked.agent.wait_for_version(None, timeout=5)
        saved = saved_message(linked).signature
        proxy.cut_after(300)
        await api.ok("PUT", "/v1/policies/no-email", json=BLOCK_EMAIL_POLICY)
        head = (await api.ok("GET", "/healthz"))["version"]
        snapshot = await api.ok("GET", f"/v1/snapshots/{head}")
        assert len(str(snapshot["content"])) > 600  # the cut falls inside the message

        async def cut() -> bool:
            return proxy.cuts == 1

        await wait_for(cut)
        # Nothing of the cut message is applied or saved.
        assert linked.agent.applied_version == good
        assert saved_message(linked).signature == saved
        async with aiohttp.ClientSession() as http:
            status, body = await chat(http, linked.url, EMAIL_PROMPT)
            assert status == 200, body

            # The agent reconnects and gets the whole version.
            await linked.agent.wait_for_version(head, timeout=5)
            status, body = await chat(http, linked.url, EMAIL_PROMPT)
            assert status == 400, body
    finally:
        await proxy.stop()


async def test_replayed_or_foreign_snapshots_rejected(
    api: Api, simulator: str, start_linked: StartLinked
) -> None:
    await configure_site(api, "on-prem", simulator, model="gpt-4o")
    await add_virtual_key(api)
    token = await enrollment_token(api, "on-prem")
    linked = await start_linked(api.url, "onprem-1", "on-prem", token)
    await linked.agent.wait_for_version(None, timeout=5)
    old = saved_message(linked)
    await api.ok("PUT", "/v1/policies/no-email", json=BLOCK_EMAIL_POLICY)
    head = (await api.ok("GET", "/healthz"))["version"]
    await linked.agent.wait_for_version(head, timeout=5)
    current = saved_message(linked)

    # An older version, even correctly signed, is a replay.
    reply = await linked.agent.handle(old.model_dump_json())
    assert reply is not None
    assert "older than the applied version" in reply["error"]

    # The same version again is acknowledged without rebuilding.
    assert await linked.agent.handle(current.model_dump_json()) == {"version": head}

    # A snapshot signed by another key, or made for another instance, is rejected.
    stranger = SigningKey(Ed25519PrivateKey.generate())
    forged = sign_snapshot({**current.snapshot, "version": head + 1}, stranger)
    reply = await linked.agent.handle(forged.model_dump_json())
    assert reply is not None
    assert "unknown key" in reply["error"]
    other = {**current.snapshot, "instance": "onprem-2", "version": head + 1}
    reply = await linked.agent.handle(sign_snapshot(other, api.plane.signing_key).model_dump_json())
    assert reply is not None
    assert "for instance 'onprem-2'" in reply["error"]
    assert linked.agent.applied_version == head
    assert linked.live.state is not None
    assert linked.live.state.version == head


async def test_request_in_flight_keeps_its_version(api: Api, start_linked: StartLinked) -> None:
    slow = OpenAISimulator(api_keys=[PROVIDER_KEY], chunk_delay=0.05)
    slow_url = await slow.start()
    try:
        await configure_site(api, "on-prem", slow_url + "/v1", model="gpt-4o")
        await add_virtual_key(api)
        linked = await start_linked(
            api.url, "onprem-1", "on-prem", await enrollment_token(api, "on-prem")
        )
        await linked.agent.wait_for_version(None, timeout=5)
        body = {
            "model": "gpt-4o",
            "stream": True,
            "messages": [{"role": "user", "content": "Count slowly to twenty please."}],
        }
        headers = {"Authorization": f"Bearer {VIRTUAL_KEY}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                linked.url + "/v1/chat/completions", json=body, headers=headers
            ) as stream:
                assert stream.status == 200
                first = await stream.content.readline()
                assert first.startswith(b"data: ")
                # The model disappears from the configuration while the stream runs.
                await api.ok("DELETE", "/v1/model-aliases/gpt-4o")
                head = (await api.ok("GET", "/healthz"))["version"]
                await linked.agent.wait_for_version(head, timeout=5)
                assert not stream.content.at_eof()  # the swap happened mid-stream
                rest = await stream.read()
            assert rest.rstrip().endswith(b"data: [DONE]")
            status, reply = await chat(http, linked.url, "Hello")
            assert status == 404, reply
    finally:
        await slow.stop()
