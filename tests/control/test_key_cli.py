"""`smartflow keys create|list|delete` against a running control plane."""

from __future__ import annotations

import asyncio
import os
import sys

from smartflow.auth.keys import hash_key
from tests.control.conftest import ADMIN_TOKEN, Api


async def _smartflow(*args: str, token: str = ADMIN_TOKEN) -> tuple[int, str, str]:
    env = {**os.environ, "SMARTFLOW_ADMIN_TOKEN": token}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smartflow.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_keys_create_list_delete(api: Api) -> None:
    where = ("--control-plane", api.url)
    code, out, err = await _smartflow(
        "keys", "create", "app-a", "--team", "default", "--user", "alice", "--label", "pii",
        *where,
    )  # fmt: skip
    assert code == 0, err
    key = out.strip().splitlines()[-1]
    assert key.startswith("sk-sf-")
    stored = await api.ok("GET", "/v1/keys/app-a")
    assert stored["user"] == "alice"
    assert stored["labels"] == ["pii"]
    assert stored["fingerprint"] == hash_key(key)[:12]
    assert stored["key"] is None

    code, out, err = await _smartflow("keys", "list", *where)
    assert code == 0, err
    assert "app-a" in out
    assert key not in out

    code, out, err = await _smartflow("keys", "delete", "app-a", *where)
    assert code == 0, err
    status, _ = await api.call("GET", "/v1/keys/app-a")
    assert status == 404


async def test_keys_create_needs_control_plane_and_token(api: Api) -> None:
    env_url = os.environ.pop("SMARTFLOW_CONTROL_PLANE_URL", None)
    try:
        code, _, err = await _smartflow("keys", "create", "app-b")
    finally:
        if env_url is not None:
            os.environ["SMARTFLOW_CONTROL_PLANE_URL"] = env_url
    assert code == 2
    assert "--control-plane" in err
    code, _, err = await _smartflow(
        "keys", "create", "app-b", "--control-plane", api.url, token="sf-admin-wrong"
    )
    assert code == 1
    assert "admin token" in err
