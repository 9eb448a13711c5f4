"""Enrolled instances: their status, and the sync events that change it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select, update

from smartflow.control.models import InstanceOut
from smartflow.control.services.context import Actor
from smartflow.control.services.snapshots import head_version, instance_snapshot, load_version
from smartflow.control.services.transactions import Store
from smartflow.control.store.crypto import SecretBox
from smartflow.control.store.tables import InstanceRow, utc_now
from smartflow.core.errors import InternalError, NotFound
from smartflow.sync.protocol import SnapshotMessage, SyncReply
from smartflow.sync.signing import SigningKey, sign_snapshot

__all__ = ["MAX_ERROR_CHARS", "InstanceService"]

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000
"""Maximum length, in characters, of the rejection error stored per instance; longer ones
are truncated."""


class InstanceService:
    def __init__(
        self,
        store: Store,
        box: SecretBox,
        signing_key: SigningKey,
        is_connected: Callable[[str], bool],
    ) -> None:
        self._store = store
        self._box = box
        self._signing_key = signing_key
        self._is_connected = is_connected

    async def list_all(self) -> list[InstanceOut]:
        async with self._store.read() as session:
            head = await head_version(session)
            rows = (await session.scalars(select(InstanceRow).order_by(InstanceRow.name))).all()
        return [self._out(row, head) for row in rows]

    async def get(self, name: str) -> InstanceOut:
        async with self._store.read() as session:
            head = await head_version(session)
            row = await self._find(session, name)
        return self._out(row, head)

    async def delete(self, name: str, actor: Actor) -> None:
        """Delete the instance, which revokes its credential."""
        async with self._store.write(actor) as tx:
            row = await self._find(tx.session, name)
            before = self._out(row, await head_version(tx.session)).model_dump(mode="json")
            await tx.session.delete(row)
            tx.audit("delete", "instance", name, before, None)
        logger.info("instance %s deleted by %s; its credential no longer works", name, actor.name)

    async def signed_snapshot(self, instance: InstanceRow, version: int) -> SnapshotMessage:
        """Return snapshot ``version`` for ``instance``, signed.

        Raises:
            InternalError: the version is no longer stored.
        """
        async with self._store.read() as session:
            row = await load_version(session, version)
        if row is None:
            raise InternalError(f"snapshot version {version} is not stored")
        data = instance_snapshot(row, instance.name, instance.site, self._box)
        return sign_snapshot(data, self._signing_key)

    async def head(self) -> int:
        async with self._store.read() as session:
            return await head_version(session)

    async def record_sent(self, instance_id: int, version: int) -> None:
        await self._update(instance_id, sync_state="syncing", last_seen=utc_now())
        logger.info("sent snapshot version %d to instance id %d", version, instance_id)

    async def record_reply(self, instance: InstanceRow, reply: SyncReply) -> None:
        if reply.error is not None:
            error = reply.error[:MAX_ERROR_CHARS]
            logger.warning(
                "instance %s rejected snapshot version %d: %s", instance.name, reply.version, error
            )
            await self._update(
                instance.id, sync_state="rejected", last_error=error, last_seen=utc_now()
            )
            return
        head = await self.head()
        state = "in_sync" if reply.version >= head else "syncing"
        logger.info("instance %s applied snapshot version %d", instance.name, reply.version)
        await self._update(
            instance.id,
            sync_state=state,
            applied_version=reply.version,
            last_error=None,
            last_seen=utc_now(),
        )

    async def record_seen(self, instance_id: int) -> None:
        await self._update(instance_id, last_seen=utc_now())

    async def record_disconnected(self, instance_id: int) -> None:
        await self._update(instance_id, sync_state="disconnected", last_seen=utc_now())

    async def _update(self, instance_id: int, **values: object) -> None:
        # Sync events are status, not configuration: no audit entry and no snapshot version.
        # An instance deleted while connected matches no row; its stream is being closed.
        async with self._store.write_status() as session:
            await session.execute(
                update(InstanceRow).where(InstanceRow.id == instance_id).values(**values)
            )

    def _out(self, row: InstanceRow, head: int) -> InstanceOut:
        return InstanceOut(
            name=row.name,
            site=row.site,
            enrolled_at=row.enrolled_at,
            applied_version=row.applied_version,
            head_version=head,
            last_seen=row.last_seen,
            sync_state=row.sync_state,
            last_error=row.last_error,
            connected=self._is_connected(row.name),
        )

    @staticmethod
    async def _find(session: object, name: str) -> InstanceRow:
        row: InstanceRow | None = await session.scalar(  # type: ignore[attr-defined]
            select(InstanceRow).where(InstanceRow.name == name)
        )
        if row is None:
            raise NotFound(f"instance {name!r} not found; list instances with GET /v1/instances")
        return row
