"""Alembic environment for the control-plane store.

The control plane runs the migrations itself at start and passes its open connection in
``config.attributes["connection"]``. Run from the alembic command line, the URL comes from
``sqlalchemy.url`` in the configuration or the variable SMARTFLOW_CONTROL_DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from smartflow.control.store.database import normalise_url
from smartflow.control.store.tables import Base

target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters a table by copying it; batch mode does that for later migrations.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_new_engine(url: str) -> None:
    engine = create_async_engine(normalise_url(url))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_configure)
    finally:
        await engine.dispose()


def _url() -> str:
    url = context.config.get_main_option("sqlalchemy.url") or os.environ.get(
        "SMARTFLOW_CONTROL_DATABASE_URL", ""
    )
    if not url:
        raise RuntimeError("no database URL: set sqlalchemy.url or SMARTFLOW_CONTROL_DATABASE_URL")
    return url


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    shared = context.config.attributes.get("connection")
    if shared is not None:
        _configure(shared)
    else:
        asyncio.run(_run_with_new_engine(_url()))
