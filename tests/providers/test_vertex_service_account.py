"""Vertex AI with a service-account key file: google-auth's token exchange, end to end.

A fake service-account file names a token server on 127.0.0.1 as its ``token_uri``. The
server checks the signed JWT that google-auth posts and issues access tokens, and a
GeminiSimulator checks that the gateway sends them. Nothing contacts Google: host name
lookups other than loopback fail, and ``google.auth.default`` raises.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import google.auth
import openai
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.core.errors import UpstreamUnavailable
from smartflow.gateway.app import RunningGateway, build_app, start_gateway
from smartflow.providers import gemini as gemini_module
from smartflow.providers.gemini import VERTEX_SCOPE, VertexGeminiProvider
from smartflow.sim.gemini import GeminiSimulator
from tests.conftest import VIRTUAL_KEY
from tests.gateway.clients import anthropic_client, openai_chat, openai_client

CLIENT_EMAIL = "gateway@test-project.iam.gserviceaccount.com"
KEY_ID = "0123456789abcdef0123456789abcdef01234567"
# google-auth 2.x puts Google's token endpoint in ``aud`` whatever the file's token_uri
# is; the value is only compared here, never contacted.
ASSERTION_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
PROJECT = "test-project"
LOCATION = "us-central1"
MODEL = "vertex-sa"
UPSTREAM_MODEL = "gemini-2.0-flash"
PROMPT = "Good morning, gateway"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _bearer_digest(token: str) -> str:
    """Return the form in which the simulator records an Authorization header."""
    return "sha256:" + hashlib.sha256(f"Bearer {token}".encode()).hexdigest()


# --- the token server ------------------------------------------------------------------


class TokenServer:
    """An OAuth 2.0 token endpoint for the JWT bearer grant (RFC 7523).

    It runs on its own event loop in a thread, because the gateway may call google-auth
    synchronously on its own loop, which would deadlock a server on that loop.
    """

    def __init__(self, public_key: rsa.RSAPublicKey) -> None:
        self.public_key = public_key
        self.expires_in = 3600
        self.delay_s = 0.0
        self.error: tuple[int, dict[str, str]] | None = None
        self.exchanges: list[dict[str, Any]] = []
        """Claims of every assertion that passed the checks, in order."""
        self.rejections: list[str] = []
        self.issued: list[str] = []
        self.url = ""
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> None:
        self._thread.start()
        serving = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        self.url = serving.result(timeout=10)

    def stop(self) -> None:
        if self._runner is not None:
            cleanup = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            cleanup.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def exchange_count(self) -> int:
        with self._lock:
            return len(self.exchanges)

    async def _serve(self) -> str:
        app = web.Application()
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/token"

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        problem = self._check(str(form.get("grant_type")), str(form.get("assertion", "")))
        if problem is not None:
            with self._lock:
                self.rejections.append(problem)
            body = {"error": "invalid_grant", "error_description": problem}
            return web.json_response(body, status=400)
        if self.error is not None:
            status, body = self.error
            return web.json_response(body, status=status)
        with self._lock:
            token = f"sa-token-{len(self.issued) + 1}"
            self.issued.append(token)
        body = {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        return web.json_response(body)

    def _check(self, grant_type: str, assertion: str) -> str | None:
        """Verify the assertion; return why it is rejected, or None and record its claims."""
        if grant_type != JWT_GRANT:
            return f"unsupported grant_type {grant_type!r}"
        parts = assertion.split(".")
        if len(parts) != 3:
            return "the assertion is not a JWS compact serialization"
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
        signed = f"{parts[0]}.{parts[1]}".encode()
        try:
            self.public_key.verify(
                _b64url_decode(parts[2]), signed, padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return "Invalid JWT Signature."
        expected = {
            "alg": ("RS256", header.get("alg")),
            "kid": (KEY_ID, header.get("kid")),
            "iss": (CLIENT_EMAIL, claims.get("iss")),
            "scope": (VERTEX_SCOPE, claims.get("scope")),
            "aud": (ASSERTION_AUDIENCE, claims.get("aud")),
        }
        for name, (want, got) in expected.items():
            if want != got:
                return f"invalid {name}: expected {want!r}, got {got!r}"
        now = time.time()
        if not (now - 60 <= claims["iat"] <= now + 5):
            return f"iat {claims['iat']} is not the current time {now:.0f}"
        if claims["exp"] - claims["iat"] != 3600:
            return f"exp - iat is {claims['exp'] - claims['iat']}, expected 3600"
        with self._lock:
            self.exchanges.append(claims)
        return None


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_service_account(path: Path, key: rsa.RSAPrivateKey, token_uri: str) -> Path:
    """Write a service-account key file in the format the Cloud console downloads."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    info = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": KEY_ID,
        "private_key": pem.decode(),
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "http://127.0.0.1:9/unused-auth-uri",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    }
    path.write_text(json.dumps(info), encoding="utf-8")
    return path


