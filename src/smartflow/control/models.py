"""Request and response bodies of the control-plane API, as pydantic models.

The OpenAPI description is generated from these models, and the API validates requests
and builds responses with them, so the two cannot differ.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator

from smartflow.config.schema import ProviderSettings
from smartflow.control.services.context import Role
from smartflow.policy.documents import ComplianceRule, PolicyDocument
from smartflow.sync.protocol import ProviderCredentials, SnapshotContent, check_name

__all__ = [
    "MODEL_NAME_PATTERN",
    "AdminTokenCreated",
    "AdminTokenIn",
    "AdminTokenList",
    "AdminTokenOut",
    "AuditEntryOut",
    "AuditPage",
    "AuditQuery",
    "ComplianceRuleOut",
    "DeploymentIn",
    "DeploymentOut",
    "EnrollIn",
    "EnrollOut",
    "EnrollmentTokenCreated",
    "EnrollmentTokenIn",
    "EnrollmentTokenList",
    "EnrollmentTokenOut",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "InstanceList",
    "InstanceOut",
    "IssueOut",
    "ModelAliasIn",
    "ModelAliasOut",
    "NameStr",
    "NormalizationProfileIn",
    "NormalizationProfileOut",
    "PinnedTuningIn",
    "PinnedTuningOut",
    "PolicyList",
    "PolicyOut",
    "PolicyVersionList",
    "ProviderIn",
    "ProviderOut",
    "SigningKeyOut",
    "SnapshotVersionDetail",
    "SnapshotVersionList",
    "SnapshotVersionOut",
    "TeamIn",
    "TeamOut",
    "VirtualKeyIn",
    "VirtualKeyOut",
]

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
"""Public model names (aliases): as object names, plus ':' and '@', up to 128 characters."""

_PARAM_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


NameStr = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]


class _Timestamps(_Out):
    created_at: datetime
    updated_at: datetime


# --- errors ---------------------------------------------------------------------------


class IssueOut(_Out):
    path: str
    """Location in the request body, such as ``settings.base_url``; empty for the whole body."""
    message: str
    document: str | None = None


class ErrorDetail(_Out):
    code: str
    message: str
    issues: list[IssueOut] | None = None


class ErrorBody(_Out):
    error: ErrorDetail


class Health(_Out):
    status: Literal["ok"]
    version: int
    """The newest snapshot version."""


# --- central objects --------------------------------------------------------------------


class ComplianceRuleOut(_Timestamps):
    name: str
    rule: ComplianceRule


class ProviderIn(_In):
    site: NameStr
    settings: ProviderSettings
    """Provider settings as in the gateway configuration. Secrets never go here."""
    credentials: ProviderCredentials | None = None
    """Write-only. Omitted or null keeps the stored credentials; ``{}`` removes them."""


class ProviderOut(_Timestamps):
    name: str
    site: str
    settings: ProviderSettings
    credentials_set: list[str]
    """Names of the stored credential fields; their values are never returned."""


class DeploymentIn(_In):
    provider: NameStr
    model: str = Field(min_length=1, max_length=256)
    """The provider's model name, or the Azure deployment name."""
    base_model: str | None = Field(None, min_length=1, max_length=256)
    """The model family to normalise parameters for, when ``model`` is not one."""


class DeploymentOut(_Timestamps):
    name: str
    provider: str
    site: str
    """The provider's site."""
    model: str
    base_model: str | None


class ModelAliasIn(_In):
    deployments: list[str] = Field(min_length=1, max_length=32)
    """Deployment names, tried in this order."""

    @field_validator("deployments")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            check_name(name)
        if len(set(value)) != len(value):
            raise ValueError("list each deployment once")
        return value


class ModelAliasOut(_Timestamps):
    name: str
    deployments: list[str]


class PinnedTuningIn(_In):
    params: dict[str, Any] = Field(min_length=1, max_length=64)
    """Canonical parameter names to the values applied after the caller's, such as
    ``{"top_k": 40}``."""

    @field_validator("params")
    @classmethod
    def _param_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _PARAM_NAME.fullmatch(name):
                raise ValueError(
                    f"invalid parameter name {name!r}: use lower-case letters, digits and '_'"
                )
        return value


class PinnedTuningOut(_Timestamps):
    name: str
    """The deployment's name."""
    params: dict[str, Any]


class NormalizationProfileIn(_In):
    document: dict[str, Any] = Field(min_length=1)
    """One capability-profile document, as a YAML file in a profiles directory holds."""


class NormalizationProfileOut(_Timestamps):
    name: str
    document: dict[str, Any]


class TeamIn(_In):
    description: str = Field("", max_length=1000)
    monthly_budget_usd: float | None = Field(None, ge=0, le=1e12, allow_inf_nan=False)


class TeamOut(_Timestamps):
    name: str
    description: str
    monthly_budget_usd: float | None


