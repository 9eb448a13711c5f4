"""Credentials per site, TLS on the link, and what the instance keeps on disk."""

from __future__ import annotations

import hashlib
import ssl
import stat
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from smartflow.control import start_control_plane
from smartflow.control.api.routes import OPERATIONS
from smartflow.core.errors import ConfigError
from smartflow.sync.agent import backoff_delay
from smartflow.sync.state import ENROLLMENT_FILE, SNAPSHOT_FILE
from tests.conftest import PROVIDER_KEY
from tests.control.conftest import Api, make_settings
from tests.control.test_protocol import _self_signed
from tests.sync.conftest import (
    StartLinked,
    add_virtual_key,
    configure_site,
    enrollment_token,
)

ONPREM_SECRET = "sk-onprem-only-secret-0123456789"


async def test_instance_gets_only_own_site_credentials(
    api: Api, simulator: str, start_linked: StartLinked
) -> None:
    await configure_site(api, "cloud", simulator, model="gpt-4o")
    await add_virtual_key(api)
    await api.ok(
        "PUT",
        "/v1/providers/onprem-openai",
        json={
            "site": "on-prem",
            "settings": {"type": "openai", "base_url": simulator},
            "credentials": {"api_key": ONPREM_SECRET},
        },
    )
    linked = await start_linked(api.url, "cloud-1", "cloud", await enrollment_token(api, "cloud"))
    await linked.agent.wait_for_version(None, timeout=5)
    state = linked.live.state
    assert state is not None
    providers = state.snapshot.content.providers
    assert providers["onprem-openai"].credentials is None
    own = providers["openai-cloud"].credentials
    assert own is not None
    assert own.revealed() == {"api_key": PROVIDER_KEY}

    # Every read endpoint of the admin API rejects the instance's own credential.
    enrollment = linked.files.load_enrollment()
    assert enrollment is not None
    bearer = enrollment.credential
    for operation in OPERATIONS:
        if operation.method != "GET" or operation.auth in ("none", "instance"):
            continue
        path = operation.path.replace("{name}", "onprem-openai").replace("{version}", "1")
        path = path.replace("{id}", "1")
        status, body = await api.call("GET", path, token=bearer)
        assert status == 401, (path, status)
        assert ONPREM_SECRET not in str(body)

    # No file of the instance contains the other site's secret, or its own in clear.
    for path in linked.files.directory.iterdir():
        data = path.read_bytes()
        assert ONPREM_SECRET.encode() not in data, path
        assert PROVIDER_KEY.encode() not in data, path
        assert bearer.encode() not in data, path
    for name in (ENROLLMENT_FILE, SNAPSHOT_FILE):
        mode = stat.S_IMODE((linked.files.directory / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


def _fingerprint(cert_file: Path) -> str:
    certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    der = certificate.public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


async def _tls_plane(tmp_path: Path) -> tuple[Api, aiohttp.ClientSession, Path]:
    cert_file, key_file = _self_signed(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path / 'control.db'}"
    settings = make_settings(
        tmp_path / "plane", url, tls_cert_file=cert_file, tls_key_file=key_file
    )
    running = await start_control_plane(settings)
    context = ssl.create_default_context(cafile=str(cert_file))
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
    return Api(running.url, http, running), http, cert_file


@pytest.mark.parametrize("check", ["fingerprint", "ca_file"])
async def test_tls_link_checks_certificate(
    tmp_path: Path, simulator: str, start_linked: StartLinked, check: str
) -> None:
    api, http, cert_file = await _tls_plane(tmp_path)
    try:
        assert api.url.startswith("https://")
        await configure_site(api, "on-prem", simulator, model="gpt-4o")
        option = (
            {"fingerprint": _fingerprint(cert_file)}
            if check == "fingerprint"
            else {"ca_file": str(cert_file)}
        )
        token = await enrollment_token(api, "on-prem")
        linked = await start_linked(api.url, "onprem-1", "on-prem", token, **option)
        version = await linked.agent.wait_for_version(None, timeout=5)
        assert version == (await api.ok("GET", "/healthz"))["version"]
    finally:
        await http.close()
        await api.running.stop()


@pytest.mark.parametrize("check", ["wrong fingerprint", "system CAs"])
async def test_tls_link_rejects_unknown_certificate(
    tmp_path: Path, start_linked: StartLinked, check: str
) -> None:
    api, http, _ = await _tls_plane(tmp_path)
    try:
        token = await enrollment_token(api, "on-prem")
        option = {"fingerprint": "ab" * 32} if check == "wrong fingerprint" else {}
        with pytest.raises(ConfigError) as caught:
            await start_linked(api.url, "onprem-1", "on-prem", token, **option)
        assert "TLS check" in str(caught.value)
        # The token was never sent, so it still enrolls an instance.
        tokens = await api.ok("GET", "/v1/enrollment-tokens")
        assert [item["state"] for item in tokens["items"]] == ["active"]
    finally:
        await http.close()
        await api.running.stop()


def test_backoff_delay_bounds() -> None:
    delays = [backoff_delay(attempt, 0.5, 4.0) for attempt in range(12) for _ in range(50)]
    assert min(delays) >= 0
    assert max(delays) <= 4.0
    first = [backoff_delay(0, 0.5, 4.0) for _ in range(200)]
    assert max(first) <= 0.5
    assert len({round(delay, 6) for delay in first}) > 100  # jittered, not fixed
