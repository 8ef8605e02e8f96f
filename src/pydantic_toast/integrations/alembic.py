"""Alembic support: the packaged migrations and how to combine them with your own project.

Apply pydantic-toast's migrations with ``pydantic-toast migrate URL`` (or ``alembic upgrade
head`` in this repository). They keep their own version table, :data:`VERSION_TABLE`, so they
never touch your ``alembic_version``.

In your own Alembic project, tell autogenerate and ``alembic check`` about the table so they
do not propose dropping it::

    from pydantic_toast.integrations.alembic import include_name, metadata as toast_metadata

    context.configure(
        ...,
        target_metadata=[Base.metadata, toast_metadata],
        include_name=include_name,
    )
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pydantic_toast._exceptions import StorageConfigurationError
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.sql_table import metadata

__all__ = ["SCRIPT_LOCATION", "VERSION_TABLE", "include_name", "metadata", "migration_engine"]

SCRIPT_LOCATION = "pydantic_toast:migrations"
VERSION_TABLE = "pydantic_toast_alembic_version"
_PARTITION = re.compile(r"^external_records_p\d+$")


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """An ``include_name`` hook for your env.py: hide pydantic-toast's version table.

    The partitions ``pydantic-toast partition`` makes (``external_records_p<i>``) are hidden
    too: they belong to ``external_records``, not to any model.
    """
    if type_ != "table" or name is None:
        return True
    return name != VERSION_TABLE and not _PARTITION.match(name)


def migration_engine(url: str) -> AsyncEngine:
    """An async engine for running migrations against a storage URL as the library takes it."""
    parsed = StorageURL.parse(url)
    if parsed.scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        from pydantic_toast.backends.postgresql import engine_options

        sa_url, options = engine_options(parsed)
        return create_async_engine(
            sa_url,
            connect_args=options["connect_args"],
            hide_parameters=True,
            poolclass=None,
        )
    if parsed.scheme in ("sqlite", "sqlite+aiosqlite"):
        from pydantic_toast.backends.sqlite import engine_url

        return create_async_engine(engine_url(parsed), hide_parameters=True)
    raise StorageConfigurationError(
        f"{parsed.masked}: migrations apply to PostgreSQL and SQLite URLs only; "
        f"{parsed.scheme}:// needs no schema"
    )
