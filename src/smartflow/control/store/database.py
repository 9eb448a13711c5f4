"""Database connection for the control plane: engine, sessions and migrations at start."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from smartflow.core.errors import ConfigError

__all__ = ["Database", "alembic_config", "normalise_url", "open_database"]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "alembic"

# Plain driver names mapped to the async driver this package uses.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}
_SUPPORTED = ("sqlite+aiosqlite", "postgresql+asyncpg")


@dataclass(frozen=True, slots=True)
class Database:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def close(self) -> None:
        await self.engine.dispose()


def normalise_url(url: str) -> URL:
    """Parse ``url`` and select the async driver for a plain ``sqlite`` or ``postgresql`` URL.

    Raises:
        ConfigError: the URL is invalid or names another database or driver.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL: {exc}") from exc
    drivername = _ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername)
    if drivername not in _SUPPORTED:
        raise ConfigError(
            f"unsupported database driver {parsed.drivername!r}: use sqlite+aiosqlite:///PATH "
            "or postgresql+asyncpg://USER@HOST:PORT/DATABASE"
        )
    return parsed.set(drivername=drivername)


def alembic_config(connection: Connection | None = None) -> Config:
    """Return an Alembic configuration for the packaged migrations, sharing ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Turn on foreign keys and WAL, and let SQLAlchemy, not sqlite3, begin transactions.

    sqlite3 in Python 3.11 begins a transaction only before a data change. A read made
    earlier in a session could then see another commit, so an explicit BEGIN starts every
    transaction, reads included.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")


async def open_database(url: str) -> Database:
    """Connect to the database at ``url`` and upgrade its schema to the newest migration.

    Raises:
        ConfigError: the URL is unsupported, or the database cannot be reached or migrated.
    """
    parsed = normalise_url(url)
    if parsed.drivername.startswith("sqlite") and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = create_async_engine(parsed, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    shown = parsed.render_as_string(hide_password=True)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
    except (SQLAlchemyError, OSError) as exc:
        await engine.dispose()
        raise ConfigError(f"cannot open or migrate the database {shown}: {exc}") from exc
    logger.info("database %s is at the newest schema", shown)
    return Database(engine, async_sessionmaker(engine, expire_on_commit=False))
