"""A durable local queue of usage events: an append-only log of segment files.

Request handlers call ``offer``, which only appends to a bounded in-memory buffer and
never waits. A writer task appends the buffer to the current segment file in batches, one
``write`` call per batch, on the event loop: a batch of events is a few tens of kilobytes
written to the page cache, which costs less than handing it to a thread. After the first
event of a batch the writer waits ``batch_wait_s`` (10 ms by default) for more. The shipper
reads the oldest events with ``read_run`` (from the last batches written, kept in memory)
or ``read_batch`` (from the files), and removes them with ``ack_run`` or ``ack`` once the
control plane has stored them. Delivery is at least once: an event read but not
acknowledged is read again, also after a crash or restart. The control plane stores each
event id once.

Files under the queue directory:

- ``segment-<first seq>.log``: one event per line, ``<CRC-32 in 8 hex digits> <JSON>``.
  The writer starts a new segment past ``segment_bytes``; a segment is deleted once every
  event in it is acknowledged, dropped or dead-lettered.
- ``cursor.json``: the oldest event still queued, and the events after it removed out of
  order (dead-lettered). Losing it only means events are sent again.
- ``dead.log`` and ``dead.log.1``: events the control plane rejected for good, one JSON
  object per line with the event id, the reason and the event; at most 10,000 in all.

Durability: a batch written survives a process kill, SIGKILL included, because it is in
the kernel's page cache. The files are synced to disk every ``fsync_interval_s`` seconds
(1 s by default), so a power loss loses at most that much; with 0 each batch is synced
before ``flush`` returns. Events still in the memory buffer are lost when the process
dies: an event offered when its request ends is written within ``batch_wait_s``, unless a
failed write makes the writer retry. ``flush`` and ``close`` write the buffer out. On
open, a line cut short by a crash is cut off, and a line whose checksum fails elsewhere
is moved to the dead letters.

Bounds: ``max_events`` and ``max_bytes`` cap the queued events, counting the JSON bytes of
each event; the files take up to one segment more. When a bound is reached,
``drop_oldest`` removes the oldest events and ``reject_new`` rejects new ones; each dropped
or rejected event is counted.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from smartflow.core.errors import ConfigError
from smartflow.usage.events import UsageEvent
from smartflow.usage.feedback import FeedbackEvent
from smartflow.usage.recent import EventRun, RecentEvents
from smartflow.usage.segments import (
    LINE_PREFIX,
    Segment,
    dead_line,
    encode_line,
    line_is_valid,
    lock_exclusively,
    read_sqlite_queue,
    replace_file,
    sync_and_close,
    sync_directory,
)

__all__ = [
    "OnFull",
    "QueueItem",
    "QueueSettings",
    "QueueStats",
    "QueuedEvent",
    "UsageQueue",
    "open_state_queue",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

OnFull = Literal["drop_oldest", "reject_new"]

QueueItem = UsageEvent | FeedbackEvent
"""An item of the queue: a usage event or a feedback score, shipped alike."""

_RETRY_WRITE_S = 1.0
_MAX_DEAD_EVENTS = 10_000
_RECENT_BYTES = 8 * 1024 * 1024
"""JSON bytes of the newest written events kept in memory for ``read_run``."""
_SEGMENT_GLOB = "segment-*.log"
_CURSOR = "cursor.json"
_DEAD = "dead.log"


@dataclass(frozen=True, slots=True)
class QueueSettings:
    max_events: int = 1_000_000
    max_bytes: int = 512 * 1024 * 1024
    on_full: OnFull = "drop_oldest"
    buffer_events: int = 10_000
    """Events held in memory before the writer stores them; ``offer`` rejects more."""
    batch_events: int = 500
    """Maximum events per write."""
    batch_wait_s: float = 0.01
    """Seconds the writer waits for more events before it writes a batch smaller than
    ``batch_events``. Few large writes cost less CPU per event than one per request, and
    an event may stay this much longer in memory before it is written."""
    fsync_interval_s: float = 1.0
    """Seconds between syncs of the queue files to disk: the most a power loss can lose.
    With 0 every batch is synced before ``flush`` returns."""

    def __post_init__(self) -> None:
        for name in ("max_events", "max_bytes", "buffer_events", "batch_events"):
            if getattr(self, name) < 1:
                raise ConfigError(f"usage queue {name} must be at least 1.")
        if not 0 <= self.batch_wait_s <= 1:
            raise ConfigError(
                f"usage queue batch_wait_s must be from 0 to 1 second, not {self.batch_wait_s!r}."
            )
        if not 0 <= self.fsync_interval_s <= 60:
            raise ConfigError(
                "usage queue fsync_interval_s must be from 0 to 60 seconds, not "
                f"{self.fsync_interval_s!r}."
            )
        if self.on_full not in ("drop_oldest", "reject_new"):
            raise ConfigError(
                f"usage queue on_full must be drop_oldest or reject_new, not {self.on_full!r}."
            )

    @property
    def segment_bytes(self) -> int:
        """File size past which the writer starts a new segment."""
        return min(max(self.max_bytes // 8, 64 * 1024), 16 * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """An event in the queue: ``seq`` is its position, which ``ack`` takes."""

    seq: int
    body: bytes

    @property
    def event_id(self) -> str:
        """The event's id, read from its JSON (for logs; not on the shipping path)."""
        try:
            value = orjson.loads(self.body).get("event_id")
        except (orjson.JSONDecodeError, AttributeError):
            return "?"
        return value if isinstance(value, str) else "?"


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int
    """Events queued, not yet acknowledged."""
    bytes: int
    """JSON bytes of the events queued."""
    buffered: int
    """Events offered and not yet written."""
    written: int
    dropped_oldest: int
    rejected_full: int
    """Events rejected because the disk bound was reached under ``reject_new``."""
    buffer_overflow: int
    """Events rejected because the memory buffer was full (the writer fell behind)."""
    dead_lettered: int
    write_errors: int
    settings: QueueSettings

    @property
    def disk_fill(self) -> float:
        """Fraction of the tighter disk bound in use, from 0 to 1."""
        return min(
            max(self.depth / self.settings.max_events, self.bytes / self.settings.max_bytes),
            1.0,
        )

    @property
    def buffer_fill(self) -> float:
        return min(self.buffered / self.settings.buffer_events, 1.0)

    @property
    def backpressure(self) -> bool:
        """True when new events are being, or are about to be, dropped or rejected."""
        return self.buffer_fill >= 0.8 or self.disk_fill >= 0.9


