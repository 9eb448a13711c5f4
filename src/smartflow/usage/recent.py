"""The newest events a queue wrote, kept in memory so the shipper does not read them back.

While the control plane keeps up, the shipper sends events a fraction of a second after
they were written. Reading them back from the segment file costs a read, a slice and an
object per event. ``RecentEvents`` keeps the JSON bodies of the last written batches
instead, up to a byte bound, and returns runs of consecutive events as lists of bodies.
When the shipper falls behind the oldest batch kept, it reads from the files again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["EventRun", "RecentEvents"]


@dataclass(frozen=True, slots=True)
class EventRun:
    """Consecutive queued events: the seq of the first, and the JSON body of each in order."""

    first_seq: int
    bodies: list[bytes]


class RecentEvents:
    """The bodies of the last written batches, at most ``max_bytes`` of them in all.

    The batches must be added in seq order without gaps; a batch that does not follow the
    last one starts the window over.
    """

    __slots__ = ("_batches", "_bytes", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # (first seq, bodies, their total size), oldest first.
        self._batches: deque[tuple[int, list[bytes], int]] = deque()
        self._bytes = 0

    def add(self, first_seq: int, bodies: list[bytes]) -> None:
        """Keep a batch just written: ``bodies`` from ``first_seq`` on."""
        if not bodies:
            return
        size = sum(map(len, bodies))
        batches = self._batches
        if batches:
            last_first, last_bodies, _ = batches[-1]
            if last_first + len(last_bodies) != first_seq:
                self.clear()
        batches.append((first_seq, bodies, size))
        self._bytes += size
        while self._bytes > self.max_bytes and len(batches) > 1:
            self._bytes -= batches.popleft()[2]

    def take(self, head: int, limit: int) -> EventRun | None:
        """Return up to ``limit`` events from ``head`` on, or ``None`` when the event at
        ``head`` is not in memory. Batches wholly before ``head`` are released."""
        batches = self._batches
        while batches and batches[0][0] + len(batches[0][1]) <= head:
            self._bytes -= batches.popleft()[2]
        if not batches or batches[0][0] > head:
            return None
        bodies: list[bytes] = []
        for first, batch, _ in batches:
            start = head + len(bodies) - first
            bodies.extend(batch[start : start + limit - len(bodies)])
            if len(bodies) >= limit:
                break
        return EventRun(head, bodies)

    def clear(self) -> None:
        self._batches.clear()
        self._bytes = 0