@dataclass
class NoGoogle:
    """Host names looked up other than loopback, and calls of ``google.auth.default``."""

    lookups: list[str]
    default_calls: int = 0


@pytest.fixture
def no_google(monkeypatch: pytest.MonkeyPatch) -> Iterator[NoGoogle]:
    guard = NoGoogle(lookups=[])
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in LOOPBACK:
            guard.lookups.append(name)
            raise socket.gaierror(socket.EAI_NONAME, f"lookup of {name} blocked by the test")
        return real_getaddrinfo(host, *args, **kwargs)

    def no_default(*args: Any, **kwargs: Any) -> Any:
        guard.default_calls += 1
        raise google.auth.exceptions.DefaultCredentialsError(
            "application default credentials are disabled in this test"
        )

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    monkeypatch.setattr(google.auth, "default", no_default)
    yield guard
    assert guard.lookups == []
    assert guard.default_calls == 0


@pytest.fixture
def token_server(signing_key: rsa.RSAPrivateKey) -> Iterator[TokenServer]:
    server = TokenServer(signing_key.public_key())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class VertexStack:
    url: str
    sim: GeminiSimulator
    tokens: TokenServer
    gateway: RunningGateway


def gateway_config(credentials_file: Path, sim_url: str) -> Any:
    return parse_config(
        {
            "server": {"access_log": False},
            "providers": {
                "vertex_sa": {
                    "type": "vertex_gemini",
                    "vertex_project": PROJECT,
                    "vertex_location": LOCATION,
                    "credentials_file": str(credentials_file),
                    "base_url": sim_url,
                }
            },
            "models": {MODEL: [{"provider": "vertex_sa", "model": UPSTREAM_MODEL}]},
            "keys": [{"name": "test", "sha256": hash_key(VIRTUAL_KEY)}],
            "retry": {
                "attempts_per_deployment": 2,
                "backoff_initial_s": 0.01,
                "backoff_max_s": 0.05,
                "max_retry_after_s": 0.5,
            },
            "timeouts": {"connect_s": 2, "read_s": 5},
        }
    )


@pytest.fixture
async def vertex(
    tmp_path: Path,
    signing_key: rsa.RSAPrivateKey,
    token_server: TokenServer,
    no_google: NoGoogle,
) -> AsyncIterator[VertexStack]:
    sim = GeminiSimulator(access_tokens=[f"sa-token-{n}" for n in range(1, 10)])
    sim_url = await sim.start()
    key_file = write_service_account(
        tmp_path / "service-account.json",
        signing_key,
        token_server.url,
    )
    app = build_app(gateway_config(key_file, sim_url), environ={})
    gateway = await start_gateway(app, "127.0.0.1", 0)
    try:
        yield VertexStack(gateway.url, sim, token_server, gateway)
    finally:
        await gateway.stop()
        await sim.stop()


async def chat(url: str, *, stream: bool = False) -> str:
    outcome = await openai_chat(url, MODEL, [{"role": "user", "content": PROMPT}], stream=stream)
    return str(outcome.text)


