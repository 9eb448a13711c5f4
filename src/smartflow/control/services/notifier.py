"""In-process notification of new snapshot versions to the sync streams."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["VersionNotifier"]


class VersionNotifier:
    """The newest snapshot version made by this process, with a way to wait for a newer one.

    NOTE: another control-plane process sharing the database is not notified; its streams
    find new versions by polling (``sync_poll_interval_s``). PostgreSQL LISTEN/NOTIFY
    would remove that delay and is not used yet.
    """

    def __init__(self) -> None:
        self._version = 0
        self._changed = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    def publish(self, version: int) -> None:
        if version <= self._version:
            return
        self._version = version
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_newer(self, version: int, timeout: float) -> int:
        """Wait until a version newer than ``version`` is published or ``timeout`` seconds
        pass, and return the newest version known."""
        if self._version <= version:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        return self._version
