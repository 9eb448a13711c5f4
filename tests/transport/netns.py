"""Run a test body in a child process inside a network namespace that has only loopback.

Tests of the image fetcher point it at private and metadata addresses. Run in the
namespace (``unshare -n``, as root), they cannot send a packet off the machine even if
the address checks were broken. ``lo`` also carries 10.0.0.1 and 169.254.169.254 there,
so a test can serve on those addresses and prove that nothing reached them.

``isolated`` turns ``async def body() -> None`` into a pytest test that starts
``unshare -n -- python -m tests.transport.netns MODULE NAME``. The child checks that
it is isolated before it runs anything, and exits without running the body otherwise.
Where the namespace is unavailable the test is skipped, except under CI=true, where it
fails.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

__all__ = ["EXTRA_LOOPBACK_ADDRESSES", "isolated"]

# Addresses that the child adds to lo, so tests can run servers on them.
EXTRA_LOOPBACK_ADDRESSES = ("10.0.0.1", "169.254.169.254")

_PARENT_NAMESPACE_ENV = "SMARTFLOW_TEST_PARENT_NETNS"
_PASSED_MARK = "isolated test body passed:"
_CHILD_TIMEOUT_S = 90
_REPOSITORY = Path(__file__).resolve().parents[2]

Body = Callable[[], Awaitable[None]]


@functools.cache
def _namespace_unavailable() -> str | None:
    """Return why ``unshare -n`` cannot be used here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces exist on Linux only"
    if os.geteuid() != 0:
        return f"unshare -n needs root, and the tests run as uid {os.geteuid()}"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"the {tool} command is not installed"
    try:
        probe = subprocess.run(
            ["unshare", "-n", "true"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`unshare -n true` could not run: {exc}"
    if probe.returncode != 0:
        return f"`unshare -n true` failed: {probe.stderr.strip() or probe.returncode}"
    return None


def _run_in_child(module: str, name: str) -> None:
    reason = _namespace_unavailable()
    if reason is not None:
        message = f"needs a loopback-only network namespace, but {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true, where the namespace must be available")
        pytest.skip(message)
    env = {**os.environ, _PARENT_NAMESPACE_ENV: os.readlink("/proc/self/ns/net")}
    command = ["unshare", "-n", "--", sys.executable, "-m", __name__, module, name]
    result = subprocess.run(
        command,
        cwd=_REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=_CHILD_TIMEOUT_S,
        check=False,
    )
    output = f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    if result.returncode != 0:
        pytest.fail(f"{module}:{name} failed in the namespace (exit {result.returncode})\n{output}")
    if f"{_PASSED_MARK} {module}:{name}" not in result.stdout:
        pytest.fail(f"{module}:{name} exited 0 without finishing its body\n{output}")


def isolated(body: Body) -> Callable[[], None]:
    """Make ``body`` a pytest test that runs in a loopback-only network namespace."""

    def test() -> None:
        _run_in_child(body.__module__, body.__name__)

    test.__name__ = body.__name__
    test.__qualname__ = body.__qualname__
    test.__module__ = body.__module__
    test.__doc__ = body.__doc__
    test.isolated_body = body  # type: ignore[attr-defined]
    return test


# --- the child ---------------------------------------------------------------------------


def _isolation_problem() -> str | None:
    parent = os.environ.get(_PARENT_NAMESPACE_ENV)
    if not parent:
        return f"{_PARENT_NAMESPACE_ENV} is not set, so the namespace cannot be compared"
    if os.readlink("/proc/self/ns/net") == parent:
        return "the process is still in its parent's network namespace"
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        return f"the namespace has interfaces other than lo: {interfaces}"
    return None


def _set_up_loopback() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in EXTRA_LOOPBACK_ADDRESSES:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)


def _main(module_name: str, name: str) -> int:
    problem = _isolation_problem()
    if problem is not None:
        print(f"not running {module_name}:{name}: {problem}", file=sys.stderr)  # noqa: T201
        return 3
    _set_up_loopback()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    test = getattr(importlib.import_module(module_name), name)
    asyncio.run(test.isolated_body())
    print(f"{_PASSED_MARK} {module_name}:{name}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:3]))
