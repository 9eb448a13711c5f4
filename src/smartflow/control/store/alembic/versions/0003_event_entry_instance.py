"""Add the entry instance and site of usage events forwarded by linked routing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("entry_instance", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("entry_site", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.drop_column("entry_site")
        batch_op.drop_column("entry_instance")
