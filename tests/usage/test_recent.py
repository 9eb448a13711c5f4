"""RecentEvents: the window of written events that the shipper reads from memory."""

from __future__ import annotations

from smartflow.usage.recent import RecentEvents


def _bodies(first: int, count: int) -> list[bytes]:
    return [b'{"n":%d}' % n for n in range(first, first + count)]


def _add(window: RecentEvents, first: int, count: int) -> None:
    window.add(first, _bodies(first, count))


def test_recent_run_crosses_batches() -> None:
    window = RecentEvents(max_bytes=1 << 20)
    _add(window, 100, 3)
    _add(window, 103, 4)
    run = window.take(101, 5)
    assert run is not None
    assert run.first_seq == 101
    assert run.bodies == _bodies(101, 5)
    run = window.take(106, 50)
    assert run is not None
    assert run.bodies == _bodies(106, 1)


def test_recent_head_outside_window() -> None:
    window = RecentEvents(max_bytes=1 << 20)
    assert window.take(0, 10) is None
    _add(window, 10, 5)
    assert window.take(9, 10) is None  # older than the window: read from the files
    assert window.take(15, 10) is None  # every event kept was acknowledged
    assert window.take(10, 10) is None  # and was let go


def test_recent_byte_bound_drops_oldest() -> None:
    one_batch = sum(map(len, _bodies(30, 10)))
    window = RecentEvents(max_bytes=2 * one_batch)
    for first in range(0, 40, 10):
        _add(window, first, 10)
    assert window.take(19, 5) is None
    run = window.take(20, 100)
    assert run is not None
    assert run.bodies == _bodies(20, 20)


def test_recent_gap_restarts_window() -> None:
    window = RecentEvents(max_bytes=1 << 20)
    _add(window, 0, 5)
    _add(window, 8, 2)
    assert window.take(0, 10) is None
    run = window.take(8, 10)
    assert run is not None
    assert run.bodies == _bodies(8, 2)
