"""A durable local queue of usage events: SQLite in WAL mode under the state directory.

Request handlers call ``offer``, which only appends to a bounded in-memory buffer and
never waits. A writer task moves the buffer to SQLite in batches, one transaction per
batch, on a single worker thread that owns the connection. After the first event of a
batch it waits ``batch_wait_s`` (10 ms by default) for more, because a transaction of
many events costs far less CPU per event than one per request. The shipper reads the oldest
events with ``read_batch`` and deletes them with ``ack`` once the control plane has
stored them, so delivery is at least once: an event read but not acknowledged is read
again, also after a crash or restart.

Durability: with ``synchronous=FULL`` (the default) a committed batch survives a process
kill and a power loss; with ``NORMAL`` it survives a process kill, SIGKILL included, but
the latest batches may be lost on power loss. Events still in the memory buffer are lost
when the process dies: an event offered when its request ends is committed within
``batch_wait_s`` plus the time of one write, unless a failed write makes the writer retry.
``flush`` and ``close`` write the buffer out.

Bounds: ``max_events`` and ``max_bytes`` cap the events on disk, counting the JSON bytes
of each event. SQLite's page overhead and the WAL (truncated to 64 MiB after each
checkpoint) come on top. When a bound is reached, ``drop_oldest`` deletes the oldest events
and ``reject_new`` rejects new ones; each dropped or rejected event is counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from smartflow.core.errors import ConfigError
from smartflow.usage.events import UsageEvent
from smartflow.usage.feedback import FeedbackEvent

__all__ = ["OnFull", "QueueItem", "QueueSettings", "QueueStats", "QueuedEvent", "UsageQueue"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

OnFull = Literal["drop_oldest", "reject_new"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    dead_ms INTEGER NOT NULL
);
"""
# AUTOINCREMENT keeps a deleted row's seq from being reused, so a late ack of an old seq
# can never delete a newer event.

QueueItem = UsageEvent | FeedbackEvent
"""An item of the queue: a usage event or a feedback score, shipped alike."""

_INSERT = "INSERT INTO events (event_id, body, size, created_ms) VALUES (?, ?, ?, ?)"
_INSERT_OR_IGNORE = _INSERT.replace("INSERT", "INSERT OR IGNORE", 1)

_RETRY_WRITE_S = 1.0
_MAX_DEAD_EVENTS = 10_000


