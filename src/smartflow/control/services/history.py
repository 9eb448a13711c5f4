"""Read-only history: the audit log and the stored snapshot versions."""

from __future__ import annotations

from sqlalchemy import select

from smartflow.control.models import (
    AuditEntryOut,
    AuditPage,
    AuditQuery,
    SnapshotVersionDetail,
    SnapshotVersionOut,
)
from smartflow.control.services.audit import list_audit
from smartflow.control.services.snapshots import load_version
from smartflow.control.services.transactions import Store
from smartflow.control.store.tables import SnapshotVersionRow
from smartflow.core.errors import NotFound

__all__ = ["HistoryService"]


class HistoryService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def audit(self, query: AuditQuery) -> AuditPage:
        async with self._store.read() as session:
            rows = await list_audit(
                session,
                limit=query.limit,
                before_id=query.before,
                object_type=query.object_type,
                object_name=query.object_name,
            )
        entries = [AuditEntryOut.model_validate(row, from_attributes=True) for row in rows]
        next_before = entries[-1].id if len(entries) == query.limit else None
        return AuditPage(entries=entries, next_before=next_before)

    async def snapshot_versions(self, limit: int) -> list[SnapshotVersionOut]:
        async with self._store.read() as session:
            query = (
                select(SnapshotVersionRow).order_by(SnapshotVersionRow.version.desc()).limit(limit)
            )
            rows = (await session.scalars(query)).all()
        return [SnapshotVersionOut.model_validate(row, from_attributes=True) for row in rows]

    async def snapshot_version(self, version: int) -> SnapshotVersionDetail:
        async with self._store.read() as session:
            row = await load_version(session, version)
        if row is None:
            raise NotFound(
                f"snapshot version {version} not found; the store keeps only recent versions, "
                "list them with GET /v1/snapshots"
            )
        return SnapshotVersionDetail.model_validate(row, from_attributes=True)
