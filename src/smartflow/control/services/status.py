"""Batched writes of the instances' sync status.

Every stream records a status change for each version it sends and for each reply, so a
change of the configuration with N connected instances makes about 2N status updates. They
are queued here and written together: while one transaction runs, new updates queue up
and go into the next one.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Table, bindparam, update
from sqlalchemy.exc import SQLAlchemyError

from smartflow.control.services.transactions import Store
from smartflow.control.store.tables import InstanceRow

__all__ = ["MAX_RETRY_DELAY_S", "MAX_WRITE_ATTEMPTS", "StatusWriter"]

logger = logging.getLogger(__name__)

MAX_WRITE_ATTEMPTS = 5
"""Attempts at writing queued status before it is dropped (and the failure logged)."""
MAX_RETRY_DELAY_S = 5.0
"""Maximum wait, in seconds, before writing again after a failed status write."""


class StatusWriter:
    """Queue of column updates per instance id, written by one background task.

    Updates of one instance are merged in the order they were recorded, so a later value
    of a column replaces an earlier one that is not written yet. Sync status is not
    configuration: the writes make no audit entry and no snapshot version.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[int, dict[str, object]] = {}
        self._writer: asyncio.Task[None] | None = None

    def record(self, instance_id: int, **values: object) -> None:
        """Queue ``values`` for the instance row with id ``instance_id``."""
        self._pending.setdefault(instance_id, {}).update(values)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_pending(), name="sync-status-writer")

    async def flush(self) -> None:
        """Wait until every update queued so far is written, or dropped after failures."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def close(self) -> None:
        """Write what is queued, for use before the database closes."""
        await self.flush()

    async def _write_pending(self) -> None:
        failures = 0
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                try:
                    await self._write(batch)
                    failures = 0
                except (SQLAlchemyError, OSError) as exc:
                    failures += 1
                    # Keep the failed values under any newer ones recorded meanwhile.
                    for instance_id, values in batch.items():
                        self._pending[instance_id] = {
                            **values,
                            **self._pending.get(instance_id, {}),
                        }
                    if failures >= MAX_WRITE_ATTEMPTS:
                        logger.error(
                            "writing the sync status of instance ids %s failed %d times, "
                            "dropping it: %r",
                            sorted(self._pending),
                            failures,
                            exc,
                        )
                        self._pending.clear()
                        break
                    delay = min(0.1 * 2**failures, MAX_RETRY_DELAY_S)
                    logger.warning(
                        "writing the sync status of instance ids %s failed: %r; retrying in %.1f s",
                        sorted(batch),
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
        finally:
            self._writer = None

    async def _write(self, batch: dict[int, dict[str, object]]) -> None:
        # One executemany per set of columns. An instance deleted while connected matches
        # no row, which is fine: its stream is being closed.
        groups: dict[tuple[str, ...], list[dict[str, object]]] = {}
        for instance_id, values in batch.items():
            columns = tuple(sorted(values))
            row = {f"new_{column}": value for column, value in values.items()}
            groups.setdefault(columns, []).append({"row_id": instance_id, **row})
        table: Table = InstanceRow.__table__  # type: ignore[assignment]
        async with self._store.write_status() as session:
            for columns, rows in groups.items():
                statement = (
                    update(table)
                    .where(table.c.id == bindparam("row_id"))
                    .values({column: bindparam(f"new_{column}") for column in columns})
                )
                await session.execute(statement, rows)
