"""Alembic environment for pydantic-toast's ``external_records`` table.

The database URL comes from ``-x url=...``, else ``DATABASE_URL``, else ``sqlalchemy.url`` in
the Alembic configuration. libpq-style PostgreSQL URLs (``postgresql://...?sslmode=require``)
and ``sqlite:///file.db`` are accepted as the library takes them.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from pydantic_toast.backends.sql_table import metadata
from pydantic_toast.integrations.alembic import (
    TAKE_MIGRATION_LOCK,
    VERSION_TABLE,
    include_name,
    migration_engine,
)

config = context.config


def _database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("DATABASE_URL")
    if not url:
        configured = config.get_alembic_option("sqlalchemy.url")
        url = configured if isinstance(configured, str) else None
    if not url:
        raise SystemExit(
            "no database URL: pass -x url=postgresql://user@host/db or set DATABASE_URL"
        )
    return url


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        render_as_batch=connection is not None and connection.dialect.name == "sqlite",
        compare_type=True,
        literal_binds=url is not None,
    )


def _begin_alone(connection: Connection) -> None:
    """Begin the one transaction of the whole run, holding off every other migration run.

    Begun before Alembic reads the applied revision, so a second run (two deploys at once)
    waits, then finds the first one's work committed. On PostgreSQL an advisory lock, released
    at commit, then a bound on table lock waits (``MIGRATION_LOCK_TIMEOUT``). On SQLite
    ``BEGIN IMMEDIATE`` takes the write lock, and makes the run one transaction: the driver
    would otherwise run each CREATE TABLE in autocommit, so a failed run (or a second one)
    would leave a half-migrated file behind. Alembic sees the transaction as the caller's and
    leaves its commit to :func:`_run_online`.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(TAKE_MIGRATION_LOCK)
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _run_sync(connection: Connection) -> None:
    _begin_alone(connection)
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(url: str) -> None:
    engine = migration_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    _configure(url=str(migration_engine(_database_url()).url))
    with context.begin_transaction():
        if context.get_context().dialect.name == "postgresql":
            # The script takes turns and bounds its table lock waits as an online run does.
            context.execute(TAKE_MIGRATION_LOCK)
        context.run_migrations()
else:
    asyncio.run(_run_online(_database_url()))
