"""The control plane's tables, as SQLAlchemy 2 declarative models.

One schema serves SQLite and PostgreSQL; ``alembic/versions`` creates it, and a test
checks that the migrations and these models agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AdminTokenRow",
    "AuditRow",
    "Base",
    "CacheSettingsRow",
    "ComplianceRuleRow",
    "DeploymentRow",
    "EnrollmentTokenRow",
    "EventRow",
    "FeedbackRow",
    "InstanceRow",
    "ModelAliasRow",
    "NamedSpecRow",
    "NormalizationProfileRow",
    "PinnedTuningRow",
    "PolicyRow",
    "PriceCatalogRow",
    "ProviderRow",
    "SnapshotVersionRow",
    "SyncHeadRow",
    "TeamRow",
    "UTCDateTime",
    "VirtualKeyRow",
    "utc_now",
]

# Explicit constraint names, so migrations can name them on both databases.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_LENGTH = 128
HASH_LENGTH = 64


def utc_now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite stores datetimes as text without an offset, so the offset is dropped on write
    and UTC is attached on read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware datetime in UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class NamedSpecRow:
    """Columns of every central object kept as a name and a JSON specification."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now)


class SyncHeadRow(Base):
    """The one row (id 1) with the newest snapshot version; writers lock it first."""

    __tablename__ = "sync_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(Integer)


class SnapshotVersionRow(Base):
    __tablename__ = "snapshot_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    actor: Mapped[str] = mapped_column(String(NAME_LENGTH))
    summary: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(HASH_LENGTH))
    """SHA-256 of the canonical JSON of ``content``."""
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The snapshot content without any credential; safe to show to viewers."""
    credentials: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Provider name to its encrypted credentials, as they were at this version."""


class PolicyRow(Base):
    """One version of one policy document; ``document`` is null for a deletion."""

    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    author: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class ComplianceRuleRow(NamedSpecRow, Base):
    __tablename__ = "compliance_rules"


class ProviderRow(NamedSpecRow, Base):
    __tablename__ = "providers"

    site: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    credentials: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Fernet token of the credential JSON; never leaves the store unencrypted except in
    snapshots for instances at ``site``."""


class DeploymentRow(NamedSpecRow, Base):
    __tablename__ = "deployments"

    provider_name: Mapped[str] = mapped_column(
        String(NAME_LENGTH), ForeignKey("providers.name", ondelete="RESTRICT"), index=True
    )


class ModelAliasRow(NamedSpecRow, Base):
    __tablename__ = "model_aliases"


class PinnedTuningRow(NamedSpecRow, Base):
    """Pinned parameters of one deployment; ``name`` is the deployment's name."""

    __tablename__ = "pinned_tunings"

    name: Mapped[str] = mapped_column(
        String(NAME_LENGTH), ForeignKey("deployments.name", ondelete="RESTRICT"), unique=True
    )


class NormalizationProfileRow(NamedSpecRow, Base):
    __tablename__ = "normalization_profiles"


class TeamRow(NamedSpecRow, Base):
    __tablename__ = "teams"


class VirtualKeyRow(NamedSpecRow, Base):
    __tablename__ = "virtual_keys"

    sha256: Mapped[str] = mapped_column(String(HASH_LENGTH), unique=True)
    team: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)


class CacheSettingsRow(Base):
    """The one row (id 1) of cache settings."""

    __tablename__ = "cache_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now)


class InstanceRow(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    site: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    credential_sha256: Mapped[str] = mapped_column(String(HASH_LENGTH), unique=True)
    enrolled_at: Mapped[datetime] = mapped_column(default=utc_now)
    applied_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(nullable=True)
    sync_state: Mapped[str] = mapped_column(String(32), default="enrolled")
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class EnrollmentTokenRow(Base):
    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(HASH_LENGTH), unique=True)
    site: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    """The only site the token enrolls into; null allows any site."""
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    used_by: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)


class AdminTokenRow(Base):
    __tablename__ = "admin_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    sha256: Mapped[str] = mapped_column(String(HASH_LENGTH), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))


class AuditRow(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "object_type", "object_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utc_now, index=True)
    actor: Mapped[str] = mapped_column(String(NAME_LENGTH))
    actor_kind: Mapped[str] = mapped_column(String(32))
    """``admin_token``, ``instance``, ``enrollment`` or ``system``."""
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(64))
    object_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class EventRow(Base):
    """One usage event of one gateway request, as shipped by an instance.

    Times are Unix milliseconds, so time buckets are integer divisions on both databases.
    ``cost_pusd`` is the cost in picodollars (10^-12 USD), exact for every catalogue rate
    with up to six decimals per million tokens, and summed as an integer.
    """

    __tablename__ = "usage_events"
    __table_args__ = (
        Index(None, "started_ms"),
        Index(None, "instance", "started_ms"),
        Index(None, "site", "started_ms"),
        Index(None, "team", "started_ms"),
        Index(None, "model_requested", "started_ms"),
        Index(None, "request_id"),
    )

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(NAME_LENGTH))
    started_ms: Mapped[int] = mapped_column(BigInteger)
    received_ms: Mapped[int] = mapped_column(BigInteger)
    instance: Mapped[str] = mapped_column(String(NAME_LENGTH))
    site: Mapped[str] = mapped_column(String(NAME_LENGTH))
    entry_instance: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    """The instance that received the request and forwarded it to ``instance`` by linked
    routing, else None."""
    entry_site: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    operation: Mapped[str] = mapped_column(String(32))
    dialect: Mapped[str] = mapped_column(String(32))
    key_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    team: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    user_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    provider_kind: Mapped[str | None] = mapped_column(String(64), nullable=True)
    deployment: Mapped[str | None] = mapped_column(String(2 * NAME_LENGTH), nullable=True)
    model_requested: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    model_served: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_input_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    usage_source: Mapped[str] = mapped_column(String(16))
    cost_pusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    price_missing: Mapped[bool] = mapped_column(Boolean)
    price_as_of: Mapped[str | None] = mapped_column(String(32), nullable=True)
    price_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    stream: Mapped[bool] = mapped_column(Boolean)
    cache: Mapped[str] = mapped_column(String(16))
    fallbacks: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    client_disconnected: Mapped[bool] = mapped_column(Boolean)
    blocked_by: Mapped[str | None] = mapped_column(String(2 * NAME_LENGTH), nullable=True)
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The event's policy summary: names and counts, never a matched value."""
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The attempts and normalisation changes, kept for drill-down."""


class FeedbackRow(Base):
    """A score for one request, sent by the application with the request's virtual key."""

    __tablename__ = "usage_feedback"

    feedback_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    instance: Mapped[str] = mapped_column(String(NAME_LENGTH))
    key_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    """The virtual key that sent the score; it counts only for requests of the same key."""
    score: Mapped[float] = mapped_column(Float)


class PriceCatalogRow(Base):
    """The one row (id 1) of the central price overlay, laid over the packaged catalogue."""

    __tablename__ = "price_catalog"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
