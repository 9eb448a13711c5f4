"""Snapshot content: built from the store at each change, and copied per instance with the
credentials of that instance's site."""

from __future__ import annotations

import hashlib
import logging
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from smartflow.control.store.crypto import SecretBox
from smartflow.control.store.tables import (
    CacheSettingsRow,
    ComplianceRuleRow,
    DeploymentRow,
    ModelAliasRow,
    NormalizationProfileRow,
    PinnedTuningRow,
    PolicyRow,
    PriceCatalogRow,
    ProviderRow,
    SnapshotVersionRow,
    SyncHeadRow,
    TeamRow,
    VirtualKeyRow,
)
from smartflow.core.errors import InternalError
from smartflow.sync.protocol import SNAPSHOT_FORMAT, CacheSettings, SnapshotContent, canonical_json

__all__ = [
    "PreparedVersion",
    "build_content",
    "content_sha256",
    "current_policies",
    "head_version",
    "load_version",
]

logger = logging.getLogger(__name__)

RowT = TypeVar("RowT")


async def head_version(session: AsyncSession) -> int:
    version = await session.scalar(select(SyncHeadRow.version).where(SyncHeadRow.id == 1))
    if version is None:
        raise InternalError("the sync_head row is missing; the database was not migrated")
    return version


async def load_version(session: AsyncSession, version: int) -> SnapshotVersionRow | None:
    return await session.get(SnapshotVersionRow, version)


async def current_policies(session: AsyncSession) -> list[PolicyRow]:
    """Return the newest version of each policy that is not deleted, sorted by name."""
    newest = (
        select(PolicyRow.name, func.max(PolicyRow.version).label("version"))
        .group_by(PolicyRow.name)
        .subquery()
    )
    query = (
        select(PolicyRow)
        .join(
            newest,
            (PolicyRow.name == newest.c.name) & (PolicyRow.version == newest.c.version),
        )
        .where(PolicyRow.deleted.is_(False))
        .order_by(PolicyRow.name)
    )
    return list((await session.scalars(query)).all())


async def _rows(session: AsyncSession, table: type[RowT]) -> list[RowT]:
    query = select(table).order_by(table.name)  # type: ignore[attr-defined]
    return list((await session.scalars(query)).all())


async def build_content(session: AsyncSession) -> tuple[dict[str, Any], dict[str, str]]:
    """Read the whole central configuration as snapshot content.

    Returns the content as JSON data without any credential, and each provider's
    encrypted credentials by provider name.

    Raises:
        InternalError: the stored objects do not form valid content.
    """
    providers = await _rows(session, ProviderRow)
    deployments = {row.name: row for row in await _rows(session, DeploymentRow)}
    pins = {row.name: row.spec["params"] for row in await _rows(session, PinnedTuningRow)}
    sites = {row.name: row.site for row in providers}
    models: dict[str, list[dict[str, Any]]] = {}
    for alias in await _rows(session, ModelAliasRow):
        models[alias.name] = []
        for name in alias.spec["deployments"]:
            deployment = deployments[name]
            entry = {
                "provider": deployment.provider_name,
                "model": deployment.spec["model"],
                "site": sites[deployment.provider_name],
                "pinned": pins.get(name, {}),
            }
            if deployment.spec.get("base_model"):
                entry["base_model"] = deployment.spec["base_model"]
            models[alias.name].append(entry)
    cache = await session.get(CacheSettingsRow, 1)
    prices = await session.get(PriceCatalogRow, 1)
    data = {
        "policies": [row.document for row in await current_policies(session)],
        "compliance_rules": [
            {"name": row.name, **row.spec} for row in await _rows(session, ComplianceRuleRow)
        ],
        "providers": {
            row.name: {"site": row.site, "settings": row.spec["settings"]} for row in providers
        },
        "models": models,
        "keys": [
            {"name": row.name, "sha256": row.sha256, "team": row.team, **row.spec}
            for row in await _rows(session, VirtualKeyRow)
        ],
        "teams": [{"name": row.name, **row.spec} for row in await _rows(session, TeamRow)],
        "normalization_profiles": [
            {"name": row.name, "document": row.spec["document"]}
            for row in await _rows(session, NormalizationProfileRow)
        ],
        "cache": cache.spec if cache is not None else CacheSettings().model_dump(),
        "prices": {"version": prices.version, **prices.spec} if prices is not None else None,
    }
    try:
        content = SnapshotContent.model_validate(data)
    except ValidationError as exc:
        logger.error("stored objects do not form valid snapshot content: %s", exc)
        raise InternalError(f"stored objects do not form valid snapshot content: {exc}") from exc
    credentials = {row.name: row.credentials for row in providers if row.credentials}
    return content.model_dump(mode="json", by_alias=True), credentials


def content_sha256(content: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(content)).hexdigest()


class PreparedVersion:
    """One snapshot version made ready to send: its content serialised once per site.

    Each instance still gets its own signature, because the signed snapshot names the
    instance and its site and an instance rejects a copy made for another. The canonical
    content, which is most of the bytes, is serialised once per site. Only the short
    envelope and the Ed25519 signature are made per instance.
    """

    def __init__(self, row: SnapshotVersionRow, box: SecretBox) -> None:
        self.version = row.version
        self._created_at = row.created_at.isoformat()
        self._content = row.content
        self._credentials = dict(row.credentials)
        self._box = box
        self._by_site: dict[str, orjson.Fragment] = {}

    def site_content(self, site: str) -> orjson.Fragment:
        """Return the canonical JSON of the content for ``site``: only providers at
        ``site`` carry their decrypted credentials.

        Raises:
            SecretDecryptionError: stored credentials do not decrypt with the configured keys.
        """
        cached = self._by_site.get(site)
        if cached is not None:
            return cached
        providers = dict(self._content["providers"])
        for name, provider in providers.items():
            token = self._credentials.get(name)
            if provider["site"] == site and token:
                providers[name] = {**provider, "credentials": self._box.decrypt(token)}
        content = {**self._content, "providers": providers}
        fragment = orjson.Fragment(canonical_json(content))
        self._by_site[site] = fragment
        return fragment

    def canonical_snapshot(self, instance: str, site: str) -> bytes:
        """Return the canonical JSON of the snapshot for one instance: the bytes it signs."""
        return canonical_json(
            {
                "format": SNAPSHOT_FORMAT,
                "version": self.version,
                "created_at": self._created_at,
                "instance": instance,
                "site": site,
                "content": self.site_content(site),
            }
        )
