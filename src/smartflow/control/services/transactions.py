"""Read and write transactions; a write that changes central objects makes a new snapshot
version in the same transaction."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from smartflow.control.services.audit import record_audit
from smartflow.control.services.context import Actor
from smartflow.control.services.errors import Conflict
from smartflow.control.services.notifier import VersionNotifier
from smartflow.control.services.snapshots import build_content, content_sha256
from smartflow.control.store.database import Database
from smartflow.control.store.tables import SnapshotVersionRow, SyncHeadRow, utc_now

__all__ = ["Store", "WriteTransaction"]

logger = logging.getLogger(__name__)


class WriteTransaction:
    """One write: its session, its audit entries and whether it changes the snapshot."""

    def __init__(self, session: AsyncSession, actor: Actor) -> None:
        self.session = session
        self.actor = actor
        self.summaries: list[str] = []

    def audit(
        self,
        action: str,
        object_type: str,
        object_name: str,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
    ) -> None:
        record_audit(self.session, self.actor, action, object_type, object_name, before, after)

    def changed(self, summary: str) -> None:
        """Mark the transaction as changing the central configuration: on commit it makes
        a new snapshot version that ``summary`` describes."""
        self.summaries.append(summary)


class Store:
    """Sessions over the control-plane database.

    Writes are serialised: by an asyncio lock within this process and, on PostgreSQL, by
    a row lock on ``sync_head`` across processes. SQLite serialises writers itself.
    NOTE: two processes writing one SQLite file are not supported; use PostgreSQL.
    """

    def __init__(
        self, database: Database, notifier: VersionNotifier, snapshot_retention: int
    ) -> None:
        self.database = database
        self.notifier = notifier
        self._retention = snapshot_retention
        self._write_lock = asyncio.Lock()
        self.versions_made = 0
        """Snapshot versions this process committed since it started."""

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.database.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def write_status(self) -> AsyncIterator[AsyncSession]:
        """Open a write transaction for status that is neither audited nor in snapshots."""
        async with self._write_lock, self.database.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def write(self, actor: Actor) -> AsyncIterator[WriteTransaction]:
        """Open a write transaction; commit it, with a new snapshot version if marked
        changed, when the block ends without an exception.

        Raises:
            Conflict: the commit violated a uniqueness or reference constraint, because
                another writer changed the same objects.
        """
        published: int | None = None
        async with self._write_lock, self.database.sessions() as session:
            try:
                async with session.begin():
                    head = await session.scalar(
                        select(SyncHeadRow).where(SyncHeadRow.id == 1).with_for_update()
                    )
                    if head is None:
                        raise RuntimeError("the sync_head row is missing")
                    transaction = WriteTransaction(session, actor)
                    yield transaction
                    if transaction.summaries:
                        published = await self._new_version(session, head, transaction)
            except IntegrityError as exc:
                logger.info("write by %s rejected by a constraint: %s", actor.name, exc.orig)
                raise Conflict(
                    "the change conflicts with a concurrent change or an existing object; "
                    "read the current state and try again"
                ) from exc
        if published is not None:
            self.versions_made += 1
            self.notifier.publish(published)

    async def _new_version(
        self, session: AsyncSession, head: SyncHeadRow, transaction: WriteTransaction
    ) -> int:
        await session.flush()
        content, credentials = await build_content(session)
        version = head.version + 1
        session.add(
            SnapshotVersionRow(
                version=version,
                created_at=utc_now(),
                actor=transaction.actor.name,
                summary="; ".join(transaction.summaries),
                sha256=content_sha256(content),
                content=content,
                credentials=credentials,
            )
        )
        head.version = version
        await session.execute(
            delete(SnapshotVersionRow).where(
                SnapshotVersionRow.version <= version - self._retention
            )
        )
        logger.info(
            "snapshot version %d made by %s: %s",
            version,
            transaction.actor.name,
            "; ".join(transaction.summaries),
        )
        return version
