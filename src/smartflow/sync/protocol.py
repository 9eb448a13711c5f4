"""The sync protocol: snapshot schema, stream messages and canonical serialisation.

The control plane sends an instance one WebSocket text message per snapshot:

    {"type": "snapshot", "key_id": "...", "signature": "...", "snapshot": {...}}

``snapshot`` is a full :class:`Snapshot`, never a delta. Every change produces a new full
snapshot, so an instance that missed versions catches up with one message and applies it
atomically. The instance replies ``{"version": N}`` after applying version N, or
``{"version": N, "error": "..."}`` when it rejects it and keeps serving the last good one.
The control plane sends ``{"type": "error", "message": "..."}`` for a message it cannot use.

The signature is Ed25519 over ``SIGNATURE_DOMAIN + canonical_json(snapshot)``; see
``smartflow.sync.signing``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from smartflow.config.schema import DeploymentSettings, KeySettings, ProviderSettings
from smartflow.core.errors import ConfigError
from smartflow.policy.documents import ComplianceRule, PolicyDocument, PolicySpec
from smartflow.usage.prices import PriceCatalog

__all__ = [
    "COMPLIANCE_DOCUMENT",
    "NAME_PATTERN",
    "SIGNATURE_DOMAIN",
    "SNAPSHOT_FORMAT",
    "CacheSettings",
    "ErrorMessage",
    "NamedComplianceRule",
    "NormalizationProfile",
    "PriceOverlay",
    "ProtocolError",
    "ProviderCredentials",
    "Snapshot",
    "SnapshotContent",
    "SnapshotMessage",
    "SnapshotProvider",
    "SyncReply",
    "TeamSettings",
    "canonical_json",
    "check_name",
    "credential_issues",
    "parse_reply",
    "parse_server_message",
    "snapshot_policy_documents",
]

SNAPSHOT_FORMAT = 1
"""Layout version of :class:`Snapshot`; an instance rejects a format it does not know."""

SIGNATURE_DOMAIN = b"smartflow.snapshot.v1\n"
"""Prefix of every signed message, so a snapshot signature is never valid for other data."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
"""Names of instances, sites, providers, deployments, teams and other central objects."""

COMPLIANCE_DOCUMENT = "control-plane-compliance"
"""``metadata.name`` of the policy document that carries the central compliance rules."""

_NAME = re.compile(NAME_PATTERN)


class ProtocolError(ValueError):
    """A sync message that is not valid JSON or does not match the protocol."""


def canonical_json(data: Any) -> bytes:
    """Serialise JSON data canonically: UTF-8, sorted object keys, no whitespace.

    Both ends use orjson, so floats are written in the same shortest form. This is not
    RFC 8785 (JCS): it is canonical only between parties that use this function.
    """
    try:
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise ProtocolError(f"value cannot be serialised as canonical JSON: {exc}") from exc


def check_name(value: str) -> str:
    """Return ``value`` if it matches :data:`NAME_PATTERN`; raise ValueError otherwise."""
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use 1 to 63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TeamSettings(_Strict):
    """A team that virtual keys belong to, with its spending limit."""

    name: str
    description: str = Field("", max_length=1000)
    monthly_budget_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    """Spend allowed per calendar month (UTC) across all instances; ``None`` is unlimited.
    NOTE: carried to instances only; no instance enforces it yet."""

    _name = field_validator("name")(check_name)


class NamedComplianceRule(ComplianceRule):
    """A compliance rule stored centrally under its own name."""

    name: str

    _check_name = field_validator("name")(check_name)


