"""The kinds of named central objects: how each is validated, stored and shown."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from smartflow.auth.keys import generate_key, hash_key
from smartflow.control.models import (
    MODEL_NAME_PATTERN,
    ComplianceRuleOut,
    DeploymentIn,
    DeploymentOut,
    ModelAliasIn,
    ModelAliasOut,
    NormalizationProfileIn,
    NormalizationProfileOut,
    PinnedTuningIn,
    PinnedTuningOut,
    ProviderIn,
    ProviderOut,
    TeamIn,
    TeamOut,
    VirtualKeyIn,
    VirtualKeyOut,
)
from smartflow.control.services.errors import Conflict, Issue, ObjectInvalid
from smartflow.control.services.objects import Kind, Prepared
from smartflow.control.services.transactions import WriteTransaction
from smartflow.control.store.crypto import SecretBox
from smartflow.control.store.tables import (
    ComplianceRuleRow,
    DeploymentRow,
    ModelAliasRow,
    NormalizationProfileRow,
    PinnedTuningRow,
    ProviderRow,
    TeamRow,
    VirtualKeyRow,
)
from smartflow.core.errors import ConfigError
from smartflow.normalize.loader import load_profiles
from smartflow.policy.documents import ComplianceRule
from smartflow.sync.protocol import ProviderCredentials, credential_issues

__all__ = ["KINDS", "by_object_type"]

DEFAULT_TEAM = "default"
"""The team a key belongs to without naming one; it needs no team object."""


def _timestamps(row: Any) -> dict[str, Any]:
    return {"created_at": row.created_at, "updated_at": row.updated_at}


# --- compliance rules -----------------------------------------------------------------


async def _prepare_rule(
    _tx: WriteTransaction, _box: SecretBox, _name: str, body: ComplianceRule, _row: Any
) -> Prepared:
    return Prepared(spec=body.model_dump(mode="json"))


async def _view_rule(_session: AsyncSession, row: ComplianceRuleRow) -> dict[str, Any]:
    return {"name": row.name, "rule": row.spec, **_timestamps(row)}


# --- providers ------------------------------------------------------------------------


async def _prepare_provider(
    _tx: WriteTransaction, box: SecretBox, _name: str, body: ProviderIn, row: ProviderRow | None
) -> Prepared:
    settings = body.settings.model_dump(mode="json", exclude_unset=True)
    columns: dict[str, Any] = {"site": body.site}
    if body.credentials is not None:
        credentials = body.credentials
        columns["credentials"] = (
            box.encrypt(credentials.revealed()) if credentials.names() else None
        )
    elif row is not None and row.credentials:
        credentials = ProviderCredentials.model_validate(box.decrypt(row.credentials))
    else:
        credentials = ProviderCredentials()
    issues = credential_issues(body.settings.type, credentials)
    if issues:
        raise ObjectInvalid([Issue("credentials", message) for message in issues])
    spec = {"settings": settings, "credentials_set": credentials.names()}
    return Prepared(spec=spec, columns=columns)


async def _view_provider(_session: AsyncSession, row: ProviderRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "site": row.site,
        "settings": row.spec["settings"],
        "credentials_set": row.spec["credentials_set"],
        **_timestamps(row),
    }


async def _provider_users(session: AsyncSession, name: str) -> list[str]:
    query = select(DeploymentRow.name).where(DeploymentRow.provider_name == name)
    return [f"deployment {user}" for user in (await session.scalars(query)).all()]


# --- deployments ----------------------------------------------------------------------


async def _prepare_deployment(
    tx: WriteTransaction, _box: SecretBox, _name: str, body: DeploymentIn, _row: Any
) -> Prepared:
    provider = await tx.session.scalar(select(ProviderRow).where(ProviderRow.name == body.provider))
    if provider is None:
        raise ObjectInvalid.one("provider", f"no provider named {body.provider!r}; create it first")
    spec = {"model": body.model, "base_model": body.base_model}
    return Prepared(spec=spec, columns={"provider_name": body.provider})


async def _view_deployment(session: AsyncSession, row: DeploymentRow) -> dict[str, Any]:
    site = await session.scalar(
        select(ProviderRow.site).where(ProviderRow.name == row.provider_name)
    )
    return {
        "name": row.name,
        "provider": row.provider_name,
        "site": site or "",
        "model": row.spec["model"],
        "base_model": row.spec.get("base_model"),
        **_timestamps(row),
    }


async def _deployment_users(session: AsyncSession, name: str) -> list[str]:
    users = [
        f"model alias {alias.name}"
        for alias in (await session.scalars(select(ModelAliasRow))).all()
        if name in alias.spec["deployments"]
    ]
    tuning = await session.scalar(select(PinnedTuningRow.name).where(PinnedTuningRow.name == name))
    if tuning is not None:
        users.append(f"pinned tuning {tuning}")
    return users


# --- model aliases --------------------------------------------------------------------


async def _prepare_alias(
    tx: WriteTransaction, _box: SecretBox, _name: str, body: ModelAliasIn, _row: Any
) -> Prepared:
    query = select(DeploymentRow.name).where(DeploymentRow.name.in_(body.deployments))
    known = set((await tx.session.scalars(query)).all())
    issues = [
        Issue(f"deployments[{index}]", f"no deployment named {name!r}; create it first")
        for index, name in enumerate(body.deployments)
        if name not in known
    ]
    if issues:
        raise ObjectInvalid(issues)
    return Prepared(spec={"deployments": list(body.deployments)})


async def _view_alias(_session: AsyncSession, row: ModelAliasRow) -> dict[str, Any]:
    return {"name": row.name, "deployments": row.spec["deployments"], **_timestamps(row)}


# --- pinned tunings -------------------------------------------------------------------


async def _prepare_tuning(
    tx: WriteTransaction, _box: SecretBox, name: str, body: PinnedTuningIn, _row: Any
) -> Prepared:
    deployment = await tx.session.scalar(select(DeploymentRow.id).where(DeploymentRow.name == name))
    if deployment is None:
        raise ObjectInvalid.one(
            "name", f"no deployment named {name!r}; a pinned tuning is named after its deployment"
        )
    return Prepared(spec={"params": body.params})


async def _view_tuning(_session: AsyncSession, row: PinnedTuningRow) -> dict[str, Any]:
    return {"name": row.name, "params": row.spec["params"], **_timestamps(row)}


# --- normalisation profiles -----------------------------------------------------------


async def _prepare_profile(
    tx: WriteTransaction, _box: SecretBox, name: str, body: NormalizationProfileIn, _row: Any
) -> Prepared:
    rows = (await tx.session.scalars(select(NormalizationProfileRow))).all()
    documents = {row.name: row.spec["document"] for row in rows}
    documents[name] = body.document
    overrides = [documents[key] for key in sorted(documents)]
    try:
        # Loading validates and compiles every family: CPU work, kept off the event loop.
        await asyncio.to_thread(load_profiles, None, overrides)
    except ConfigError as exc:
        raise ObjectInvalid.one("document", exc.message) from None
    return Prepared(spec={"document": body.document})


async def _view_profile(_session: AsyncSession, row: NormalizationProfileRow) -> dict[str, Any]:
    return {"name": row.name, "document": row.spec["document"], **_timestamps(row)}


# --- teams ----------------------------------------------------------------------------


async def _prepare_team(
    _tx: WriteTransaction, _box: SecretBox, _name: str, body: TeamIn, _row: Any
) -> Prepared:
    return Prepared(spec=body.model_dump(mode="json"))


async def _view_team(_session: AsyncSession, row: TeamRow) -> dict[str, Any]:
    return {"name": row.name, **row.spec, **_timestamps(row)}


async def _team_users(session: AsyncSession, name: str) -> list[str]:
    query = select(VirtualKeyRow.name).where(VirtualKeyRow.team == name)
    return [f"key {user}" for user in (await session.scalars(query)).all()]


# --- virtual keys ---------------------------------------------------------------------


async def _prepare_key(
    tx: WriteTransaction, _box: SecretBox, name: str, body: VirtualKeyIn, row: VirtualKeyRow | None
) -> Prepared:
    if body.team != DEFAULT_TEAM:
        team = await tx.session.scalar(select(TeamRow.id).where(TeamRow.name == body.team))
        if team is None:
            raise ObjectInvalid.one("team", f"no team named {body.team!r}; create it first")
    once: dict[str, Any] = {}
    if body.sha256 is not None:
        digest = body.sha256.lower()
    elif row is not None:
        digest = row.sha256
    else:
        key = generate_key()
        digest = hash_key(key)
        once["key"] = key
    other = await tx.session.scalar(
        select(VirtualKeyRow.name).where(VirtualKeyRow.sha256 == digest, VirtualKeyRow.name != name)
    )
    if other is not None:
        raise Conflict(f"key {other!r} already has this sha256; every key needs its own")
    spec = {"user": body.user, "labels": list(body.labels), "strict_params": body.strict_params}
    return Prepared(spec=spec, columns={"sha256": digest, "team": body.team}, once=once)


async def _view_key(_session: AsyncSession, row: VirtualKeyRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "team": row.team,
        **row.spec,
        "fingerprint": row.sha256[:12],
        **_timestamps(row),
    }


KINDS: tuple[Kind[Any], ...] = (
    Kind(
        "compliance_rule",
        "compliance-rules",
        "compliance rule",
        ComplianceRuleRow,
        ComplianceRule,
        ComplianceRuleOut,
        "policy_editor",
        _prepare_rule,
        _view_rule,
    ),
    Kind(
        "provider",
        "providers",
        "provider",
        ProviderRow,
        ProviderIn,
        ProviderOut,
        "admin",
        _prepare_provider,
        _view_provider,
        _provider_users,
    ),
    Kind(
        "deployment",
        "deployments",
        "deployment",
        DeploymentRow,
        DeploymentIn,
        DeploymentOut,
        "admin",
        _prepare_deployment,
        _view_deployment,
        _deployment_users,
    ),
    Kind(
        "model_alias",
        "model-aliases",
        "model alias",
        ModelAliasRow,
        ModelAliasIn,
        ModelAliasOut,
        "admin",
        _prepare_alias,
        _view_alias,
        name_pattern=MODEL_NAME_PATTERN,
    ),
    Kind(
        "pinned_tuning",
        "pinned-tunings",
        "pinned tuning",
        PinnedTuningRow,
        PinnedTuningIn,
        PinnedTuningOut,
        "policy_editor",
        _prepare_tuning,
        _view_tuning,
    ),
    Kind(
        "normalization_profile",
        "normalization-profiles",
        "normalisation profile",
        NormalizationProfileRow,
        NormalizationProfileIn,
        NormalizationProfileOut,
        "admin",
        _prepare_profile,
        _view_profile,
    ),
    Kind(
        "team",
        "teams",
        "team",
        TeamRow,
        TeamIn,
        TeamOut,
        "admin",
        _prepare_team,
        _view_team,
        _team_users,
    ),
    Kind(
        "virtual_key",
        "keys",
        "virtual key",
        VirtualKeyRow,
        VirtualKeyIn,
        VirtualKeyOut,
        "admin",
        _prepare_key,
        _view_key,
    ),
)


def by_object_type(object_type: str) -> Kind[Any]:
    for kind in KINDS:
        if kind.object_type == object_type:
            return kind
    raise KeyError(object_type)
