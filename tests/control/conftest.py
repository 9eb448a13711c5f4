"""Fixtures for the control-plane tests: a database per test (SQLite or the real PostgreSQL),
a running control plane on 127.0.0.1, and an HTTP client with an admin token."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from smartflow.control import ControlPlaneSettings, RunningControlPlane, start_control_plane
from smartflow.control.services.plane import ControlPlane

POSTGRES_URL = os.environ.get(
    "SMARTFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
"""Maintenance database of the test server; each test gets its own database beside it."""

ADMIN_TOKEN = "sf-admin-test-" + "a" * 32
RUN_ID = secrets.token_hex(4)
_counter = itertools.count()
_postgres_state: dict[str, str | None] = {}


async def _postgres_problem() -> str | None:
    try:
        connection = await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc!r}"
    await connection.close()
    return None


async def require_postgres() -> None:
    """Skip the test when PostgreSQL is unreachable; fail it instead when CI=true."""
    if "problem" not in _postgres_state:
        _postgres_state["problem"] = await _postgres_problem()
    problem = _postgres_state["problem"]
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem}; CI=true requires the PostgreSQL variants to run")
    pytest.skip(problem)


async def _admin_execute(sql: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL, timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def new_database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """Create a new, empty database on ``backend`` and drop it when the block ends."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'control.db'}"
        return
    await require_postgres()
    name = f"sf_control_{RUN_ID}_{next(_counter)}"
    await _admin_execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        await _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    async with new_database(backend, tmp_path) as url:
        yield url


def make_settings(state_dir: Path, database_url: str, **overrides: Any) -> ControlPlaneSettings:
    values: dict[str, Any] = {
        "port": 0,
        "state_dir": state_dir,
        "database_url": database_url,
        "bootstrap_admin_token": ADMIN_TOKEN,
        "sync_poll_interval_s": 0.5,
    }
    values.update(overrides)
    return ControlPlaneSettings(**values)


@dataclass
class Api:
    """An HTTP client for one running control plane."""

    url: str
    http: aiohttp.ClientSession
    running: RunningControlPlane

    @property
    def plane(self) -> ControlPlane:
        return self.running.plane

    async def call(
        self, method: str, path: str, token: str | None = ADMIN_TOKEN, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as reply:
            text = await reply.text()
            body = await reply.json() if text and reply.content_type == "application/json" else text
            return reply.status, body

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        status, body = await self.call(method, path, **kwargs)
        assert status in (200, 201, 204), f"{method} {path} returned {status}: {body}"
        return body

    async def enroll(self, name: str, site: str) -> dict[str, Any]:
        token = await self.ok("POST", "/v1/enrollment-tokens", json={"site": site})
        body = {"token": token["token"], "name": name, "site": site}
        status, enrolled = await self.call("POST", "/v1/enroll", token=None, json=body)
        assert status == 201, enrolled
        return dict(enrolled)


@pytest.fixture(params=["sqlite"])
def api_backend(request: pytest.FixtureRequest) -> str:
    """The database of API and sync tests; override to run them on PostgreSQL too."""
    return str(request.param)


@pytest.fixture
async def api(tmp_path: Path, api_backend: str) -> AsyncIterator[Api]:
    async with new_database(api_backend, tmp_path) as url:
        running = await start_control_plane(make_settings(tmp_path / "state", url))
        try:
            async with aiohttp.ClientSession() as http:
                yield Api(running.url, http, running)
        finally:
            await running.stop()


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    """Poll the async ``condition`` until it returns true, or fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)