class CacheSettings(_Strict):
    """Response cache settings for every instance.

    NOTE: the gateway has no cache yet; these settings are carried, not applied.
    """

    enabled: bool = False
    ttl_s: int = Field(3600, ge=1, le=30 * 24 * 3600)
    """Seconds an entry stays valid."""
    semantic: bool = False
    """Also serve a stored response to a similar (not identical) request."""
    similarity_threshold: float = Field(0.95, ge=0.5, le=1.0)
    """Minimum cosine similarity for a semantic hit."""
    max_entry_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Largest response body stored."""


class NormalizationProfile(_Strict):
    """One capability-profile override document, as ``load_profiles(overrides=...)`` takes it."""

    name: str
    document: dict[str, Any]
    """A provider document (``provider``, ``default_family``, ``wire``, ``families``) or a
    defaults document (``effort_budgets``), as in the YAML files of a profiles directory."""

    _name = field_validator("name")(check_name)


class ProviderCredentials(_Strict):
    """Secrets of one provider account.

    Values are masked in ``repr`` and in every dump unless the serialisation context
    contains ``{"reveal_secrets": True}``.
    """

    api_key: SecretStr | None = Field(None, min_length=1, max_length=8192)
    """API key, or for vertex_gemini a static access token."""
    service_account_json: SecretStr | None = Field(None, min_length=2, max_length=65536)
    """vertex_gemini only: a Google service-account key file's JSON text."""
    aws_access_key_id: SecretStr | None = Field(None, min_length=1, max_length=256)
    aws_secret_access_key: SecretStr | None = Field(None, min_length=1, max_length=1024)
    aws_session_token: SecretStr | None = Field(None, min_length=1, max_length=8192)

    @field_serializer(
        "api_key",
        "service_account_json",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
    )
    def _serialise_secret(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        if value is None:
            return None
        context = info.context if isinstance(info.context, dict) else {}
        return value.get_secret_value() if context.get("reveal_secrets") else "**********"

    def names(self) -> list[str]:
        """Return the names of the fields that are set, sorted."""
        return sorted(name for name in type(self).model_fields if getattr(self, name) is not None)

    def revealed(self) -> dict[str, str]:
        """Return the set fields with their secret values, for encryption or a snapshot."""
        result: dict[str, str] = {}
        for name in self.names():
            value: SecretStr = getattr(self, name)
            result[name] = value.get_secret_value()
        return result


_AWS_FIELDS = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token"})


def credential_issues(provider_type: str, credentials: ProviderCredentials) -> list[str]:
    """Return what is wrong with ``credentials`` for a provider of ``provider_type``."""
    names = set(credentials.names())
    if provider_type == "bedrock":
        allowed = _AWS_FIELDS
        if names and not {"aws_access_key_id", "aws_secret_access_key"} <= names:
            return ["bedrock needs both 'aws_access_key_id' and 'aws_secret_access_key'"]
    elif provider_type == "vertex_gemini":
        allowed = frozenset({"api_key", "service_account_json"})
        if names == allowed:
            return ["set either 'api_key' (an access token) or 'service_account_json', not both"]
    else:
        allowed = frozenset({"api_key"})
    extra = sorted(names - allowed)
    if extra:
        return [
            f"{', '.join(extra)} not used by a {provider_type} provider; "
            f"set only {', '.join(sorted(allowed))}"
        ]
    return []


class SnapshotProvider(_Strict):
    """A provider account: where it runs, its settings and, at its own site, its secrets."""

    site: str
    settings: ProviderSettings
    credentials: ProviderCredentials | None = None
    """Present only in snapshots for instances at ``site``; elsewhere ``None``."""

    @model_validator(mode="after")
    def _check_credentials(self) -> SnapshotProvider:
        if self.credentials is not None:
            issues = credential_issues(self.settings.type, self.credentials)
            if issues:
                raise ValueError(issues[0])
        return self


class PriceOverlay(_Strict):
    """The central price catalogue: entries laid over the packaged ``prices.yaml``.

    ``providers`` has the layout of ``prices.yaml``; each entry replaces or adds the
    packaged entry of the same provider type and model.
    """

    version: int = Field(ge=1)
    providers: dict[str, Any]

    @model_validator(mode="after")
    def _check_catalog(self) -> PriceOverlay:
        try:
            PriceCatalog.from_dict({"providers": self.providers}, origin="prices")
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return self


class SnapshotContent(_Strict):
    """Everything an instance applies, in the shapes of the gateway configuration."""

    policies: list[PolicyDocument] = []
    compliance_rules: list[NamedComplianceRule] = []
    providers: dict[str, SnapshotProvider] = {}
    models: dict[str, list[DeploymentSettings]] = {}
    """Public model name to its deployments in order; ``site`` and ``pinned`` filled in."""
    keys: list[KeySettings] = []
    teams: list[TeamSettings] = []
    normalization_profiles: list[NormalizationProfile] = []
    """Applied in list order (sorted by name) after the packaged profiles."""
    cache: CacheSettings = CacheSettings()
    prices: PriceOverlay | None = None
    """Price overlay of the control plane; instances price usage with it when set."""


class Snapshot(_Strict):
    """The signed unit of the sync stream: one version of the content for one instance."""

    format: Literal[1] = 1
    version: int = Field(ge=1)
    created_at: str
    """When the version was made, ISO 8601 in UTC."""
    instance: str
    """The instance this copy was made for; an instance rejects a snapshot for another."""
    site: str
    content: SnapshotContent


class SnapshotMessage(_Strict):
    """Control plane to instance: a signed snapshot."""

    type: Literal["snapshot"] = "snapshot"
    key_id: str
    """Id of the control plane's signing key (``smartflow.sync.signing.key_id``)."""
    signature: str
    """Base64 (standard alphabet, padded) Ed25519 signature."""
    snapshot: dict[str, Any]
    """The snapshot as JSON data; verify the signature before reading it as a model."""


class ErrorMessage(_Strict):
    """Control plane to instance: a message from the instance could not be used."""

    type: Literal["error"] = "error"
    message: str


class SyncReply(_Strict):
    """Instance to control plane: ``{"version": N}`` to acknowledge, plus ``error`` to reject."""

    version: int = Field(ge=1)
    error: str | None = Field(None, min_length=1)

    @property
    def rejected(self) -> bool:
        return self.error is not None


def parse_server_message(text: str | bytes) -> SnapshotMessage | ErrorMessage:
    """Parse one message from the control plane.

    Raises:
        ProtocolError: not JSON, or not a snapshot or error message.
    """
    data = _load(text)
    kind = data.get("type")
    try:
        if kind == "snapshot":
            return SnapshotMessage.model_validate(data)
        if kind == "error":
            return ErrorMessage.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(f"invalid {kind} message: {exc}") from exc
    raise ProtocolError(f"unknown message type {kind!r}; expected 'snapshot' or 'error'")


def parse_reply(text: str | bytes) -> SyncReply:
    """Parse one reply from an instance.

    Raises:
        ProtocolError: not JSON, or not ``{"version": N}`` with an optional ``error``.
    """
    data = _load(text)
    try:
        return SyncReply.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(
            'invalid reply: expected {"version": N} or {"version": N, "error": "..."}: '
            + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from exc


def _load(text: str | bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"message is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError("message must be a JSON object")
    return data


def snapshot_policy_documents(content: SnapshotContent) -> list[PolicyDocument]:
    """Return the policy documents to compile: ``content.policies`` plus one document,
    named :data:`COMPLIANCE_DOCUMENT`, with the central compliance rules (if any)."""
    documents = list(content.policies)
    if content.compliance_rules:
        rules = [
            ComplianceRule.model_validate(rule.model_dump(exclude={"name"}))
            for rule in content.compliance_rules
        ]
        spec = PolicySpec.model_validate({"compliance": {"rules": rules}})
        documents.append(
            PolicyDocument.model_validate(
                {
                    "apiVersion": "smartflow/v1",
                    "kind": "Policy",
                    "metadata": {
                        "name": COMPLIANCE_DOCUMENT,
                        "description": "Compliance rules managed by the control plane.",
                    },
                    "spec": spec,
                }
            )
        )
    return documents