class VirtualKeyIn(_In):
    team: NameStr = "default"
    """An existing team, or ``default``."""
    user: str | None = Field(None, min_length=1, max_length=256)
    labels: list[str] = Field([], max_length=32)
    strict_params: bool = False
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    """The SHA-256 of a key made elsewhere. Omitted on creation: the control plane makes a
    key and returns it once. Omitted on update: the stored hash is kept."""

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        for label in value:
            check_name(label)
        return value


class VirtualKeyOut(_Timestamps):
    name: str
    team: str
    user: str | None
    labels: list[str]
    strict_params: bool
    fingerprint: str
    """The first 12 hex digits of the key's SHA-256."""
    key: str | None = None
    """The new key, in the response that created it only."""


# --- policies ---------------------------------------------------------------------------


class PolicyOut(_Out):
    name: str
    version: int
    created_at: datetime
    author: str
    document: PolicyDocument


class PolicyList(_Out):
    items: list[PolicyOut]


class PolicyVersionOut(_Out):
    name: str
    version: int
    created_at: datetime
    author: str
    deleted: bool
    document: PolicyDocument | None


class PolicyVersionList(_Out):
    items: list[PolicyVersionOut]


# --- tokens, enrollment and instances -----------------------------------------------------


class AdminTokenIn(_In):
    name: NameStr
    role: Role = "viewer"


class AdminTokenOut(_Out):
    name: str
    role: Role
    created_at: datetime
    created_by: str
    fingerprint: str


class AdminTokenCreated(AdminTokenOut):
    token: str
    """The token itself; shown only in this response."""


class AdminTokenList(_Out):
    items: list[AdminTokenOut]


class EnrollmentTokenIn(_In):
    site: NameStr | None = None
    """The only site the token can enroll an instance into; omitted allows any site."""
    ttl_s: int = Field(3600, ge=60)
    """Seconds until the token expires (at most the configured maximum, default 30 days)."""
    description: str = Field("", max_length=1000)


class EnrollmentTokenOut(_Out):
    id: int
    site: str | None
    description: str
    created_at: datetime
    created_by: str
    expires_at: datetime
    used_at: datetime | None
    used_by: str | None
    state: Literal["active", "used", "expired"]


class EnrollmentTokenCreated(EnrollmentTokenOut):
    token: str
    """The one-time token itself; shown only in this response."""


class EnrollmentTokenList(_Out):
    items: list[EnrollmentTokenOut]


class EnrollIn(_In):
    token: SecretStr = Field(min_length=1, max_length=512)
    name: NameStr
    """The new instance's name, unique across the control plane."""
    site: NameStr


class SigningKeyOut(_Out):
    key_id: str
    algorithm: Literal["ed25519"]
    public_key: str
    """The raw 32-byte Ed25519 public key in standard base64."""


class EnrollOut(_Out):
    instance: str
    site: str
    credential: str
    """The instance's credential for ``Authorization: Bearer`` on the sync stream; shown
    only in this response."""
    signing_key: SigningKeyOut
    """The key that signs snapshots; pin it."""
    sync_path: str


SyncState = Literal["enrolled", "syncing", "in_sync", "rejected", "disconnected"]


class InstanceOut(_Out):
    name: str
    site: str
    enrolled_at: datetime
    applied_version: int | None
    head_version: int
    """The newest snapshot version, for comparison with ``applied_version``."""
    last_seen: datetime | None
    sync_state: SyncState
    last_error: str | None
    connected: bool
    """True when this control-plane process has an open sync stream from the instance."""


class InstanceList(_Out):
    items: list[InstanceOut]


# --- audit and snapshots ------------------------------------------------------------------


class AuditQuery(_In):
    model_config = ConfigDict(extra="ignore", frozen=True)

    limit: int = Field(100, ge=1, le=1000)
    # Entry ids are 64-bit in both databases; a larger value cannot match and would
    # overflow the driver.
    before: int | None = Field(None, ge=1, le=2**63 - 1)
    """Return entries older than this entry id, to page back."""
    object_type: str | None = Field(None, max_length=64)
    object_name: str | None = Field(None, max_length=128)


class AuditEntryOut(_Out):
    id: int
    at: datetime
    actor: str
    actor_kind: str
    action: str
    object_type: str
    object_name: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(_Out):
    entries: list[AuditEntryOut]
    next_before: int | None
    """Pass as ``before`` for the next page; null on the last page."""


class SnapshotVersionOut(_Out):
    version: int
    created_at: datetime
    actor: str
    summary: str
    sha256: str


class SnapshotVersionList(_Out):
    items: list[SnapshotVersionOut]


class SnapshotVersionDetail(SnapshotVersionOut):
    content: SnapshotContent
    """The content without credentials; each instance's copy adds its site's credentials."""
