"""The files of the usage queue: checksummed segment lines, and writing, syncing and
locking files so that a crash leaves them readable.

A segment line is ``<CRC-32 of the JSON in 8 hex digits> <JSON>\n``. ``UsageQueue`` in
``usage/queue.py`` keeps the queue's state; this module reads and writes the bytes.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import logging
import os
import sqlite3
import zlib
from pathlib import Path

import orjson

from smartflow.core.errors import ConfigError

__all__ = [
    "LINE_PREFIX",
    "Segment",
    "dead_line",
    "encode_line",
    "line_is_valid",
    "lock_exclusively",
    "read_sqlite_queue",
    "replace_file",
    "sync_and_close",
    "sync_directory",
]

logger = logging.getLogger(__name__)

LINE_PREFIX = 9
"""Bytes before the JSON of a line: eight hex digits of the checksum and a space."""


class Segment:
    """One segment file: the start offset of each line, in order of ``seq``."""

    __slots__ = ("end", "first_seq", "path", "starts")

    def __init__(self, path: Path, first_seq: int) -> None:
        self.path = path
        self.first_seq = first_seq
        self.starts = array.array("q")
        self.end = 0
        """Offset just past the last complete line."""

    @property
    def next_seq(self) -> int:
        return self.first_seq + len(self.starts)

    def span(self, seq: int) -> tuple[int, int]:
        """Return the start and end offsets of the line of ``seq``, newline included."""
        index = seq - self.first_seq
        start = self.starts[index]
        end = self.starts[index + 1] if index + 1 < len(self.starts) else self.end
        return start, end


def encode_line(body: bytes) -> bytes:
    return b"%08x %b\n" % (zlib.crc32(body), body)


def line_is_valid(data: bytes, start: int, end: int) -> bool:
    """Return whether the line ``data[start:end]`` has the form and checksum of a queue line."""
    if end - start <= LINE_PREFIX or data[start + LINE_PREFIX - 1] != 0x20:
        return False
    try:
        checksum = int(data[start : start + LINE_PREFIX - 1], 16)
    except ValueError:
        return False
    return zlib.crc32(data[start + LINE_PREFIX : end]) == checksum


def dead_line(event_id: str | None, reason: str, now_ms: int, body: bytes) -> bytes:
    try:
        event: object = orjson.Fragment(body) if body[:1] == b"{" else body.decode()
        return orjson.dumps(
            {"event_id": event_id, "reason": reason[:500], "dead_ms": now_ms, "event": event},
            option=orjson.OPT_APPEND_NEWLINE,
        )
    except (orjson.JSONEncodeError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace")
        return orjson.dumps(
            {"event_id": event_id, "reason": reason[:500], "dead_ms": now_ms, "event": text},
            option=orjson.OPT_APPEND_NEWLINE,
        )


def sync_and_close(fd: int, directory: Path) -> None:
    try:
        os.fsync(fd)
        sync_directory(directory)
    except OSError as exc:
        logger.error("usage queue: syncing a finished segment of %s failed: %s", directory, exc)
    finally:
        os.close(fd)


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes) -> None:
    """Write ``path`` whole by renaming a new file over it, so a crash leaves either
    version."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    temporary.replace(path)


def read_sqlite_queue(path: Path) -> list[bytes]:
    """Return the pending event bodies of a SQLite queue file of earlier releases."""
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            rows = db.execute("SELECT body FROM events ORDER BY seq").fetchall()
    except sqlite3.Error as exc:
        raise ConfigError(
            f"Cannot read the earlier usage queue {path}: {exc}. Move it aside to start "
            "without its events."
        ) from exc
    return [bytes(body) for (body,) in rows]


def lock_exclusively(path: Path, directory: Path) -> int:
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
            f"The usage queue {directory} is in use by another process. Give each gateway "
            "instance its own state_dir."
        ) from None
    return descriptor
