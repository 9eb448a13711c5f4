"""The audit log: who changed what and when, with the object before and after, secrets masked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from smartflow.control.services.context import Actor
from smartflow.control.store.tables import AuditRow

__all__ = ["MASK", "SECRET_FIELDS", "list_audit", "mask_secrets", "record_audit"]

MASK = "***"

SECRET_FIELDS = frozenset(
    {
        "api_key",
        "service_account_json",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "credentials",
        "credential",
        "token",
        "key",
        "secret",
        "password",
        "private_key",
    }
)
"""Field names whose values never enter the audit log, at any depth."""


def mask_secrets(data: Any) -> Any:
    """Return a copy of JSON data with the value of every field in SECRET_FIELDS masked.

    A masked mapping keeps its field names, so the log still shows which secrets changed.
    """
    if isinstance(data, Mapping):
        return {str(key): _mask_field(str(key), value) for key, value in data.items()}
    if isinstance(data, list):
        return [mask_secrets(item) for item in data]
    return data


def _mask_field(name: str, value: Any) -> Any:
    if name.lower() not in SECRET_FIELDS or value is None:
        return mask_secrets(value)
    if isinstance(value, Mapping):
        return {str(key): MASK for key, item in value.items() if item is not None}
    return MASK


def record_audit(
    session: AsyncSession,
    actor: Actor,
    action: str,
    object_type: str,
    object_name: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> None:
    """Add one audit entry to the session's transaction, so it commits with the change."""
    session.add(
        AuditRow(
            actor=actor.name,
            actor_kind=actor.kind,
            action=action,
            object_type=object_type,
            object_name=object_name,
            before=_prepare(before),
            after=_prepare(after),
        )
    )


def _prepare(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if data is None:
        return None
    masked: dict[str, Any] = mask_secrets(to_jsonable_python(dict(data)))
    return masked


async def list_audit(
    session: AsyncSession,
    *,
    limit: int,
    before_id: int | None = None,
    object_type: str | None = None,
    object_name: str | None = None,
) -> list[AuditRow]:
    """Return up to ``limit`` entries, newest first, older than entry ``before_id`` if given."""
    query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(AuditRow.id < before_id)
    if object_type is not None:
        query = query.where(AuditRow.object_type == object_type)
    if object_name is not None:
        query = query.where(AuditRow.object_name == object_name)
    return list((await session.scalars(query)).all())
