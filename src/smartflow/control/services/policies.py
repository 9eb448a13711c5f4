"""Versioned policy documents: each write of a policy adds a version; deletion adds a tombstone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from smartflow.control.models import PolicyOut, PolicyVersionOut
from smartflow.control.services.context import Actor
from smartflow.control.services.errors import Issue, ObjectInvalid
from smartflow.control.services.snapshots import current_policies
from smartflow.control.services.transactions import Store, WriteTransaction
from smartflow.control.store.tables import PolicyRow, utc_now
from smartflow.core.errors import NotFound
from smartflow.policy.documents import PolicyDocument, PolicyValidationError, validate_documents
from smartflow.policy.engine import compile_policies
from smartflow.sync.protocol import COMPLIANCE_DOCUMENT

__all__ = ["PolicyService"]

logger = logging.getLogger(__name__)


def _issues(exc: PolicyValidationError) -> list[Issue]:
    return [Issue(issue.path, issue.message, issue.document) for issue in exc.issues]


def _compile(documents: Sequence[PolicyDocument]) -> None:
    compile_policies(documents)


class PolicyService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def current(self) -> list[PolicyOut]:
        async with self._store.read() as session:
            return [_out(row) for row in await current_policies(session)]

    async def get(self, name: str) -> PolicyOut:
        async with self._store.read() as session:
            row = await self._newest(session, name)
        if row is None or row.deleted:
            raise NotFound(f"policy {name!r} not found; list policies with GET /v1/policies")
        return _out(row)

    async def versions(self, name: str) -> list[PolicyVersionOut]:
        async with self._store.read() as session:
            query = select(PolicyRow).where(PolicyRow.name == name).order_by(PolicyRow.version)
            rows = (await session.scalars(query)).all()
        if not rows:
            raise NotFound(f"policy {name!r} has no versions; list policies with GET /v1/policies")
        return [
            PolicyVersionOut(
                name=row.name,
                version=row.version,
                created_at=row.created_at,
                author=row.author,
                deleted=row.deleted,
                document=row.document,
            )
            for row in rows
        ]

    async def put(self, name: str, data: Any, actor: Actor) -> tuple[PolicyOut, bool]:
        """Validate a policy document and store it as the next version of policy ``name``.

        The document must compile together with every other current policy, as an
        instance compiles them. Returns the stored version and whether it is new; a
        document equal to the current version is not stored again.

        Raises:
            ObjectInvalid: the document is invalid, named differently, or conflicts with
                another current policy.
        """
        document = self._validate(name, data)
        async with self._store.write(actor) as tx:
            return await self._put_document(tx, name, document)

    async def put_in(self, tx: WriteTransaction, name: str, data: Any) -> tuple[PolicyOut, bool]:
        """Store policy ``name`` within the open write ``tx``, so several changes make one
        snapshot version; see :meth:`put`."""
        return await self._put_document(tx, name, self._validate(name, data))

    async def _put_document(
        self, tx: WriteTransaction, name: str, document: PolicyDocument
    ) -> tuple[PolicyOut, bool]:
        stored = document.to_dict()
        newest = await self._newest(tx.session, name)
        if newest is not None and not newest.deleted and newest.document == stored:
            return _out(newest), False
        others = [
            PolicyDocument.model_validate(row.document)
            for row in await current_policies(tx.session)
            if row.name != name
        ]
        try:
            await asyncio.to_thread(_compile, [*others, document])
        except PolicyValidationError as exc:
            raise ObjectInvalid(_issues(exc)) from None
        row = PolicyRow(
            name=name,
            version=(newest.version if newest is not None else 0) + 1,
            document=stored,
            deleted=False,
            author=tx.actor.name,
            created_at=utc_now(),
        )
        tx.session.add(row)
        before = newest.document if newest is not None and not newest.deleted else None
        tx.audit("update" if before else "create", "policy", name, before, stored)
        tx.changed(f"apply policy {name} version {row.version}")
        return _out(row), True

    async def delete(self, name: str, actor: Actor) -> None:
        async with self._store.write(actor) as tx:
            newest = await self._newest(tx.session, name)
            if newest is None or newest.deleted:
                raise NotFound(f"policy {name!r} not found; list policies with GET /v1/policies")
            tx.session.add(
                PolicyRow(
                    name=name,
                    version=newest.version + 1,
                    document=None,
                    deleted=True,
                    author=actor.name,
                    created_at=utc_now(),
                )
            )
            tx.audit("delete", "policy", name, newest.document, None)
            tx.changed(f"delete policy {name}")

    @staticmethod
    def _validate(name: str, data: Any) -> PolicyDocument:
        try:
            documents = validate_documents([data])
        except PolicyValidationError as exc:
            raise ObjectInvalid(_issues(exc)) from None
        document = documents[0]
        if document.name != name:
            raise ObjectInvalid.one(
                "metadata.name",
                f"metadata.name is {document.name!r} but the URL names {name!r}; make them equal",
            )
        if name == COMPLIANCE_DOCUMENT:
            raise ObjectInvalid.one(
                "metadata.name",
                f"{COMPLIANCE_DOCUMENT!r} is reserved for the central compliance rules; "
                "choose another name",
            )
        return document

    @staticmethod
    async def _newest(session: Any, name: str) -> PolicyRow | None:
        latest = select(func.max(PolicyRow.version)).where(PolicyRow.name == name)
        query = select(PolicyRow).where(
            PolicyRow.name == name, PolicyRow.version == latest.scalar_subquery()
        )
        row: PolicyRow | None = await session.scalar(query)
        return row


def _out(row: PolicyRow) -> PolicyOut:
    return PolicyOut(
        name=row.name,
        version=row.version,
        created_at=row.created_at,
        author=row.author,
        document=row.document,
    )
