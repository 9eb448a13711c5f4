"""The durable usage queue: bounds, back-pressure, acks, restarts and SIGKILL."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from smartflow.core.errors import ConfigError
from smartflow.usage.events import UsageEvent, new_event_id, utc_timestamp
from smartflow.usage.queue import QueueSettings, UsageQueue, open_state_queue

CHILD = Path(__file__).with_name("queue_child.py")
FULL_DISK_CHILD = Path(__file__).with_name("queue_full_child.py")


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
    queue = await UsageQueue.open(tmp_path / "queue")
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
    path = tmp_path / "queue"
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


async def test_drop_oldest_keeps_newest(tmp_path: Path) -> None:
    settings = QueueSettings(max_events=100, on_full="drop_oldest", batch_events=50)
    queue = await UsageQueue.open(tmp_path / "queue", settings)
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
    queue = await UsageQueue.open(tmp_path / "queue", settings)
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
    queue = await UsageQueue.open(tmp_path / "queue", settings)
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
    queue = await UsageQueue.open(tmp_path / "queue", settings)
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
    path = tmp_path / "queue"
    queue = await UsageQueue.open(path)
    try:
        await _offer_all(queue, [_event(i) for i in range(3)])
        batch = await queue.read_batch(3)
        assert await queue.dead_letter([batch[1].seq], "HTTP 422: bad event") == 1
        assert await _request_ids(queue) == ["r0", "r2"]
        assert queue.stats().dead_lettered == 1
        # Acknowledging a run over the dead letter counts only the two still queued.
        assert await queue.ack(b.seq for b in batch) == 2
        assert queue.stats().depth == 0
        assert queue.stats().bytes == 0
    finally:
        await queue.close()
    lines = [orjson.loads(line) for line in (path / "dead.log").read_bytes().splitlines()]
    assert [(line["event_id"], line["reason"]) for line in lines] == [
        (batch[1].event_id, "HTTP 422: bad event")
    ]
    assert lines[0]["event"]["request_id"] == "r1"


async def test_wait_for_events(tmp_path: Path) -> None:
    queue = await UsageQueue.open(tmp_path / "queue")
    try:
        assert not await queue.wait_for_events(0.01)
        waiter = asyncio.create_task(queue.wait_for_events(5))
        queue.offer(_event(0))
        assert await waiter
    finally:
        await queue.close()


async def test_second_opener_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "queue"
    queue = await UsageQueue.open(path)
    try:
        with pytest.raises(ConfigError, match="in use by another process"):
            await UsageQueue.open(path)
    finally:
        await queue.close()
    reopened = await UsageQueue.open(path)
    await reopened.close()


async def test_closed_queue_rejects_offers(tmp_path: Path) -> None:
    queue = await UsageQueue.open(tmp_path / "queue")
    await queue.close()
    assert not queue.offer(_event(0))
    assert queue.stats().buffer_overflow == 1


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ConfigError, match="max_events"):
        QueueSettings(max_events=0)
    with pytest.raises(ConfigError, match="on_full"):
        QueueSettings(on_full="block")  # type: ignore[arg-type]


# One batch takes about 25 ms to build, write and sync on the development machine, so these
# delays kill the child at different points of its next batch.
@pytest.mark.parametrize("kill_delay", [0.0, 0.01, 0.025, 0.04])
async def test_committed_events_survive_sigkill(tmp_path: Path, kill_delay: float) -> None:
    path = tmp_path / "queue"
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

    queue = await UsageQueue.open(path)
    try:
        ids = await _request_ids(queue)
        stats = queue.stats()
    finally:
        await queue.close()
    # Every committed event survived, each once and in order. A write cut by the kill
    # leaves whole lines of the next batch, and no part of a line.
    assert len(ids) >= committed
    assert ids == [f"r{i}" for i in range(len(ids))]
    assert stats.depth == len(ids)


async def _until_true(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_batch_wait_groups_events(tmp_path: Path) -> None:
    queue = await UsageQueue.open(tmp_path / "queue", QueueSettings(batch_wait_s=0.2))
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


def test_invalid_fsync_interval_is_rejected() -> None:
    with pytest.raises(ConfigError, match="fsync_interval_s"):
        QueueSettings(fsync_interval_s=-1)


async def test_full_disk_keeps_events_buffered(tmp_path: Path) -> None:
    # The child caps its file size with RLIMIT_FSIZE, so the kernel fails its writes as on
    # a full disk, then lifts the cap and flushes.
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(FULL_DISK_CHILD),
        str(tmp_path / "queue"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await child.communicate()
    assert child.returncode == 0, err.decode()
    report = orjson.loads(out)
    assert report["while_full"] == {"depth": 5, "buffered": 400, "write_errors_at_least_1": True}
    assert report["after"]["depth"] == 405
    assert report["after"]["request_ids"] == [f"r{i}" for i in range(405)]


async def test_segments_roll_and_are_deleted_once_shipped(tmp_path: Path) -> None:
    path = tmp_path / "queue"
    settings = QueueSettings(max_bytes=64 * 1024 * 8, batch_events=20)
    queue = await UsageQueue.open(path, settings)
    try:
        events = [_event(i) for i in range(400)]
        for start in range(0, 400, 20):
            await _offer_all(queue, events[start : start + 20])
        assert len(list(path.glob("segment-*.log"))) > 1
        batch = await queue.read_batch(1000)
        assert [b.seq for b in batch] == list(range(400))
        assert await queue.ack(b.seq for b in batch) == 400
        assert len(list(path.glob("segment-*.log"))) == 1
        assert queue.stats().depth == 0
        assert queue.stats().bytes == 0
        await _offer_all(queue, [_event(400)])
    finally:
        await queue.close()
    reopened = await UsageQueue.open(path, settings)
    try:
        assert await _request_ids(reopened) == ["r400"]
        assert [b.seq for b in await reopened.read_batch(10)] == [400]
    finally:
        await reopened.close()


async def test_line_cut_by_a_crash_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "queue"
    queue = await UsageQueue.open(path)
    await _offer_all(queue, [_event(i) for i in range(3)])
    await queue.close()
    (segment,) = path.glob("segment-*.log")
    whole = segment.read_bytes()
    with segment.open("ab") as file:
        file.write(_line_of(_event(3))[:-40])

    reopened = await UsageQueue.open(path)
    try:
        assert await _request_ids(reopened) == ["r0", "r1", "r2"]
        assert segment.read_bytes() == whole
        await _offer_all(reopened, [_event(4)])
        assert await _request_ids(reopened) == ["r0", "r1", "r2", "r4"]
    finally:
        await reopened.close()


async def test_line_with_a_bad_checksum_is_dead_lettered(tmp_path: Path) -> None:
    path = tmp_path / "queue"
    queue = await UsageQueue.open(path)
    await _offer_all(queue, [_event(i) for i in range(3)])
    await queue.close()
    (segment,) = path.glob("segment-*.log")
    lines = segment.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"r1"', b'"x1"')
    segment.write_bytes(b"".join(lines))

    reopened = await UsageQueue.open(path)
    try:
        assert await _request_ids(reopened) == ["r0", "r2"]
        assert reopened.stats().dead_lettered == 1
        assert reopened.stats().depth == 2
    finally:
        await reopened.close()
    (dead,) = [orjson.loads(line) for line in (path / "dead.log").read_bytes().splitlines()]
    assert dead["reason"] == "corrupt line in the queue"
    assert '"x1"' in dead["event"]


async def test_unreadable_cursor_sends_events_again(tmp_path: Path) -> None:
    path = tmp_path / "queue"
    queue = await UsageQueue.open(path)
    await _offer_all(queue, [_event(i) for i in range(3)])
    await queue.ack([0])
    await queue.close()
    (path / "cursor.json").write_bytes(b"{not json")

    reopened = await UsageQueue.open(path)
    try:
        assert await _request_ids(reopened) == ["r0", "r1", "r2"]
    finally:
        await reopened.close()


async def test_events_of_the_sqlite_queue_are_taken_over(tmp_path: Path) -> None:
    usage_dir = tmp_path / "usage"
    usage_dir.mkdir()
    legacy = usage_dir / "events.db"
    with sqlite3.connect(legacy) as db:
        db.execute(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL "
            "UNIQUE, body BLOB NOT NULL, size INTEGER NOT NULL, created_ms INTEGER NOT NULL)"
        )
        for index in (2, 0, 1):
            event = _event(index)
            body = event.to_json()
            db.execute(
                "INSERT INTO events (seq, event_id, body, size, created_ms) VALUES (?, ?, ?, ?, 0)",
                (index + 10, event.event_id, body, len(body)),
            )
    db.close()

    queue = await open_state_queue(tmp_path, QueueSettings())
    try:
        assert await _request_ids(queue) == ["r0", "r1", "r2"]
        assert queue.stats().depth == 3
    finally:
        await queue.close()
    assert not legacy.exists()
    assert (usage_dir / "events.db.imported").exists()
    reopened = await open_state_queue(tmp_path, QueueSettings())
    try:
        assert reopened.stats().depth == 3
    finally:
        await reopened.close()


def _line_of(event: UsageEvent) -> bytes:
    body = event.to_json()
    return b"%08x %b\n" % (zlib.crc32(body), body)


@pytest.mark.parametrize("seed", range(5))
async def test_random_removals_match_a_model(tmp_path: Path, seed: int) -> None:
    # The queue against a plain dict of what should be queued, over segment boundaries.
    rng = random.Random(seed)
    path = tmp_path / "queue"
    settings = QueueSettings(max_bytes=64 * 1024 * 8, batch_events=37)
    model: dict[str, int] = {}
    queue = await UsageQueue.open(path, settings)
    try:
        for round_index in range(12):
            events = [_event(round_index * 40 + i) for i in range(40)]
            await _offer_all(queue, events)
            model.update({e.request_id: len(e.to_json()) for e in events})
            limit = rng.randint(1, 120)
            run = queue.read_run(limit)
            batch = await queue.read_batch(limit)
            if run is not None:
                # From memory, the same events as from the files.
                assert run.bodies == [b.body for b in batch]
                assert run.first_seq == batch[0].seq
            if run is not None and rng.random() < 0.5:
                chosen = batch[: rng.randint(0, len(batch))]
                await queue.ack_run(run.first_seq, len(chosen))
            else:
                chosen = [b for b in batch if rng.random() < 0.6]
                if rng.random() < 0.3:
                    await queue.dead_letter([b.seq for b in chosen], "HTTP 422: test")
                else:
                    await queue.ack(b.seq for b in chosen)
            for item in chosen:
                model.pop(UsageEvent.from_json(item.body).request_id)
            assert queue.stats().depth == len(model)
            assert queue.stats().bytes == sum(model.values())
        assert await _request_ids(queue) == list(model)
    finally:
        await queue.close()
    reopened = await UsageQueue.open(path, settings)
    try:
        assert await _request_ids(reopened) == list(model)
        assert reopened.stats().bytes == sum(model.values())
    finally:
        await reopened.close()


@pytest.mark.parametrize(
    "cursor",
    [
        b'{"head": 0, "removed": "0123"}',
        b'{"head": 2.9, "removed": []}',
        b'{"head": true, "removed": []}',
        b'{"head": 0, "removed": [100000000000000000000]}',
        b'{"head": 123456789012, "removed": []}',
    ],
    ids=["removed-string", "head-float", "head-bool", "removed-huge", "head-past-end"],
)
async def test_invalid_cursor_sends_events_again(tmp_path: Path, cursor: bytes) -> None:
    path = tmp_path / "queue"
    queue = await UsageQueue.open(path)
    await _offer_all(queue, [_event(i) for i in range(5)])
    await queue.close()
    (path / "cursor.json").write_bytes(cursor)

    reopened = await UsageQueue.open(path)
    try:
        assert await _request_ids(reopened) == [f"r{i}" for i in range(5)]
        assert await reopened.ack([0]) == 1
    finally:
        await reopened.close()


async def test_failed_cursor_write_keeps_the_writer_going(tmp_path: Path) -> None:
    # A directory where the cursor's temporary file goes makes every cursor write fail.
    path = tmp_path / "queue"
    queue = await UsageQueue.open(path, QueueSettings(max_events=5))
    try:
        (path / "cursor.json.new").mkdir()
        await _offer_all(queue, [_event(i) for i in range(8)])
        assert queue.stats().dropped_oldest == 3
        assert await queue.ack([3]) == 1
        await _offer_all(queue, [_event(8)])
        assert await _request_ids(queue) == ["r4", "r5", "r6", "r7", "r8"]
    finally:
        await queue.close()
    (path / "cursor.json.new").rmdir()
    reopened = await UsageQueue.open(path)
    await reopened.close()


async def test_segment_with_an_invalid_name_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "queue"
    queue = await UsageQueue.open(path)
    await _offer_all(queue, [_event(0)])
    await queue.close()
    (segment,) = path.glob("segment-*.log")
    for name in ("segment--5.log", "segment-1_0.log", "segment-" + "9" * 30 + ".log"):
        (path / name).write_bytes(segment.read_bytes())

    reopened = await UsageQueue.open(path)
    try:
        assert await _request_ids(reopened) == ["r0"]
    finally:
        await reopened.close()


async def test_recent_events_read_from_memory(tmp_path: Path) -> None:
    queue = await UsageQueue.open(tmp_path / "queue")
    try:
        await _offer_all(queue, [_event(i) for i in range(10)])
        run = queue.read_run(4)
        assert run is not None
        assert [UsageEvent.from_json(b).request_id for b in run.bodies] == ["r0", "r1", "r2", "r3"]
        assert await queue.ack_run(run.first_seq, 4) == 4
        assert await queue.ack_run(run.first_seq, 4) == 0
        assert queue.stats().depth == 6
        # An event removed out of order sends the shipper back to the files.
        assert await queue.ack([6]) == 1
        assert queue.read_run(10) is None
        assert await _request_ids(queue) == ["r4", "r5", "r7", "r8", "r9"]
        batch = await queue.read_batch(2)
        assert await queue.ack(b.seq for b in batch) == 2
        run = queue.read_run(10)
        assert run is not None
        assert [UsageEvent.from_json(b).request_id for b in run.bodies] == ["r7", "r8", "r9"]
    finally:
        await queue.close()
    # After a restart nothing is in memory, and the files have the same events.
    reopened = await UsageQueue.open(tmp_path / "queue")
    try:
        assert reopened.read_run(10) is None
        assert await _request_ids(reopened) == ["r7", "r8", "r9"]
    finally:
        await reopened.close()


async def test_run_dropped_while_in_flight(tmp_path: Path) -> None:
    # The oldest events of a run are dropped for newer ones before the run is acknowledged.
    queue = await UsageQueue.open(tmp_path / "queue", QueueSettings(max_events=10))
    try:
        await _offer_all(queue, [_event(i) for i in range(10)])
        run = queue.read_run(10)
        assert run is not None
        await _offer_all(queue, [_event(i) for i in range(10, 14)])
        assert queue.stats().dropped_oldest == 4
        assert await queue.ack_run(run.first_seq, len(run.bodies)) == 6
        assert queue.stats().depth == 4
        run = queue.read_run(10)
        assert run is not None
        assert [UsageEvent.from_json(b).request_id for b in run.bodies] == [
            "r10",
            "r11",
            "r12",
            "r13",
        ]
    finally:
        await queue.close()


async def test_closed_queue_leaves_files_alone(tmp_path: Path) -> None:
    # A shipper that outlives its queue must not remove events from the queue opened next.
    settings = QueueSettings(max_bytes=2 * 1024 * 1024)
    first = await UsageQueue.open(tmp_path / "queue", settings)
    await _offer_all(first, [_event(i) for i in range(1000)])
    run = first.read_run(1000)
    assert run is not None
    await first.close()
    segments = sorted((tmp_path / "queue").glob("segment-*.log"))
    assert len(segments) > 1
    second = await UsageQueue.open(tmp_path / "queue", settings)
    try:
        assert first.read_run(1000) is None
        assert await first.read_batch(1000) == []
        assert await first.ack_run(run.first_seq, len(run.bodies)) == 0
        assert await first.ack(range(1000)) == 0
        assert await first.dead_letter([0], "HTTP 422: late") == 0
        assert second.stats().depth == 1000
        assert len(await _request_ids(second)) == 1000
        assert sorted((tmp_path / "queue").glob("segment-*.log")) == segments
    finally:
        await second.close()
