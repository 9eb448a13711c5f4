"""Store and service tests, each run on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, select, text, update
from sqlalchemy.exc import IntegrityError

from smartflow.control.models import (
    DeploymentIn,
    EnrollIn,
    EnrollmentTokenIn,
    ModelAliasIn,
    ProviderIn,
    TeamIn,
    VirtualKeyIn,
)
from smartflow.control.services.context import Actor
from smartflow.control.services.errors import Conflict, ObjectInvalid
from smartflow.control.services.instances import MAX_ERROR_CHARS
from smartflow.control.services.kinds import by_object_type
from smartflow.control.services.plane import ControlPlane
from smartflow.control.services.snapshots import head_version
from smartflow.control.store.crypto import SecretBox, SecretDecryptionError
from smartflow.control.store.database import alembic_config
from smartflow.control.store.tables import (
    AuditRow,
    Base,
    DeploymentRow,
    EnrollmentTokenRow,
    InstanceRow,
    ProviderRow,
    SnapshotVersionRow,
    utc_now,
)
from smartflow.core.errors import AuthenticationError
from smartflow.policy.documents import PolicyDocument
from smartflow.sync.protocol import SyncReply
from tests.control.conftest import make_settings

ADMIN = Actor(name="tester", kind="admin_token", role="admin")
SECRET = "sk-fake-store-secret-0123456789"

PROVIDERS = by_object_type("provider")
DEPLOYMENTS = by_object_type("deployment")
ALIASES = by_object_type("model_alias")
TEAMS = by_object_type("team")
KEYS = by_object_type("virtual_key")


def policy(name: str, action: str = "redact") -> dict[str, Any]:
    return {
        "apiVersion": "smartflow/v1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"entities": [{"type": "EMAIL", "action": action}]},
    }


def provider(site: str = "onprem", secret: str | None = SECRET) -> ProviderIn:
    credentials = {"api_key": secret} if secret else None
    return ProviderIn.model_validate(
        {
            "site": site,
            "settings": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"},
            "credentials": credentials,
        }
    )


@pytest.fixture
async def plane(database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    opened = await ControlPlane.open(
        make_settings(tmp_path / "state", database_url), lambda _: False
    )
    try:
        yield opened
    finally:
        await opened.close()


async def head(plane: ControlPlane) -> int:
    async with plane.store.read() as session:
        return await head_version(session)


def _schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_match_tables(plane: ControlPlane) -> None:
    async with plane.database.engine.connect() as connection:
        differences = await connection.run_sync(_schema_differences)
    assert differences == []


def _downgrade_and_upgrade(connection: Connection) -> tuple[list[str], list[str]]:
    command.downgrade(alembic_config(connection), "base")
    emptied = inspect(connection).get_table_names()
    command.upgrade(alembic_config(connection), "head")
    return emptied, inspect(connection).get_table_names()


async def test_migrations_downgrade_and_upgrade(plane: ControlPlane) -> None:
    async with plane.database.engine.begin() as connection:
        emptied, restored = await connection.run_sync(_downgrade_and_upgrade)
    assert emptied == ["alembic_version"]
    assert sorted(restored) == sorted([*Base.metadata.tables, "alembic_version"])


async def test_reopen_keeps_data(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state", database_url)
    first = await ControlPlane.open(settings, lambda _: False)
    await first.objects.put(TEAMS, "research", TeamIn(description="R&D"), ADMIN)
    version = await head(first)
    await first.close()
    second = await ControlPlane.open(settings, lambda _: False)
    try:
        team = await second.objects.get(TEAMS, "research")
        assert team.description == "R&D"  # type: ignore[attr-defined]
        assert await head(second) == version
    finally:
        await second.close()


async def test_first_start_makes_version_one(plane: ControlPlane) -> None:
    assert await head(plane) == 1
    detail = await plane.history.snapshot_version(1)
    assert detail.content.providers == {}
    assert detail.actor == "system"


async def test_each_change_makes_a_version(plane: ControlPlane) -> None:
    start = await head(plane)
    await plane.objects.put(PROVIDERS, "oa", provider(), ADMIN)
    await plane.objects.put(
        DEPLOYMENTS, "oa-gpt", DeploymentIn(provider="oa", model="gpt-4o"), ADMIN
    )
    await plane.objects.put(ALIASES, "gpt-4o", ModelAliasIn(deployments=["oa-gpt"]), ADMIN)
    assert await head(plane) == start + 3
    detail = await plane.history.snapshot_version(start + 3)
    deployments = detail.content.models["gpt-4o"]
    assert [d.model for d in deployments] == ["gpt-4o"]
    assert deployments[0].site == "onprem"
    assert "create model_alias gpt-4o" in detail.summary


async def test_unchanged_put_makes_no_version(plane: ControlPlane) -> None:
    await plane.objects.put(TEAMS, "ops", TeamIn(description="Ops"), ADMIN)
    version = await head(plane)
    result = await plane.objects.put(TEAMS, "ops", TeamIn(description="Ops"), ADMIN)
    assert result.created is False
    assert await head(plane) == version


async def test_credentials_encrypted_at_rest(plane: ControlPlane) -> None:
    await plane.objects.put(PROVIDERS, "oa", provider(), ADMIN)
    async with plane.store.read() as session:
        stored = await session.scalar(select(ProviderRow.credentials))
        versions = (await session.scalars(select(SnapshotVersionRow))).all()
        audit = (await session.scalars(select(AuditRow))).all()
    assert stored is not None
    assert SECRET not in stored
    assert plane.box.decrypt(stored) == {"api_key": SECRET}
    for version in versions:
        assert SECRET not in str(version.content)
        assert SECRET not in str(version.credentials)
    for entry in audit:
        assert SECRET not in str(entry.before)
        assert SECRET not in str(entry.after)


async def test_wrong_secret_key_cannot_decrypt(plane: ControlPlane) -> None:
    await plane.objects.put(PROVIDERS, "oa", provider(), ADMIN)
    async with plane.store.read() as session:
        stored = await session.scalar(select(ProviderRow.credentials))
    assert stored is not None
    other = SecretBox([b"V2hhdCBpcyB0aGlzPyBBIGRpZmZlcmVudCBrZXkhISE="])
    with pytest.raises(SecretDecryptionError):
        other.decrypt(stored)


async def test_keeping_credentials_on_update(plane: ControlPlane) -> None:
    await plane.objects.put(PROVIDERS, "oa", provider(), ADMIN)
    await plane.objects.put(PROVIDERS, "oa", provider(site="cloud", secret=None), ADMIN)
    view = await plane.objects.get(PROVIDERS, "oa")
    assert view.credentials_set == ["api_key"]  # type: ignore[attr-defined]
    assert view.site == "cloud"  # type: ignore[attr-defined]


async def test_policy_versions_and_tombstone(plane: ControlPlane) -> None:
    first, created = await plane.policies.put("pii", policy("pii"), ADMIN)
    assert created
    assert first.version == 1
    second, created = await plane.policies.put("pii", policy("pii", "block"), ADMIN)
    assert created
    assert second.version == 2
    _, created = await plane.policies.put("pii", policy("pii", "block"), ADMIN)
    assert not created
    await plane.policies.delete("pii", ADMIN)
    assert await plane.policies.current() == []
    versions = await plane.policies.versions("pii")
    assert [v.version for v in versions] == [1, 2, 3]
    assert versions[-1].deleted
    assert versions[-1].document is None
    third, _ = await plane.policies.put("pii", policy("pii"), ADMIN)
    assert third.version == 4


async def test_policy_in_snapshot_content(plane: ControlPlane) -> None:
    await plane.policies.put("pii", policy("pii"), ADMIN)
    detail = await plane.history.snapshot_version(await head(plane))
    assert [document.name for document in detail.content.policies] == ["pii"]
    assert isinstance(detail.content.policies[0], PolicyDocument)


async def test_delete_referenced_provider_conflicts(plane: ControlPlane) -> None:
    await plane.objects.put(PROVIDERS, "oa", provider(), ADMIN)
    await plane.objects.put(
        DEPLOYMENTS, "oa-gpt", DeploymentIn(provider="oa", model="gpt-4o"), ADMIN
    )
    with pytest.raises(Conflict, match="deployment oa-gpt"):
        await plane.objects.delete(PROVIDERS, "oa", ADMIN)
    await plane.objects.delete(DEPLOYMENTS, "oa-gpt", ADMIN)
    await plane.objects.delete(PROVIDERS, "oa", ADMIN)
    assert await plane.objects.list_all(PROVIDERS) == []


async def test_foreign_key_enforced_by_database(plane: ControlPlane) -> None:
    with pytest.raises(IntegrityError):
        async with plane.database.sessions() as session, session.begin():
            session.add(DeploymentRow(name="orphan", provider_name="missing", spec={}))


async def test_unknown_references_are_invalid(plane: ControlPlane) -> None:
    with pytest.raises(ObjectInvalid, match="no provider named 'missing'"):
        await plane.objects.put(
            DEPLOYMENTS, "d", DeploymentIn(provider="missing", model="m"), ADMIN
        )
    with pytest.raises(ObjectInvalid, match="no team named 'ghosts'"):
        await plane.objects.put(KEYS, "k", VirtualKeyIn(team="ghosts"), ADMIN)


async def test_concurrent_writes_make_contiguous_versions(plane: ControlPlane) -> None:
    start = await head(plane)
    names = [f"team-{index}" for index in range(12)]
    await asyncio.gather(*(plane.objects.put(TEAMS, name, TeamIn(), ADMIN) for name in names))
    assert await head(plane) == start + len(names)
    versions = await plane.history.snapshot_versions(limit=len(names))
    assert sorted(v.version for v in versions) == list(range(start + 1, start + len(names) + 1))
    newest = await plane.history.snapshot_version(start + len(names))
    assert sorted(team.name for team in newest.content.teams) == sorted(names)


async def test_enrollment_token_used_once_under_race(plane: ControlPlane) -> None:
    created = await plane.access.create_enrollment_token(EnrollmentTokenIn(site="a"), ADMIN)
    attempts = [
        plane.access.enroll(EnrollIn(token=created.token, name=f"inst-{index}", site="a"))
        for index in range(5)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    enrolled = [result for result in results if not isinstance(result, BaseException)]
    failures = [result for result in results if isinstance(result, BaseException)]
    assert len(enrolled) == 1
    assert all(isinstance(failure, AuthenticationError) for failure in failures)


async def test_sync_status_batched_in_order(plane: ControlPlane) -> None:
    names = ["acked", "rejected", "gone"]
    for name in names:
        created = await plane.access.create_enrollment_token(EnrollmentTokenIn(site="a"), ADMIN)
        await plane.access.enroll(EnrollIn(token=created.token, name=name, site="a"))
    async with plane.store.read() as session:
        rows = {row.name: row for row in (await session.scalars(select(InstanceRow))).all()}
    version = await head(plane)
    for name in names:
        plane.instances.record_sent(rows[name].id, version)
    # Queued after "sent" and written in the same batch: the later values must win.
    plane.instances.record_reply(rows["acked"], SyncReply(version=version))
    long_error = "x" * (MAX_ERROR_CHARS + 10)
    plane.instances.record_reply(rows["rejected"], SyncReply(version=version, error=long_error))
    plane.instances.record_disconnected(rows["gone"].id)
    plane.instances.record_seen(max(row.id for row in rows.values()) + 1000)
    await plane.instances.flush_status()

    acked = await plane.instances.get("acked")
    assert acked.sync_state == "in_sync"
    assert acked.applied_version == version
    assert acked.last_error is None
    assert acked.last_seen is not None
    rejected = await plane.instances.get("rejected")
    assert rejected.sync_state == "rejected"
    assert rejected.applied_version is None
    assert rejected.last_error == "x" * MAX_ERROR_CHARS
    gone = await plane.instances.get("gone")
    assert gone.sync_state == "disconnected"


async def test_expired_enrollment_token_rejected(plane: ControlPlane) -> None:
    created = await plane.access.create_enrollment_token(EnrollmentTokenIn(), ADMIN)
    async with plane.store.write_status() as session:
        expired = utc_now() - timedelta(seconds=1)
        await session.execute(update(EnrollmentTokenRow).values(expires_at=expired))
    with pytest.raises(AuthenticationError, match="expired"):
        await plane.access.enroll(EnrollIn(token=created.token, name="late", site="a"))
    tokens = await plane.access.list_enrollment_tokens()
    assert tokens[0].state == "expired"


async def test_timestamps_are_utc_aware(plane: ControlPlane) -> None:
    await plane.objects.put(TEAMS, "t", TeamIn(), ADMIN)
    team = await plane.objects.get(TEAMS, "t")
    created_at = team.created_at  # type: ignore[attr-defined]
    assert created_at.tzinfo is not None
    assert created_at.utcoffset() == timedelta(0)


async def test_snapshot_retention_prunes_old_versions(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state", database_url, snapshot_retention=3)
    opened = await ControlPlane.open(settings, lambda _: False)
    try:
        for index in range(5):
            await opened.objects.put(TEAMS, f"t{index}", TeamIn(), ADMIN)
        versions = await opened.history.snapshot_versions(limit=100)
        assert [v.version for v in versions] == [6, 5, 4]
    finally:
        await opened.close()


async def test_audit_entry_per_change(plane: ControlPlane) -> None:
    await plane.objects.put(PROVIDERS, "oa", provider(), ADMIN)
    await plane.objects.put(PROVIDERS, "oa", provider(secret="sk-fake-rotated-0000"), ADMIN)
    async with plane.store.read() as session:
        rows = (
            await session.scalars(
                select(AuditRow).where(AuditRow.object_type == "provider").order_by(AuditRow.id)
            )
        ).all()
    assert [row.action for row in rows] == ["create", "update"]
    assert rows[1].before is not None
    assert rows[1].after is not None
    assert rows[1].actor == "tester"
    assert "sk-fake-rotated-0000" not in str(rows[1].after)


async def test_database_is_postgres_or_sqlite(plane: ControlPlane, backend: str) -> None:
    async with plane.database.engine.connect() as connection:
        if backend == "postgresql":
            version = await connection.scalar(text("SELECT version()"))
            assert "PostgreSQL" in str(version)
        else:
            mode = await connection.scalar(text("PRAGMA foreign_keys"))
            assert mode == 1
