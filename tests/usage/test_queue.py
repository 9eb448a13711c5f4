"""The durable usage queue: bounds, back-pressure, acks, restarts and SIGKILL."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from smartflow.core.errors import ConfigError
from smartflow.usage.events import UsageEvent, new_event_id, utc_timestamp
from smartflow.usage.queue import QueueSettings, UsageQueue

CHILD = Path(__file__).with_name("queue_child.py")


def _event(index: int) -> UsageEvent:
    return UsageEvent(
        event_id=new_event_id(),
        request_id=f"r{index}",
        started_at=utc_timestamp(0),
        instance="gw",
        site="local",
        dialect="openai",
    )


async def _offer_all(queue: UsageQueue, events: list[UsageEvent]) -> None:
    for event in events:
        assert queue.offer(event)
    await queue.flush()


async def _request_ids(queue: UsageQueue) -> list[str]:
    batch = await queue.read_batch(1_000_000)
    return [UsageEvent.from_json(item.body).request_id for item in batch]


async def test_offer_read_ack(tmp_path: Path) -> None:
    queue = await UsageQueue.open(tmp_path / "usage.db")
    try:
        await _offer_all(queue, [_event(i) for i in range(10)])
        assert queue.stats().depth == 10
        assert queue.stats().written == 10
        batch = await queue.read_batch(4)
        assert [UsageEvent.from_json(b.body).request_id for b in batch] == ["r0", "r1", "r2", "r3"]
        # Unacknowledged events are read again.
        again = await queue.read_batch(4)
        assert [b.seq for b in again] == [b.seq for b in batch]
        assert await queue.ack([b.seq for b in batch]) == 4
        assert await queue.ack([b.seq for b in batch]) == 0
        assert await _request_ids(queue) == [f"r{i}" for i in range(4, 10)]
        assert queue.stats().depth == 6
    finally:
        await queue.close()


async def test_unacked_events_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    queue = await UsageQueue.open(path)
    await _offer_all(queue, [_event(i) for i in range(5)])
    first = await queue.read_batch(2)
    await queue.ack([first[0].seq])
    for i in range(5, 8):
        queue.offer(_event(i))
    await queue.close()  # close writes the buffer out

    reopened = await UsageQueue.open(path)
    try:
        assert reopened.stats().depth == 7
        assert await _request_ids(reopened) == [f"r{i}" for i in range(1, 8)]
        stats = reopened.stats()
        assert stats.bytes > 0
    finally:
        await reopened.close()


async def test_same_event_id_is_stored_once(tmp_path: Path) -> None:
    queue = await UsageQueue.open(tmp_path / "usage.db")
    try:
        event = _event(1)
        await _offer_all(queue, [event, event])
        await _offer_all(queue, [event])
        assert queue.stats().depth == 1
        assert queue.stats().written == 1
    finally:
        await queue.close()


async def test_drop_oldest_keeps_newest(tmp_path: Path) -> None:
    settings = QueueSettings(max_events=100, on_full="drop_oldest", batch_events=50)
    queue = await UsageQueue.open(tmp_path / "usage.db", settings)
    try:
        for start in range(0, 250, 50):
            await _offer_all(queue, [_event(i) for i in range(start, start + 50)])
        stats = queue.stats()
        assert stats.depth == 100
        assert stats.dropped_oldest == 150
        assert stats.rejected_full == 0
        assert await _request_ids(queue) == [f"r{i}" for i in range(150, 250)]
    finally:
        await queue.close()


async def test_byte_bound_drops_oldest(tmp_path: Path) -> None:
    size = len(_event(0).to_json())
    settings = QueueSettings(max_bytes=size * 10 + size // 2, batch_events=7)
    queue = await UsageQueue.open(tmp_path / "usage.db", settings)
    try:
        await _offer_all(queue, [_event(i) for i in range(30)])
        stats = queue.stats()
        assert stats.bytes <= settings.max_bytes
        assert stats.depth == 10
        assert stats.dropped_oldest == 20
        assert await _request_ids(queue) == [f"r{i}" for i in range(20, 30)]
    finally:
        await queue.close()


async def test_reject_new_keeps_oldest(tmp_path: Path) -> None:
    settings = QueueSettings(max_events=100, on_full="reject_new", batch_events=40)
    queue = await UsageQueue.open(tmp_path / "usage.db", settings)
    try:
        accepted = 0
        for start in range(0, 250, 50):
            for i in range(start, start + 50):
                accepted += queue.offer(_event(i))
            await queue.flush()
        stats = queue.stats()
        assert stats.depth == 100
        assert stats.rejected_full == 150
        assert stats.dropped_oldest == 0
        assert accepted < 250
        assert stats.disk_fill == 1.0
        assert stats.backpressure
        assert await _request_ids(queue) == [f"r{i}" for i in range(100)]
    finally:
        await queue.close()


async def test_full_buffer_rejects_and_reports_pressure(tmp_path: Path) -> None:
    settings = QueueSettings(buffer_events=10)
    queue = await UsageQueue.open(tmp_path / "usage.db", settings)
    try:
        # No await between offers, so the writer cannot drain the buffer meanwhile.
        results = [queue.offer(_event(i)) for i in range(25)]
        assert results == [True] * 10 + [False] * 15
        stats = queue.stats()
        assert stats.buffered == 10
        assert stats.buffer_overflow == 15
        assert stats.backpressure
        await queue.flush()
        assert queue.stats().buffered == 0
        assert queue.stats().depth == 10
        assert not queue.stats().backpressure
    finally:
        await queue.close()


async def test_dead_letter_moves_events(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    queue = await UsageQueue.open(path)
    try:
        await _offer_all(queue, [_event(i) for i in range(3)])
        batch = await queue.read_batch(3)
        assert await queue.dead_letter([batch[1].seq], "HTTP 422: bad event") == 1
        assert await _request_ids(queue) == ["r0", "r2"]
        assert queue.stats().dead_lettered == 1
    finally:
        await queue.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT event_id, reason FROM dead_events").fetchall()
    assert rows == [(batch[1].event_id, "HTTP 422: bad event")]


async def test_wait_for_events(tmp_path: Path) -> None:
    queue = await UsageQueue.open(tmp_path / "usage.db")
    try:
        assert not await queue.wait_for_events(0.01)
        waiter = asyncio.create_task(queue.wait_for_events(5))
        queue.offer(_event(0))
        assert await waiter
    finally:
        await queue.close()


async def test_second_opener_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    queue = await UsageQueue.open(path)
    try:
        with pytest.raises(ConfigError, match="in use by another process"):
            await UsageQueue.open(path)
    finally:
        await queue.close()
    reopened = await UsageQueue.open(path)
    await reopened.close()


async def test_corrupt_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="not a usable SQLite database"):
        await UsageQueue.open(path)


async def test_closed_queue_rejects_offers(tmp_path: Path) -> None:
    queue = await UsageQueue.open(tmp_path / "usage.db")
    await queue.close()
    assert not queue.offer(_event(0))
    assert queue.stats().buffer_overflow == 1


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ConfigError, match="max_events"):
        QueueSettings(max_events=0)
    with pytest.raises(ConfigError, match="on_full"):
        QueueSettings(on_full="block")  # type: ignore[arg-type]


# One batch takes about 50 ms to build and commit on the development machine, so these
# delays kill the child at different points of its next batch.
@pytest.mark.parametrize("kill_delay", [0.0, 0.01, 0.025, 0.04])
async def test_committed_events_survive_sigkill(tmp_path: Path, kill_delay: float) -> None:
    path = tmp_path / "usage.db"
    batch = 2000
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(path),
        str(batch),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    committed = 0
    try:
        assert child.stdout is not None
        async with asyncio.timeout(60):
            while committed < 3 * batch:
                line = await child.stdout.readline()
                assert line, (await child.stderr.read()).decode() if child.stderr else ""
                committed = int(line.split()[1])
        # The child has started writing the next batch; kill it part-way.
        await asyncio.sleep(kill_delay)
        child.send_signal(signal.SIGKILL)
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    assert child.returncode == -signal.SIGKILL

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    queue = await UsageQueue.open(path)
    try:
        ids = await _request_ids(queue)
        stats = queue.stats()
    finally:
        await queue.close()
    # Every committed event survived, each once; a batch is all there or not at all.
    assert len(ids) == len(set(ids))
    assert len(ids) >= committed
    assert len(ids) % batch == 0
    assert ids == [f"r{i}" for i in range(len(ids))]
    assert stats.depth == len(ids)


async def test_full_disk_keeps_events_buffered(tmp_path: Path) -> None:
    # The test reaches the queue's connection on its worker thread to cap the file size.
    queue = await UsageQueue.open(tmp_path / "usage.db", QueueSettings(batch_events=50))
    try:
        await _offer_all(queue, [_event(i) for i in range(5)])
        db_pages = await queue._run(lambda: queue._db().execute("PRAGMA page_count").fetchone()[0])
        # SQLite reports SQLITE_FULL past max_page_count, as on a full disk.
        await queue._run(lambda: queue._db().execute(f"PRAGMA max_page_count={db_pages}"))
        for i in range(5, 405):
            assert queue.offer(_event(i))
        await _until_true(lambda: queue.stats().write_errors >= 1)
        assert queue.stats().buffered == 400
        assert queue.stats().depth == 5

        await queue._run(lambda: queue._db().execute("PRAGMA max_page_count=1073741823"))
        async with asyncio.timeout(10):
            await queue.flush()
        assert queue.stats().depth == 405
        assert await _request_ids(queue) == [f"r{i}" for i in range(405)]
    finally:
        await queue.close()


async def _until_true(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_batch_with_stored_event_keeps_the_others(tmp_path: Path) -> None:
    queue = await UsageQueue.open(tmp_path / "usage.db", QueueSettings(batch_wait_s=0.05))
    try:
        events = [_event(index) for index in range(4)]
        await _offer_all(queue, events[:1])
        size = queue.stats().bytes
        # One transaction with an id already on disk: the write is redone row by row.
        await _offer_all(queue, [events[1], events[0], events[2], events[3], events[2]])
        assert queue.stats().depth == 4
        assert queue.stats().written == 4
        assert queue.stats().bytes == size + sum(len(e.to_json()) for e in events[1:])
        assert await _request_ids(queue) == ["r0", "r1", "r2", "r3"]
    finally:
        await queue.close()


async def test_batch_wait_groups_events(tmp_path: Path) -> None:
    queue = await UsageQueue.open(tmp_path / "usage.db", QueueSettings(batch_wait_s=0.2))
    try:
        for index in range(3):
            assert queue.offer(_event(index))
            await asyncio.sleep(0.01)
        # Still waiting for the batch to fill: nothing is on disk yet.
        assert queue.stats().depth == 0
        assert queue.stats().buffered == 3
        await queue.flush()
        assert queue.stats().depth == 3
    finally:
        await queue.close()


@pytest.mark.parametrize("wait", [-0.1, 1.5])
def test_invalid_batch_wait_is_rejected(wait: float) -> None:
    with pytest.raises(ConfigError, match="batch_wait_s"):
        QueueSettings(batch_wait_s=wait)
