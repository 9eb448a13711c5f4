"""Child process for the full-disk test: its file size limit makes the queue's writes fail.

Usage: python queue_full_child.py QUEUE_DIR. Writes 5 events, caps the file size just
above what is written (RLIMIT_FSIZE, with SIGXFSZ ignored so a write past it fails with
EFBIG), offers 400 more, waits for a failed write, then lifts the cap and flushes. Prints
one JSON object with the queue's state at both points.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sys
from pathlib import Path

import orjson
from queue_child import make_event

from smartflow.usage.events import UsageEvent
from smartflow.usage.queue import QueueSettings, UsageQueue


async def main(path: Path) -> None:
    queue = await UsageQueue.open(path, QueueSettings(batch_events=50))
    for index in range(5):
        queue.offer(make_event(index))
    await queue.flush()
    (segment,) = path.glob("segment-*.log")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (segment.stat().st_size + 100, hard))
    for index in range(5, 405):
        queue.offer(make_event(index))
    async with asyncio.timeout(10):
        while queue.stats().write_errors < 1:
            await asyncio.sleep(0.01)
    stats = queue.stats()
    while_full = {
        "depth": stats.depth,
        "buffered": stats.buffered,
        "write_errors_at_least_1": stats.write_errors >= 1,
    }
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    async with asyncio.timeout(10):
        await queue.flush()
    batch = await queue.read_batch(1000)
    after = {
        "depth": queue.stats().depth,
        "request_ids": [UsageEvent.from_json(item.body).request_id for item in batch],
    }
    await queue.close()
    sys.stdout.buffer.write(orjson.dumps({"while_full": while_full, "after": after}))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