class UsageQueue:
    """See the module docstring. Create one with ``await UsageQueue.open(directory)``."""

    def __init__(self, directory: Path, settings: QueueSettings) -> None:
        self.directory = directory
        self.settings = settings
        # Syncs to disk run on this thread, so the event loop does not wait for them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-queue")
        self._lock_file: int | None = None
        self._segments: list[Segment] = []
        self._firsts: list[int] = []
        """``first_seq`` of each segment, for bisection."""
        self._fd: int | None = None
        """The current (last) segment, open for appending."""
        self._head = 0
        """The oldest seq that may still be queued."""
        self._removed: set[int] = set()
        """Seqs after ``_head`` removed out of order."""
        self._buffer: list[QueueItem] = []
        self._recent = RecentEvents(_RECENT_BYTES)
        self._wakeup = asyncio.Event()
        self._has_events = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._unsynced = False
        self._closing = False
        self._closed = False
        """Whether ``close`` released the files, which another queue may open next."""
        self._depth = 0
        self._bytes = 0
        self._written = 0
        self._dropped_oldest = 0
        self._rejected_full = 0
        self._buffer_overflow = 0
        self._dead_lettered = 0
        self._write_errors = 0

    @classmethod
    async def open(cls, directory: str | Path, settings: QueueSettings | None = None) -> UsageQueue:
        """Open or create the queue in ``directory`` and start its writer task.

        Raises:
            ConfigError: the directory cannot be created or read, or another process has
                the queue open.
        """
        queue = cls(Path(directory), settings or QueueSettings())
        try:
            await queue._run(queue._load)
        except BaseException:
            queue._release()
            queue._executor.shutdown(wait=False)
            raise
        if queue._depth:
            queue._has_events.set()
        queue._writer = asyncio.create_task(queue._write_loop(), name="usage-queue-writer")
        if queue.settings.fsync_interval_s:
            queue._syncer = asyncio.create_task(queue._sync_loop(), name="usage-queue-sync")
        logger.info(
            "usage queue opened at %s: %d events, %d bytes pending",
            directory,
            queue._depth,
            queue._bytes,
        )
        return queue

    # --- the hot path -------------------------------------------------------------------

    def offer(self, event: QueueItem) -> bool:
        """Queue ``event`` for writing without waiting; False when it was rejected.

        An event is rejected, and counted, when the memory buffer is full or when the
        disk bound is reached under ``reject_new``. Never raises.
        """
        if self._closing or len(self._buffer) >= self.settings.buffer_events:
            self._buffer_overflow += 1
            return False
        if self.settings.on_full == "reject_new" and self._disk_full():
            self._rejected_full += 1
            return False
        self._buffer.append(event)
        if self._idle.is_set():
            self._idle.clear()
            self._wakeup.set()
        return True

    def stats(self) -> QueueStats:
        """Return the counters; reads memory only, so it is safe on a scrape path."""
        return QueueStats(
            depth=self._depth,
            bytes=self._bytes,
            buffered=len(self._buffer),
            written=self._written,
            dropped_oldest=self._dropped_oldest,
            rejected_full=self._rejected_full,
            buffer_overflow=self._buffer_overflow,
            dead_lettered=self._dead_lettered,
            write_errors=self._write_errors,
            settings=self.settings,
        )

    # --- the shipper's side -------------------------------------------------------------

    async def flush(self) -> None:
        """Return once every event offered so far is written (or rejected), and synced to
        disk when ``fsync_interval_s`` is 0."""
        await self._idle.wait()

    async def read_batch(self, limit: int) -> list[QueuedEvent]:
        """Return up to ``limit`` of the oldest queued events, without removing them."""
        batch: list[QueuedEvent] = []
        if self._closed:
            return batch
        seq = self._head
        index = max(self._segment_index(seq), 0)
        while len(batch) < limit and 0 <= index < len(self._segments):
            segment = self._segments[index]
            seq = max(seq, segment.first_seq)
            stop = min(segment.next_seq, seq + limit - len(batch))
            if self._removed:
                seqs = [s for s in range(seq, segment.next_seq) if s not in self._removed]
                seqs = seqs[: limit - len(batch)]
            else:
                seqs = list(range(seq, stop))
            if seqs:
                batch.extend(self._read_lines(segment, seqs))
            index += 1
        if not batch:
            self._has_events.clear()
        return batch

    def read_run(self, limit: int) -> EventRun | None:
        """Return up to ``limit`` of the oldest queued events from memory, without removing
        them, or ``None`` when they are not all there: then ``read_batch`` reads the files.

        Events are in memory from their write until about 8 MiB of newer ones follow, and
        only while none after the oldest was removed out of order.
        """
        if self._removed or self._closed:
            return None
        return self._recent.take(self._head, limit)

    async def ack_run(self, first_seq: int, count: int) -> int:
        """Remove the ``count`` events from ``first_seq`` on, as ``ack`` does."""
        if self._ignored_when_closed("acknowledgement", count):
            return 0
        return self._removed_now(self._remove_run(max(first_seq, self._head), first_seq + count))

    async def ack(self, seqs: Iterable[int]) -> int:
        """Remove the events at ``seqs``; returns how many were still queued."""
        seqs = list(seqs)
        if self._ignored_when_closed("acknowledgement", len(seqs)):
            return 0
        return self._removed_now(self._remove(seqs))

    async def dead_letter(self, seqs: Iterable[int], reason: str) -> int:
        """Move events the control plane rejected for good to the dead letters."""
        seqs = list(seqs)
        if self._ignored_when_closed("dead letter", len(seqs)):
            return 0
        queued = sorted({seq for seq in seqs if self._is_queued(seq)})
        if not queued:
            return 0
        lines = []
        now_ms = int(time.time() * 1000)
        for event in self._read_many(queued):
            lines.append(dead_line(event.event_id, reason, now_ms, event.body))
        self._append_dead(lines)
        moved = self._remove(queued)
        self._advance_head()
        self._save_cursor()
        self._dead_lettered += moved
        return moved

    async def wait_for_events(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for queued events; returns whether there are."""
        if self._depth:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._has_events.wait()
        return self._depth > 0

    async def close(self) -> None:
        """Write out the buffer, sync the files, stop the tasks and release the queue."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
        try:
            self._save_cursor()
            await self._run(self._sync_files)
        except OSError as exc:
            logger.error("usage queue: syncing %s at close failed: %s", self.directory, exc)
        finally:
            self._release()
            self._executor.shutdown(wait=True)
        logger.info("usage queue at %s closed: %d events pending", self.directory, self._depth)

    async def import_sqlite(self, path: Path) -> int:
        """Queue the pending events of a SQLite queue file of earlier releases, then rename
        the file to ``<name>.imported``; returns how many events were queued."""
        bodies = await self._run(read_sqlite_queue, path)
        step = self.settings.batch_events
        for start in range(0, len(bodies), step):
            self._append_lines([encode_line(body) for body in bodies[start : start + step]])
            self._drop_oldest()
        await self._run(self._sync_files)
        path.rename(path.with_name(path.name + ".imported"))
        if bodies:
            self._has_events.set()
        logger.info("usage queue: imported %d events from %s", len(bodies), path)
        return len(bodies)

    # --- the writer ---------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            wait = self.settings.batch_wait_s
            if wait and not self._closing and len(self._buffer) < self.settings.batch_events:
                await asyncio.sleep(wait)
            while self._buffer:
                count = self.settings.batch_events
                batch, self._buffer = self._buffer[:count], self._buffer[count:]
                if self._write(batch):
                    if not self.settings.fsync_interval_s:
                        await self._run(self._sync_files)
                    continue
                self._buffer[:0] = batch
                if self._closing:
                    logger.error("usage queue: %d events lost at close", len(self._buffer))
                    self._buffer.clear()
                    break
                await asyncio.sleep(_RETRY_WRITE_S)
            self._idle.set()
            if self._closing:
                return

    def _write(self, batch: list[QueueItem]) -> bool:
        """Append one batch; False if the write failed (the file is left as it was)."""
        reject_new = self.settings.on_full == "reject_new"
        max_events, max_bytes = self.settings.max_events, self.settings.max_bytes
        depth, size = self._depth, self._bytes
        bodies = []
        lines = []
        rejected = 0
        for event in batch:
            body = event.to_json()
            if reject_new and (depth + 1 > max_events or size + len(body) > max_bytes):
                rejected += 1
                continue
            bodies.append(body)
            lines.append(encode_line(body))
            depth += 1
            size += len(body)
        first_seq = self._segments[-1].next_seq
        try:
            self._append_lines(lines)
        except OSError as exc:
            self._write_errors += 1
            logger.error(
                "usage queue: writing %d events to %s failed (%s); retrying in %.0f s",
                len(batch),
                self.directory,
                exc,
                _RETRY_WRITE_S,
            )
            return False
        self._recent.add(first_seq, bodies)
        self._written += len(lines)
        self._rejected_full += rejected
        dropped = self._drop_oldest() if self.settings.on_full == "drop_oldest" else 0
        if dropped or rejected:
            logger.warning(
                "usage queue is full (%d events, %d bytes): %d oldest dropped, %d new rejected",
                self._depth,
                self._bytes,
                dropped,
                rejected,
            )
        if lines:
            self._has_events.set()
        return True

    def _append_lines(self, lines: list[bytes]) -> None:
        """Append ``lines`` to the current segment with one write.

        Raises:
            OSError: the write failed; a part written is cut off again.
        """
        if not lines:
            return
        segment = self._segments[-1]
        if segment.end >= self.settings.segment_bytes:
            segment = self._start_segment(segment.next_seq)
        fd = self._fd
        assert fd is not None
        data = b"".join(lines)
        done = 0
        try:
            while done < len(data):
                done += os.write(fd, data[done:] if done else data)
        except OSError:
            if done:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, segment.end)
            raise
        # The start of each line: the segment's end, then the running sum of the lengths.
        segment.starts.extend(itertools.accumulate(map(len, lines[:-1]), initial=segment.end))
        segment.end += len(data)
        self._bytes += len(data) - len(lines) * (LINE_PREFIX + 1)
        self._depth += len(lines)
        self._unsynced = True

    def _start_segment(self, first_seq: int) -> Segment:
        """Close the current segment and start a new one at ``first_seq``."""
        old = self._fd
        segment = Segment(self.directory / f"segment-{first_seq:020d}.log", first_seq)
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments.append(segment)
        self._firsts.append(first_seq)
        if old is not None:
            # Synced and closed on the worker thread, after any sync already running.
            self._executor.submit(sync_and_close, old, self.directory)
        return segment

    def _drop_oldest(self) -> int:
        """Remove the oldest events until both bounds hold; returns how many."""
        max_events, max_bytes = self.settings.max_events, self.settings.max_bytes
        if self._depth <= max_events and self._bytes <= max_bytes:
            return 0
        dropped = 0
        seq = self._head
        while (self._depth > max_events or self._bytes > max_bytes) and self._depth:
            if self._is_queued(seq):
                dropped += self._remove([seq])
            seq += 1
        self._advance_head()
        self._save_cursor()
        self._dropped_oldest += dropped
        return dropped

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.fsync_interval_s)
            if self._unsynced:
                try:
                    await self._run(self._sync_files)
                except OSError as exc:
                    logger.error("usage queue: syncing %s to disk failed: %s", self.directory, exc)

    def _sync_files(self) -> None:
        """Sync the current segment and the directory; runs on the worker thread."""
        self._unsynced = False
        if self._fd is not None:
            os.fsync(self._fd)
        sync_directory(self.directory)

    # --- removal ------------------------------------------------------------------------

    def _is_queued(self, seq: int) -> bool:
        if seq < self._head or seq in self._removed:
            return False
        index = self._segment_index(seq)
        return index >= 0 and seq < self._segments[index].next_seq

    def _remove(self, seqs: Iterable[int]) -> int:
        """Remove the queued events among ``seqs``; returns how many there were.

        The shipper acknowledges runs of consecutive events, so each run is counted from
        the line offsets of its segments rather than event by event.
        """
        ordered = sorted(set(seqs))
        removed = 0
        start = 0
        while start < len(ordered):
            stop = start + 1
            while stop < len(ordered) and ordered[stop] == ordered[stop - 1] + 1:
                stop += 1
            removed += self._remove_run(max(ordered[start], self._head), ordered[stop - 1] + 1)
            start = stop
        return removed

    def _remove_run(self, low: int, high: int) -> int:
        """Remove the queued events from ``low`` up to, not including, ``high``."""
        removed = 0
        seq = low
        while seq < high:
            index = self._segment_index(seq)
            if index < 0:
                seq = self._firsts[0] if self._firsts else high
                continue
            segment = self._segments[index]
            stop = min(high, segment.next_seq)
            if seq < stop:
                already_removed = [s for s in self._removed if seq <= s < stop]
                first, _ = segment.span(seq)
                _, last = segment.span(stop - 1)
                size = last - first - (stop - seq) * (LINE_PREFIX + 1)
                for old in already_removed:
                    old_start, old_end = segment.span(old)
                    size -= old_end - old_start - LINE_PREFIX - 1
                count = stop - seq - len(already_removed)
                if seq == self._head:
                    # The shipper acknowledges in order from the head, so the head moves
                    # past these events and _removed gets no entry per event.
                    self._head = stop
                    self._removed.difference_update(already_removed)
                else:
                    self._removed.update(range(seq, stop))
                self._depth -= count
                self._bytes -= size
                removed += count
            # Past this segment: go on at the next one, over any gap between them.
            seq = self._firsts[index + 1] if index + 1 < len(self._firsts) else high
        return removed

    def _removed_now(self, removed: int) -> int:
        """Advance the head and save the cursor after ``removed`` events were removed, if
        any; returns ``removed``."""
        if removed:
            self._advance_head()
            self._save_cursor()
        return removed

    def _advance_head(self) -> None:
        """Move the head past removed events and delete the segments behind it."""
        last = self._segments[-1].next_seq
        while self._head < last:
            if self._head in self._removed:
                self._removed.discard(self._head)
            elif self._is_queued(self._head):
                break
            self._head += 1
        while len(self._segments) > 1 and self._segments[0].next_seq <= self._head:
            segment = self._segments.pop(0)
            self._firsts.pop(0)
            segment.path.unlink(missing_ok=True)

    def _save_cursor(self) -> None:
        """Write the cursor file. A failed write is logged, not raised: the next save
        writes the whole cursor, and a restart before then sends some events again."""
        path = self.directory / _CURSOR
        try:
            data = orjson.dumps({"head": self._head, "removed": sorted(self._removed)})
            replace_file(path, data)
        except (OSError, TypeError) as exc:
            logger.error(
                "usage queue: writing %s failed (%s); will retry on the next ack", path, exc
            )

    # --- reading ------------------------------------------------------------------------

    def _segment_index(self, seq: int) -> int:
        return bisect.bisect_right(self._firsts, seq) - 1

    def _read_lines(self, segment: Segment, seqs: list[int]) -> list[QueuedEvent]:
        """Read the lines of ``seqs`` (ascending, all in ``segment``) with one read."""
        first, _ = segment.span(seqs[0])
        _, last = segment.span(seqs[-1])
        with open(segment.path, "rb") as file:
            file.seek(first)
            data = file.read(last - first)
        events = []
        starts, offset = segment.starts, segment.first_seq
        for seq in seqs:
            index = seq - offset
            start = starts[index] - first + LINE_PREFIX
            end = (starts[index + 1] if index + 1 < len(starts) else segment.end) - first - 1
            events.append(QueuedEvent(seq, data[start:end]))
        return events

    def _read_many(self, seqs: list[int]) -> list[QueuedEvent]:
        events = []
        for seq in seqs:
            events.extend(self._read_lines(self._segments[self._segment_index(seq)], [seq]))
        return events

    def _append_dead(self, lines: list[bytes]) -> None:
        """Append to the dead letters; keeps two files of at most half the bound each."""
        path = self.directory / _DEAD
        with contextlib.suppress(FileNotFoundError):
            with open(path, "rb") as file:
                count = sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 16), b""))
            if count + len(lines) > _MAX_DEAD_EVENTS // 2:
                path.replace(path.with_name(_DEAD + ".1"))
        with open(path, "ab") as file:
            file.write(b"".join(lines))

    # --- opening ------------------------------------------------------------------------

    def _load(self) -> None:
        """Lock the directory and index its segments; runs on the worker thread."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = lock_exclusively(self.directory / "lock", self.directory)
            paths = sorted(self.directory.glob(_SEGMENT_GLOB))
            self._head = self._load_cursor()
            for path in paths:
                self._index_segment(path, is_last=path == paths[-1])
            if not self._segments:
                self._start_segment(self._head)
            else:
                self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
            last_seq = self._segments[-1].next_seq
            if self._head > last_seq:
                # A cursor from other files must not hide the events in these.
                logger.error(
                    "usage queue: %s points past the last event (%d > %d); sending every "
                    "queued event again",
                    self.directory / _CURSOR,
                    self._head,
                    last_seq,
                )
                self._head, self._removed = 0, set()
            self._head = max(self._head, self._segments[0].first_seq)
            self._removed = {seq for seq in self._removed if seq >= self._head}
            self._depth = self._bytes = 0
            for segment in self._segments:
                for seq in range(max(segment.first_seq, self._head), segment.next_seq):
                    if seq not in self._removed:
                        start, end = segment.span(seq)
                        self._depth += 1
                        self._bytes += end - start - LINE_PREFIX - 1
            self._advance_head()
        except OSError as exc:
            raise ConfigError(f"Cannot open the usage queue at {self.directory}: {exc}.") from exc

    def _load_cursor(self) -> int:
        path = self.directory / _CURSOR
        try:
            data = orjson.loads(path.read_bytes())
            head, removed = data["head"], data["removed"]
            if not _is_seq(head) or not isinstance(removed, list):
                raise ValueError("head must be a whole number and removed a list of them")
            if not all(_is_seq(seq) for seq in removed):
                raise ValueError("removed must list whole numbers")
            self._removed = set(removed)
        except FileNotFoundError:
            return 0
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
            logger.error(
                "usage queue: %s is unreadable (%s); sending every queued event again",
                path,
                exc,
            )
            self._removed = set()
            return 0
        return int(head)

    def _index_segment(self, path: Path, *, is_last: bool) -> None:
        digits = path.stem.removeprefix("segment-")
        if not (digits.isascii() and digits.isdigit() and _is_seq(int(digits))):
            logger.error(
                "usage queue: ignoring %s, whose name is not a segment's; move it aside", path
            )
            return
        first_seq = int(digits)
        if self._segments and first_seq < self._segments[-1].next_seq:
            logger.error("usage queue: %s overlaps the segment before it; ignoring it", path.name)
            return
        segment = Segment(path, first_seq)
        data = path.read_bytes()

        corrupt = []
        offset = 0
        while offset < len(data):
            end = data.find(b"\n", offset)
            if end < 0:
                break
            if not line_is_valid(data, offset, end):
                if is_last and data.find(b"\n", end + 1) < 0:
                    break  # the last line, cut short by a crash
                corrupt.append((segment.next_seq, data[offset:end]))
            segment.starts.append(offset)
            offset = end + 1

        if offset < len(data):
            logger.warning(
                "usage queue: cutting %d bytes of an unfinished line off %s",
                len(data) - offset,
                path.name,
            )
            with open(path, "r+b") as file:
                file.truncate(offset)
        segment.end = offset
        self._segments.append(segment)
        self._firsts.append(first_seq)

        if corrupt:
            now_ms = int(time.time() * 1000)
            self._append_dead(
                [dead_line(None, "corrupt line in the queue", now_ms, raw) for _, raw in corrupt]
            )
            self._removed.update(seq for seq, _ in corrupt)
            self._dead_lettered += len(corrupt)
            logger.error(
                "usage queue: %d lines of %s failed their checksum; moved to %s",
                len(corrupt),
                path.name,
                _DEAD,
            )

    # --- helpers ------------------------------------------------------------------------

    def _disk_full(self) -> bool:
        return self._depth >= self.settings.max_events or self._bytes >= self.settings.max_bytes

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    def _ignored_when_closed(self, action: str, count: int) -> bool:
        """Log and return True when the queue is closed: its files may belong to another
        queue now, so a late ``action`` must not touch them. The events are sent again."""
        if not self._closed:
            return False
        logger.warning(
            "usage queue at %s is closed: ignored the %s of %d events, which will be sent again",
            self.directory,
            action,
            count,
        )
        return True

    def _release(self) -> None:
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None


async def open_state_queue(state_dir: str | Path, settings: QueueSettings) -> UsageQueue:
    """Open the queue of an instance under ``state_dir/usage``, taking over the events of
    the SQLite queue file (``usage/events.db``) that earlier releases kept there."""
    usage_dir = Path(state_dir) / "usage"
    queue = await UsageQueue.open(usage_dir / "queue", settings)
    legacy = usage_dir / "events.db"
    if legacy.exists():
        try:
            await queue.import_sqlite(legacy)
        except BaseException:
            await queue.close()
            raise
    return queue


_MAX_SEQ = 2**63 - 1


def _is_seq(value: object) -> bool:
    """Return whether ``value`` can be a queue position: an int from 0 to 2**63 - 1."""
    return type(value) is int and 0 <= value <= _MAX_SEQ
