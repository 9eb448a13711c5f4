"""Make the benchmark modules in bench/ importable and serve the mock upstream on loopback."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from mock_upstream import UpstreamState, serve  # noqa: E402 - needs BENCH_DIR on sys.path


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, UpstreamState]]:
    """Run the mock upstream on a free port of 127.0.0.1; yield its base URL and state."""
    state = UpstreamState()
    running = await serve("127.0.0.1", 0, state)
    try:
        yield f"http://127.0.0.1:{running.port}", state
    finally:
        await running.close()
