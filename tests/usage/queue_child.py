"""Child process for the SIGKILL test: writes batches of events until it is killed.

Usage: python queue_child.py QUEUE_DIR BATCH_EVENTS. After each committed batch it prints
``committed N``, where N counts all events committed so far. Event i has request id
``r<i>``, so the parent can tell which events survived.
"""

from __future__ import annotations

import asyncio
import sys

from smartflow.usage.events import UsageEvent, new_event_id, utc_timestamp
from smartflow.usage.queue import QueueSettings, UsageQueue

# About 1 KB of JSON per event, so a batch takes long enough to be killed part-way.
_PADDING = [{"param": f"p{i}", "rule": "clamp", "before": i, "after": 0} for i in range(12)]


def make_event(index: int) -> UsageEvent:
    return UsageEvent(
        event_id=new_event_id(),
        request_id=f"r{index}",
        started_at=utc_timestamp(0),
        instance="child",
        site="local",
        dialect="openai",
        normalization=_PADDING,
    )


async def main(path: str, batch: int) -> None:
    settings = QueueSettings(batch_events=batch, buffer_events=batch, fsync_interval_s=0)
    queue = await UsageQueue.open(path, settings)
    committed = 0
    while True:
        for index in range(committed, committed + batch):
            if not queue.offer(make_event(index)):
                raise SystemExit(f"offer rejected event {index}")
        await queue.flush()
        committed += batch
        sys.stdout.write(f"committed {committed}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