def assert_sent_token(sim: GeminiSimulator, token: str, *, stream: bool = False) -> None:
    received = sim.requests[-1]
    method = ":streamGenerateContent" if stream else ":generateContent"
    assert received.path == (
        f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"
        f"{UPSTREAM_MODEL}{method}"
    )
    assert received.headers["authorization"] == _bearer_digest(token)
    assert "x-goog-api-key" not in received.headers


# --- the exchange and the bearer token -------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["stream=False", "stream=True"])
async def test_chat_uses_exchanged_token(vertex: VertexStack, stream: bool) -> None:
    text = await chat(vertex.url, stream=stream)

    assert text == f"Hello from {UPSTREAM_MODEL}. You said: {PROMPT}"
    assert vertex.tokens.rejections == []
    assert vertex.tokens.issued == ["sa-token-1"]
    assert vertex.tokens.exchange_count() == 1
    assert_sent_token(vertex.sim, "sa-token-1", stream=stream)


async def test_valid_token_is_reused(vertex: VertexStack) -> None:
    for _ in range(3):
        await chat(vertex.url)
        assert_sent_token(vertex.sim, "sa-token-1")
    assert vertex.tokens.exchange_count() == 1


async def test_expired_token_is_exchanged_again(
    vertex: VertexStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the safety margins, a token counts as valid until its real expiry.
    monkeypatch.setattr(gemini_module, "_MIN_VALIDITY_S", 0.0)
    monkeypatch.setattr(gemini_module, "_EARLY_REFRESH_S", 0.0)
    vertex.tokens.expires_in = 1

    await chat(vertex.url)
    await chat(vertex.url)
    assert vertex.tokens.exchange_count() == 1
    assert_sent_token(vertex.sim, "sa-token-1")

    await asyncio.sleep(1.2)
    await chat(vertex.url)
    assert vertex.tokens.exchange_count() == 2
    assert_sent_token(vertex.sim, "sa-token-2")
    assert vertex.tokens.rejections == []


async def test_nearly_expired_token_is_not_used(vertex: VertexStack) -> None:
    # Less than a minute of validity counts as expired, so each request exchanges again.
    vertex.tokens.expires_in = 30
    await chat(vertex.url)
    await chat(vertex.url)
    assert vertex.tokens.exchange_count() == 2
    assert_sent_token(vertex.sim, "sa-token-2")


async def test_early_refresh_in_background(vertex: VertexStack) -> None:
    # Between one and five minutes left: the request uses the current token and a
    # background thread fetches the next one.
    vertex.tokens.expires_in = 200
    await chat(vertex.url)
    vertex.tokens.expires_in = 3600
    await chat(vertex.url)
    assert_sent_token(vertex.sim, "sa-token-1")

    deadline = time.monotonic() + 5
    while vertex.tokens.exchange_count() < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert vertex.tokens.exchange_count() == 2

    await chat(vertex.url)
    assert_sent_token(vertex.sim, "sa-token-2")
    assert vertex.tokens.exchange_count() == 2


# --- token endpoint failures -----------------------------------------------------------


async def test_rejected_assertion_openai_error(
    vertex: VertexStack, signing_key: rsa.RSAPrivateKey
) -> None:
    # The server now expects another key, so the signature check really fails.
    vertex.tokens.public_key = rsa.generate_private_key(65537, 2048).public_key()
    async with openai_client(vertex.url) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}]
            )

    assert caught.value.status_code == 502
    body: Any = caught.value.body
    message = body["message"]
    assert "Cannot obtain a Vertex AI access token for vertex_sa" in message
    assert "invalid_grant: Invalid JWT Signature." in message
    assert "Check the service-account file" in message
    assert vertex.tokens.url in message
    # A rejected assertion is not retried, and the simulator is never called.
    assert vertex.tokens.rejections == ["Invalid JWT Signature."]
    assert len(vertex.sim.requests) == 0


