"""Add usage events, feedback scores and the central price catalogue.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 19:22:23.319100
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "price_catalog",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_catalog")),
    )
    op.create_table(
        "usage_events",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("started_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.Column("instance", sa.String(length=128), nullable=False),
        sa.Column("site", sa.String(length=128), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("dialect", sa.String(length=32), nullable=False),
        sa.Column("key_name", sa.String(length=128), nullable=True),
        sa.Column("team", sa.String(length=128), nullable=True),
        sa.Column("user_name", sa.String(length=128), nullable=True),
        sa.Column("provider", sa.String(length=128), nullable=True),
        sa.Column("provider_kind", sa.String(length=64), nullable=True),
        sa.Column("deployment", sa.String(length=256), nullable=True),
        sa.Column("model_requested", sa.String(length=128), nullable=True),
        sa.Column("model_served", sa.String(length=128), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("usage_source", sa.String(length=16), nullable=False),
        sa.Column("cost_pusd", sa.BigInteger(), nullable=True),
        sa.Column("price_missing", sa.Boolean(), nullable=False),
        sa.Column("price_as_of", sa.String(length=32), nullable=True),
        sa.Column("price_version", sa.String(length=64), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("cache", sa.String(length=16), nullable=False),
        sa.Column("fallbacks", sa.Integer(), nullable=False),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("error_type", sa.String(length=128), nullable=True),
        sa.Column("client_disconnected", sa.Boolean(), nullable=False),
        sa.Column("blocked_by", sa.String(length=256), nullable=True),
        sa.Column("policy", sa.JSON(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_usage_events")),
    )
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_usage_events_instance_started_ms"),
            ["instance", "started_ms"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_usage_events_model_requested_started_ms"),
            ["model_requested", "started_ms"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_usage_events_request_id"), ["request_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_usage_events_site_started_ms"), ["site", "started_ms"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_usage_events_started_ms"), ["started_ms"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_usage_events_team_started_ms"), ["team", "started_ms"], unique=False
        )

    op.create_table(
        "usage_feedback",
        sa.Column("feedback_id", sa.String(length=36), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("instance", sa.String(length=128), nullable=False),
        sa.Column("key_name", sa.String(length=128), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("feedback_id", name=op.f("pk_usage_feedback")),
    )
    with op.batch_alter_table("usage_feedback", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_usage_feedback_request_id"), ["request_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_feedback_request_id"))

    op.drop_table("usage_feedback")
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_events_team_started_ms"))
        batch_op.drop_index(batch_op.f("ix_usage_events_started_ms"))
        batch_op.drop_index(batch_op.f("ix_usage_events_site_started_ms"))
        batch_op.drop_index(batch_op.f("ix_usage_events_request_id"))
        batch_op.drop_index(batch_op.f("ix_usage_events_model_requested_started_ms"))
        batch_op.drop_index(batch_op.f("ix_usage_events_instance_started_ms"))

    op.drop_table("usage_events")
    op.drop_table("price_catalog")
