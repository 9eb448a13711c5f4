"""Run a simulator on its own event loop in a background thread.

Synchronous clients (boto3, the sync SDK clients) block the calling thread, so a
simulator they talk to must not share that thread's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from smartflow.sim.base import Simulator

__all__ = ["running_in_thread"]


@contextmanager
def running_in_thread(simulator: Simulator, port: int = 0) -> Iterator[str]:
    """Serve ``simulator`` on 127.0.0.1 from a daemon thread and yield its base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    base_url: list[str] = []
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            base_url.append(loop.run_until_complete(simulator.start(port=port)))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(simulator.stop())
        loop.close()

    thread = threading.Thread(target=serve, name=f"sim-{simulator.name}", daemon=True)
    thread.start()
    ready.wait(timeout=30)
    if failure:
        raise failure[0]
    try:
        yield base_url[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
