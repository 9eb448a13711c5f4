"""Enrolled instances: their status, and the sync events that change it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from smartflow.control.models import InstanceOut
from smartflow.control.services.context import Actor
from smartflow.control.services.snapshots import PreparedVersion, head_version, load_version
from smartflow.control.services.status import StatusWriter
from smartflow.control.services.transactions import Store
from smartflow.control.store.crypto import SecretBox
from smartflow.control.store.tables import InstanceRow, utc_now
from smartflow.core.errors import InternalError, NotFound
from smartflow.sync.protocol import SyncReply
from smartflow.sync.signing import SigningKey, sign_canonical_snapshot

__all__ = ["MAX_ERROR_CHARS", "PREPARED_VERSIONS", "InstanceService"]

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000
"""Maximum length, in characters, of the rejection error stored per instance; longer ones
are truncated."""
PREPARED_VERSIONS = 2
"""Snapshot versions kept ready to send; an older one is read from the store again."""


class InstanceService:
    def __init__(
        self,
        store: Store,
        box: SecretBox,
        signing_key: SigningKey,
        is_connected: Callable[[str], bool],
        poll_interval_s: float = 5.0,
    ) -> None:
        self._store = store
        self._box = box
        self._signing_key = signing_key
        self._is_connected = is_connected
        self._poll_interval_s = poll_interval_s
        self._status = StatusWriter(store)
        self._versions: dict[int, asyncio.Future[PreparedVersion]] = {}
        self._watchers = 0
        self._poller: asyncio.Task[None] | None = None

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

    async def snapshot_message(self, instance: InstanceRow, version: int) -> str:
        """Return the JSON text of the signed message carrying snapshot ``version`` for
        ``instance``.

        The version is read from the store once for all streams, and its content is
        serialised once per site. Only the signature is made per instance.

        Raises:
            InternalError: the version is no longer stored.
            SecretDecryptionError: stored credentials do not decrypt with the configured keys.
        """
        prepared = await self._prepared(version)
        canonical = prepared.canonical_snapshot(instance.name, instance.site)
        return sign_canonical_snapshot(canonical, self._signing_key)

    async def _prepared(self, version: int) -> PreparedVersion:
        loading = self._versions.get(version)
        if loading is None:
            loading = asyncio.ensure_future(self._load(version))
            self._versions[version] = loading
            for old in sorted(self._versions)[:-PREPARED_VERSIONS]:
                del self._versions[old]
        try:
            # Shielded: a stream closed while waiting must not cancel the load for the others.
            return await asyncio.shield(loading)
        except Exception:
            # Not cached, so the next stream that needs the version reads it again.
            if self._versions.get(version) is loading:
                del self._versions[version]
            raise

    async def _load(self, version: int) -> PreparedVersion:
        async with self._store.read() as session:
            row = await load_version(session, version)
        if row is None:
            raise InternalError(f"snapshot version {version} is not stored")
        return PreparedVersion(row, self._box)

    async def head(self) -> int:
        """Read the newest snapshot version from the store, and announce it to the streams
        of this process if another process made it."""
        async with self._store.read() as session:
            version = await head_version(session)
        self._store.notifier.publish(version)
        return version

    @asynccontextmanager
    async def watching_head(self) -> AsyncIterator[None]:
        """Poll the store for the newest version while at least one stream is open.

        One task per process reads the head every ``poll_interval_s`` and announces a
        version made by another process sharing the database. The streams wait on the
        notifier and do not read the store themselves.
        """
        self._watchers += 1
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_head(), name="sync-head-poller")
        try:
            yield
        finally:
            self._watchers -= 1
            if self._watchers == 0 and self._poller is not None:
                self._poller.cancel()
                self._poller = None

    async def _poll_head(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self.head()
            except (SQLAlchemyError, OSError) as exc:
                logger.warning("reading the newest snapshot version failed: %r; retrying", exc)

    def record_sent(self, instance_id: int, version: int) -> None:
        self._status.record(instance_id, sync_state="syncing", last_seen=utc_now())
        logger.info("sent snapshot version %d to instance id %d", version, instance_id)

    def record_reply(self, instance: InstanceRow, reply: SyncReply) -> None:
        if reply.error is not None:
            error = reply.error[:MAX_ERROR_CHARS]
            logger.warning(
                "instance %s rejected snapshot version %d: %s", instance.name, reply.version, error
            )
            self._status.record(
                instance.id, sync_state="rejected", last_error=error, last_seen=utc_now()
            )
            return
        # The notifier contains the newest version this process has seen, from its own writes
        # and from polling. Another process's newer version shows up at the next poll.
        state = "in_sync" if reply.version >= self._store.notifier.version else "syncing"
        logger.info("instance %s applied snapshot version %d", instance.name, reply.version)
        self._status.record(
            instance.id,
            sync_state=state,
            applied_version=reply.version,
            last_error=None,
            last_seen=utc_now(),
        )

    def record_seen(self, instance_id: int) -> None:
        self._status.record(instance_id, last_seen=utc_now())

    def record_disconnected(self, instance_id: int) -> None:
        self._status.record(instance_id, sync_state="disconnected", last_seen=utc_now())

    async def flush_status(self) -> None:
        """Wait until the sync status recorded so far is written (or dropped after
        repeated failures, which are logged)."""
        await self._status.flush()

    async def close(self) -> None:
        """Stop polling and write the sync status still queued."""
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        await self._status.close()

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