async def test_token_endpoint_error_anthropic_error(vertex: VertexStack) -> None:
    vertex.tokens.error = (
        403,
        {"error": "unauthorized_client", "error_description": "Account disabled"},
    )
    async with anthropic_client(vertex.url) as client:
        with pytest.raises(anthropic.InternalServerError) as caught:
            await client.messages.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": PROMPT}]
            )

    assert caught.value.status_code == 502
    body: Any = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "api_error"
    assert "unauthorized_client: Account disabled" in body["error"]["message"]
    assert vertex.tokens.exchange_count() == 1
    assert len(vertex.sim.requests) == 0


async def test_unreachable_token_endpoint(
    tmp_path: Path, signing_key: rsa.RSAPrivateKey, no_google: NoGoogle
) -> None:
    # A port that was just free: the connection is refused at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key_file = write_service_account(
        tmp_path / "sa.json", signing_key, f"http://127.0.0.1:{port}/token"
    )
    sim = GeminiSimulator(access_tokens=["never-issued"])
    sim_url = await sim.start()
    gateway = await start_gateway(
        build_app(gateway_config(key_file, sim_url), environ={}), "127.0.0.1", 0
    )
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            await chat(gateway.url)
    finally:
        await gateway.stop()
        await sim.stop()

    assert caught.value.status_code == 502
    body: Any = caught.value.body
    assert body["code"] == "upstream_unavailable"
    assert f"token endpoint http://127.0.0.1:{port}/token" in body["message"]
    assert len(sim.requests) == 0


async def test_lookup_guard_catches_other_hosts(
    tmp_path: Path, signing_key: rsa.RSAPrivateKey, no_google: NoGoogle
) -> None:
    # The guard itself: a token_uri on another host fails before any connection.
    key_file = write_service_account(
        tmp_path / "sa.json", signing_key, "http://token-endpoint.invalid/token"
    )
    provider = VertexGeminiProvider(
        "vertex_sa", project=PROJECT, location=LOCATION, credentials_file=key_file
    )
    with pytest.raises(UpstreamUnavailable, match=r"token-endpoint\.invalid"):
        await provider.prepare_auth()
    assert no_google.lookups == ["token-endpoint.invalid"]
    no_google.lookups.clear()


# --- the event loop --------------------------------------------------------------------


async def _max_loop_gap(work: Any) -> float:
    """Run ``work`` while a ticker measures the longest stall of the event loop."""
    ticks = [time.monotonic()]
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            await asyncio.sleep(0.01)
            ticks.append(time.monotonic())

    ticker = asyncio.create_task(tick())
    try:
        await work
    finally:
        # A stall before the ticker's first step counts too.
        ticks.append(time.monotonic())
        done.set()
        await ticker
    return max(later - earlier for earlier, later in itertools.pairwise(ticks))


@pytest.mark.usefixtures("no_google")
async def test_prepare_auth_does_not_block_loop(
    tmp_path: Path, signing_key: rsa.RSAPrivateKey, token_server: TokenServer
) -> None:
    token_server.delay_s = 0.3
    key_file = write_service_account(
        tmp_path / "sa.json",
        signing_key,
        token_server.url,
    )
    provider = VertexGeminiProvider(
        "vertex_sa", project=PROJECT, location=LOCATION, credentials_file=key_file
    )

    gap = await _max_loop_gap(provider.prepare_auth())

    assert gap < 0.2
    assert token_server.exchange_count() == 1
    target = provider.chat_target(UPSTREAM_MODEL, stream=False, client_headers={})
    assert target.headers["Authorization"] == "Bearer sa-token-1"
    assert token_server.exchange_count() == 1


async def test_gateway_exchange_does_not_block_loop(vertex: VertexStack) -> None:
    vertex.tokens.delay_s = 0.3
    gap = await _max_loop_gap(chat(vertex.url))
    assert vertex.tokens.exchange_count() == 1
    assert gap < 0.2
