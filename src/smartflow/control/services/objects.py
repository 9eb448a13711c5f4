"""Create, read, replace and delete the named central objects, each change audited."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from smartflow.control.services.context import Actor, Role
from smartflow.control.services.errors import Conflict, ObjectInvalid
from smartflow.control.services.transactions import Store, WriteTransaction
from smartflow.control.store.crypto import SecretBox
from smartflow.control.store.tables import CacheSettingsRow, NamedSpecRow, utc_now
from smartflow.core.errors import NotFound
from smartflow.sync.protocol import NAME_PATTERN, CacheSettings

__all__ = ["Kind", "ObjectService", "Prepared", "PutResult"]

logger = logging.getLogger(__name__)

RowT = TypeVar("RowT", bound=NamedSpecRow)


@dataclass(frozen=True, slots=True)
class Prepared:
    """The result of validating a write: the JSON spec, other column values, and
    response-only fields (such as a generated key) that are returned once and never stored
    or audited."""

    spec: dict[str, Any]
    columns: dict[str, Any] = field(default_factory=dict)
    once: dict[str, Any] = field(default_factory=dict)


Prepare = Callable[[WriteTransaction, SecretBox, str, Any, Any], Awaitable[Prepared]]
View = Callable[[AsyncSession, Any], Awaitable[dict[str, Any]]]
References = Callable[[AsyncSession, str], Awaitable[list[str]]]


async def _no_references(_session: AsyncSession, _name: str) -> list[str]:
    return []


@dataclass(frozen=True)
class Kind(Generic[RowT]):
    """One kind of named central object: its table, API models, role and rules."""

    object_type: str
    """Name in the audit log and snapshot summaries, such as ``provider``."""
    path: str
    """Collection path segment under /v1, such as ``providers``."""
    title: str
    row: type[RowT]
    body: type[BaseModel]
    view_model: type[BaseModel]
    write_role: Role
    prepare: Prepare
    view: View
    references: References = _no_references
    """Names of objects that refer to the named one; a deletion with any is a conflict."""
    name_pattern: str = NAME_PATTERN


@dataclass(frozen=True, slots=True)
class PutResult:
    view: BaseModel
    created: bool


class ObjectService:
    def __init__(self, store: Store, box: SecretBox) -> None:
        self._store = store
        self._box = box

    async def list_all(self, kind: Kind[Any]) -> list[BaseModel]:
        async with self._store.read() as session:
            rows = (await session.scalars(select(kind.row).order_by(kind.row.name))).all()
            return [kind.view_model.model_validate(await kind.view(session, r)) for r in rows]

    async def get(self, kind: Kind[Any], name: str) -> BaseModel:
        async with self._store.read() as session:
            row = await self._find(session, kind, name)
            return kind.view_model.model_validate(await kind.view(session, row))

    async def put(self, kind: Kind[Any], name: str, body: BaseModel, actor: Actor) -> PutResult:
        """Create or replace the object ``name``; an unchanged object is not written again.

        Raises:
            ObjectInvalid: the name or body is invalid, or refers to a missing object.
            Conflict: a concurrent change or a uniqueness rule prevents the write.
        """
        async with self._store.write(actor) as tx:
            return await self.put_in(tx, kind, name, body)

    async def put_in(
        self, tx: WriteTransaction, kind: Kind[Any], name: str, body: BaseModel
    ) -> PutResult:
        """Create or replace the object ``name`` within the open write ``tx``, so several
        changes make one snapshot version; see :meth:`put`."""
        if not re.fullmatch(kind.name_pattern, name):
            raise ObjectInvalid.one("name", f"invalid {kind.title} name {name!r}")
        existing = await tx.session.scalar(select(kind.row).where(kind.row.name == name))
        prepared = await kind.prepare(tx, self._box, name, body, existing)
        if existing is not None and _unchanged(existing, prepared):
            unchanged = await kind.view(tx.session, existing)
            return PutResult(kind.view_model.model_validate(unchanged), created=False)
        before = await kind.view(tx.session, existing) if existing is not None else None
        row = existing if existing is not None else kind.row(name=name)
        row.spec = prepared.spec
        for column, value in prepared.columns.items():
            setattr(row, column, value)
        row.updated_at = utc_now()
        if existing is None:
            tx.session.add(row)
        await tx.session.flush()
        after = await kind.view(tx.session, row)
        action = "create" if existing is None else "update"
        tx.audit(action, kind.object_type, name, before, after)
        tx.changed(f"{action} {kind.object_type} {name}")
        view = kind.view_model.model_validate({**after, **prepared.once})
        return PutResult(view, created=existing is None)

    async def delete(self, kind: Kind[Any], name: str, actor: Actor) -> None:
        """Delete the object ``name``.

        Raises:
            NotFound: no such object.
            Conflict: other objects refer to it.
        """
        async with self._store.write(actor) as tx:
            row = await self._find(tx.session, kind, name)
            users = await kind.references(tx.session, name)
            if users:
                raise Conflict(
                    f"{kind.title} {name!r} is used by {', '.join(users)}; change or delete "
                    "those first"
                )
            before = await kind.view(tx.session, row)
            await tx.session.delete(row)
            tx.audit("delete", kind.object_type, name, before, None)
            tx.changed(f"delete {kind.object_type} {name}")

    async def get_cache(self) -> CacheSettings:
        async with self._store.read() as session:
            row = await session.get(CacheSettingsRow, 1)
            return CacheSettings.model_validate(row.spec) if row else CacheSettings()

    async def put_cache(self, settings: CacheSettings, actor: Actor) -> CacheSettings:
        async with self._store.write(actor) as tx:
            row = await tx.session.get(CacheSettingsRow, 1)
            before = row.spec if row is not None else CacheSettings().model_dump()
            after = settings.model_dump(mode="json")
            if before == after:
                return settings
            if row is None:
                tx.session.add(CacheSettingsRow(id=1, spec=after))
            else:
                row.spec = after
                row.updated_at = utc_now()
            tx.audit("update", "cache_settings", "cache", before, after)
            tx.changed("update cache settings")
        return settings

    @staticmethod
    async def _find(session: AsyncSession, kind: Kind[Any], name: str) -> Any:
        row = await session.scalar(select(kind.row).where(kind.row.name == name))
        if row is None:
            raise NotFound(f"{kind.title} {name!r} not found; list them with GET /v1/{kind.path}")
        return row


def _unchanged(row: NamedSpecRow, prepared: Prepared) -> bool:
    if row.spec != prepared.spec or prepared.once:
        return False
    return all(getattr(row, column) == value for column, value in prepared.columns.items())
