"""Schemathesis against /openapi.json: generated requests for every operation, no server error,
and every response matches its declared status, content type and schema."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from smartflow.control import RunningControlPlane, start_control_plane
from smartflow.control.api.openapi import build_openapi
from smartflow.control.api.routes import OPERATIONS
from tests.control.conftest import ADMIN_TOKEN, make_settings

schema = schemathesis.openapi.from_dict(build_openapi(OPERATIONS))

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class ServerThread:
    """A control plane served from its own event loop, so blocking clients can call it."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._running: RunningControlPlane | None = None

    def start(self) -> str:
        self._thread.start()
        settings = make_settings(
            self._state_dir, f"sqlite+aiosqlite:///{self._state_dir / 'control.db'}"
        )
        future = asyncio.run_coroutine_threadsafe(start_control_plane(settings), self._loop)
        self._running = future.result(timeout=30)
        return self._running.url

    def stop(self) -> None:
        if self._running is not None:
            asyncio.run_coroutine_threadsafe(self._running.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ServerThread(tmp_path_factory.mktemp("control-fuzz"))
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_openapi(case: schemathesis.Case, server_url: str) -> None:
    if case.path == "/v1/admin-tokens/{name}" and case.method == "DELETE":
        # Keep the token this test authenticates with; the last admin token cannot be
        # deleted anyway, and other generated names are not found.
        case.path_parameters = {"name": "generated-" + str(case.path_parameters["name"])[:40]}
    case.call_and_validate(
        base_url=server_url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        checks=CHECKS,
        timeout=30,
    )