@dataclass(frozen=True, slots=True)
class QueueSettings:
    max_events: int = 1_000_000
    max_bytes: int = 512 * 1024 * 1024
    on_full: OnFull = "drop_oldest"
    buffer_events: int = 10_000
    """Events held in memory before the writer stores them; ``offer`` rejects more."""
    batch_events: int = 500
    """Maximum events per write transaction."""
    batch_wait_s: float = 0.01
    """Seconds the writer waits for more events before it writes a batch smaller than
    ``batch_events``. Batches of many events cost far less CPU per event than one write per
    request, and an event may stay this much longer in memory before it is on disk."""
    synchronous: Literal["FULL", "NORMAL"] = "FULL"

    def __post_init__(self) -> None:
        for name in ("max_events", "max_bytes", "buffer_events", "batch_events"):
            if getattr(self, name) < 1:
                raise ConfigError(f"usage queue {name} must be at least 1.")
        if not 0 <= self.batch_wait_s <= 1:
            raise ConfigError(
                f"usage queue batch_wait_s must be from 0 to 1 second, not {self.batch_wait_s!r}."
            )
        if self.on_full not in ("drop_oldest", "reject_new"):
            raise ConfigError(
                f"usage queue on_full must be drop_oldest or reject_new, not {self.on_full!r}."
            )
        if self.synchronous not in ("FULL", "NORMAL"):
            raise ConfigError(
                f"usage queue synchronous must be FULL or NORMAL, not {self.synchronous!r}."
            )


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """An event on disk: ``seq`` is its queue position, which ``ack`` takes."""

    seq: int
    event_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int
    """Events on disk, not yet acknowledged."""
    bytes: int
    """JSON bytes of the events on disk."""
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
    """See the module docstring. Create one with ``await UsageQueue.open(path)``."""

    def __init__(self, path: Path, settings: QueueSettings) -> None:
        self.path = path
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-queue")
        self._connection: sqlite3.Connection | None = None
        self._lock_file: int | None = None
        self._buffer: collections.deque[QueueItem] = collections.deque()
        self._wakeup = asyncio.Event()
        self._has_events = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        # Written by the worker thread only; read anywhere.
        self._depth = 0
        self._bytes = 0
        # Updated on the event loop only.
        self._written = 0
        self._dropped_oldest = 0
        self._rejected_full = 0
        self._buffer_overflow = 0
        self._dead_lettered = 0
        self._write_errors = 0

    @classmethod
    async def open(cls, path: str | Path, settings: QueueSettings | None = None) -> UsageQueue:
        """Open or create the queue database at ``path`` and start its writer task.

        Raises:
            ConfigError: the directory cannot be created, another process has the queue
                open, or the file is not a usable SQLite database.
        """
        queue = cls(Path(path), settings or QueueSettings())
        try:
            await queue._run(queue._open_database)
        except BaseException:
            queue._executor.shutdown(wait=False)
            raise
        if queue._depth:
            queue._has_events.set()
        queue._writer = asyncio.create_task(queue._write_loop(), name="usage-queue-writer")
        logger.info(
            "usage queue opened at %s: %d events, %d bytes pending",
            path,
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
        if self._closing:
            self._buffer_overflow += 1
            return False
        if len(self._buffer) >= self.settings.buffer_events:
            self._buffer_overflow += 1
            return False
        if self.settings.on_full == "reject_new" and self._disk_full():
            self._rejected_full += 1
            return False
        self._buffer.append(event)
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
        """Return once every event offered so far is committed to disk (or rejected)."""
        await self._idle.wait()

    async def read_batch(self, limit: int) -> list[QueuedEvent]:
        """Return up to ``limit`` of the oldest events on disk, without removing them."""
        batch = await self._run(self._select, limit)
        if not batch:
            self._has_events.clear()
        return batch

    async def ack(self, seqs: Iterable[int]) -> int:
        """Delete the events at ``seqs``; returns how many were still there."""
        return await self._run(self._delete, sorted(set(seqs)))

    async def dead_letter(self, seqs: Iterable[int], reason: str) -> int:
        """Move events the control plane rejected for good to the ``dead_events`` table."""
        moved = await self._run(self._move_to_dead, sorted(set(seqs)), reason)
        self._dead_lettered += moved
        return moved

    async def wait_for_events(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for events on disk; returns whether there are."""
        if self._depth:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._has_events.wait()
        return self._depth > 0

    async def close(self) -> None:
        """Write out the buffer, stop the writer and close the database."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        await self._run(self._close_database)
        self._executor.shutdown(wait=True)
        logger.info("usage queue at %s closed: %d events pending", self.path, self._depth)

    # --- the writer task ----------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            wait = self.settings.batch_wait_s
            if wait and not self._closing and len(self._buffer) < self.settings.batch_events:
                await asyncio.sleep(wait)
            while self._buffer:
                batch = list(self._take(self.settings.batch_events))
                if await self._write(batch):
                    continue
                if self._closing:
                    logger.error("usage queue: %d events lost at close", len(self._buffer))
                    self._buffer.clear()
                    break
                await asyncio.sleep(_RETRY_WRITE_S)
            self._idle.set()
            if self._closing:
                return

    async def _write(self, batch: list[QueueItem]) -> bool:
        """Store one batch; on failure put it back at the head of the buffer."""
        try:
            inserted, dropped, rejected = await self._run(self._insert, batch)
        except sqlite3.Error as exc:
            self._write_errors += 1
            self._buffer.extendleft(reversed(batch))
            logger.error(
                "usage queue: writing %d events to %s failed (%s); retrying in %.0f s",
                len(batch),
                self.path,
                exc,
                _RETRY_WRITE_S,
            )
            return False
        self._written += inserted
        self._dropped_oldest += dropped
        self._rejected_full += rejected
        if dropped or rejected:
            logger.warning(
                "usage queue is full (%d events, %d bytes): %d oldest dropped, %d new rejected",
                self._depth,
                self._bytes,
                dropped,
                rejected,
            )
        if inserted:
            self._has_events.set()
        return True

    def _take(self, count: int) -> Iterable[QueueItem]:
        for _ in range(min(count, len(self._buffer))):
            yield self._buffer.popleft()

    def _disk_full(self) -> bool:
        return self._depth >= self.settings.max_events or self._bytes >= self.settings.max_bytes

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    # --- the worker thread --------------------------------------------------------------

    def _open_database(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = _lock_exclusively(self.path.with_name(self.path.name + ".lock"))
            connection = sqlite3.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"Cannot open the usage queue at {self.path}: {exc}.") from exc
        try:
            # auto_vacuum only takes effect before the first table is created.
            connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(f"The usage queue at {self.path} cannot use WAL mode ({mode}).")
            connection.execute(f"PRAGMA synchronous={self.settings.synchronous}")
            connection.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
            connection.executescript(_SCHEMA)
            depth, size = connection.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM events"
            ).fetchone()
        except sqlite3.Error as exc:
            connection.close()
            raise ConfigError(
                f"The usage queue at {self.path} is not a usable SQLite database: {exc}. Move "
                "the file aside to start an empty queue."
            ) from exc
        self._connection = connection
        self._depth, self._bytes = int(depth), int(size)

    def _close_database(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise sqlite3.ProgrammingError("the usage queue is closed")
        return self._connection

    def _insert(self, events: Sequence[QueueItem]) -> tuple[int, int, int]:
        """Store ``events`` in one transaction; returns (inserted, dropped, rejected)."""
        db = self._db()
        rows, depth, size, rejected = self._rows(events, self._depth, self._bytes)
        db.execute("BEGIN IMMEDIATE")
        try:
            try:
                db.executemany(_INSERT, rows)
                inserted = len(rows)
            except sqlite3.IntegrityError:
                # An event id already stored: redo the batch row by row, skipping those.
                db.execute("ROLLBACK")
                db.execute("BEGIN IMMEDIATE")
                inserted, depth, size = self._insert_each(db, rows, self._depth, self._bytes)
            dropped = 0
            if self.settings.on_full == "drop_oldest":
                dropped, depth, size = self._drop_oldest(db, depth, size)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._depth, self._bytes = depth, size
        return inserted, dropped, rejected

    def _rows(
        self, events: Sequence[QueueItem], depth: int, size: int
    ) -> tuple[list[tuple[str, bytes, int, int]], int, int, int]:
        """Serialise ``events`` as rows; returns them, the new depth and size, and how many
        were rejected under ``reject_new``."""
        now_ms = int(time.time() * 1000)
        reject_new = self.settings.on_full == "reject_new"
        max_events, max_bytes = self.settings.max_events, self.settings.max_bytes
        rows = []
        rejected = 0
        for event in events:
            body = event.to_json()
            if reject_new and (depth + 1 > max_events or size + len(body) > max_bytes):
                rejected += 1
                continue
            rows.append((event.event_id, body, len(body), now_ms))
            depth += 1
            size += len(body)
        return rows, depth, size, rejected

    @staticmethod
    def _insert_each(
        db: sqlite3.Connection, rows: list[tuple[str, bytes, int, int]], depth: int, size: int
    ) -> tuple[int, int, int]:
        inserted = 0
        for row in rows:
            cursor = db.execute(_INSERT_OR_IGNORE, row)
            if cursor.rowcount == 1:
                inserted += 1
                depth += 1
                size += row[2]
        return inserted, depth, size

    def _drop_oldest(self, db: sqlite3.Connection, depth: int, size: int) -> tuple[int, int, int]:
        """Delete the oldest events until both bounds hold; returns (dropped, depth, size)."""
        excess_events = depth - self.settings.max_events
        excess_bytes = size - self.settings.max_bytes
        if excess_events <= 0 and excess_bytes <= 0:
            return 0, depth, size
        dropped = freed = 0
        last_seq = None
        for seq, row_size in db.execute("SELECT seq, size FROM events ORDER BY seq"):
            if dropped >= excess_events and freed >= excess_bytes:
                break
            dropped += 1
            freed += row_size
            last_seq = seq
        if last_seq is not None:
            db.execute("DELETE FROM events WHERE seq <= ?", (last_seq,))
        return dropped, depth - dropped, size - freed

    def _select(self, limit: int) -> list[QueuedEvent]:
        rows = self._db().execute(
            "SELECT seq, event_id, body FROM events ORDER BY seq LIMIT ?", (limit,)
        )
        return [QueuedEvent(seq, event_id, bytes(body)) for seq, event_id, body in rows]

    def _delete(self, seqs: list[int]) -> int:
        if not seqs:
            return 0
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            removed, freed = self._delete_rows(db, seqs)
            db.execute("PRAGMA incremental_vacuum(256)")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._depth -= removed
        self._bytes -= freed
        return removed

    def _move_to_dead(self, seqs: list[int], reason: str) -> int:
        if not seqs:
            return 0
        db = self._db()
        now_ms = int(time.time() * 1000)
        db.execute("BEGIN IMMEDIATE")
        try:
            for chunk in _chunks(seqs, 500):
                marks = ",".join("?" * len(chunk))
                db.execute(
                    "INSERT OR REPLACE INTO dead_events (seq, event_id, body, reason, dead_ms) "
                    f"SELECT seq, event_id, body, ?, ? FROM events WHERE seq IN ({marks})",
                    (reason[:500], now_ms, *chunk),
                )
            removed, freed = self._delete_rows(db, seqs)
            db.execute(
                "DELETE FROM dead_events WHERE seq NOT IN "
                "(SELECT seq FROM dead_events ORDER BY seq DESC LIMIT ?)",
                (_MAX_DEAD_EVENTS,),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._depth -= removed
        self._bytes -= freed
        return removed

    @staticmethod
    def _delete_rows(db: sqlite3.Connection, seqs: list[int]) -> tuple[int, int]:
        removed = freed = 0
        for chunk in _chunks(seqs, 500):
            marks = ",".join("?" * len(chunk))
            count, size = db.execute(
                f"SELECT count(*), coalesce(sum(size), 0) FROM events WHERE seq IN ({marks})",
                chunk,
            ).fetchone()
            db.execute(f"DELETE FROM events WHERE seq IN ({marks})", chunk)
            removed += int(count)
            freed += int(size)
        return removed, freed


def _chunks(values: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _lock_exclusively(path: Path) -> int:
    """Take an exclusive advisory lock on ``path``, held until its descriptor is closed.

    Raises:
        ConfigError: another process holds the lock.
    """
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise ConfigError(
            f"The usage queue {path.with_suffix('')} is in use by another process. Give each "
            "gateway instance its own state_dir."
        ) from None
    return descriptor
