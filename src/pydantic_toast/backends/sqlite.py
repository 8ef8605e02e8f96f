"""``sqlite:///path/to/file.db``: the embedded default, the same table through aiosqlite.

Migrate the file first (``pydantic-toast migrate sqlite:///path/to/file.db``, or
``alembic upgrade head``). Timestamps stay timezone-aware with microseconds. The database runs
in WAL mode, so readers do not block the writer. Expired records (``ttl``) stay in the file,
invisible, until :func:`~pydantic_toast.purge_expired` deletes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from sqlalchemy import URL, event
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from pydantic_toast._exceptions import StorageConfigurationError
from pydantic_toast._records import StoredRecord
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.base import Capability
from pydantic_toast.backends.sql import (
    SQLAlchemyBackend,
    conflict,
    json_as_text,
    json_passthrough,
    write_parameters,
)
from pydantic_toast.backends.sql_logging import ENGINE_LOGGING_NAME, redact_log_arguments
from pydantic_toast.runtime.transaction import joined_connection

__all__ = ["SQLiteBackend", "engine_url"]


def engine_url(url: StorageURL) -> URL:
    """The SQLAlchemy URL for ``sqlite:///path``.

    Raises:
        StorageConfigurationError: No file path, or an in-memory database.
    """
    path = url.path[1:] if url.path.startswith("/") else url.path
    if url.host:
        raise StorageConfigurationError(
            f"{url.masked}: write sqlite:///relative/path.db or sqlite:////absolute/path.db "
            "(three or four slashes, no host)"
        )
    if not path or path == ":memory:":
        raise StorageConfigurationError(
            f"{url.masked}: SQLite storage needs a file path, e.g. sqlite:///data.db; for an "
            "in-process store use memory://"
        )
    return URL.create("sqlite+aiosqlite", database=path)


class SQLiteBackend(SQLAlchemyBackend):
    """Records in a SQLite file's ``external_records`` table."""

    _insert = staticmethod(insert)
    # aiosqlite runs each statement in its connection's thread, where a cancellation cannot
    # reach it. Abandoned between its execute and its fetch, an INSERT ... RETURNING holds the
    # file's write lock; SQLAlchemy then closes the connection, which Python's sqlite3 does
    # with sqlite3_close_v2: a "zombie" that keeps the lock (and its file descriptors) until
    # the garbage collector frees the cursor, so every other writer waits out busy_timeout.
    # A cancelled operation is therefore seen through (a few milliseconds, at most the
    # busy_timeout when another process holds the lock) and the cancellation raised after.
    _finish_when_cancelled = True
    capabilities = frozenset(Capability)

    def __init__(self, url: str, *, engine: AsyncEngine | None = None) -> None:
        super().__init__(url, engine=engine)
        self._compiled: dict[str, _Compiled] = {}

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        """Write the records, each checked against its expected revision; all or none.

        A single record outside a transaction is written in one call to the connection's
        thread: the conditional statement and the fetch of its RETURNING row together
        (SQLAlchemy's cursor takes four calls: open, execute, fetch, close), so no cancellation
        can fall between the statement and its fetch. A cancelled save is still seen through
        (see ``_finish_when_cancelled``): returning the connection to the pool takes a call too.
        """
        if len(records) != 1 or joined_connection(self._same_store) is not None:
            return await super().save_records(records)
        (record,) = records
        kind, parameters = write_parameters(record)

        async def write(connection: AsyncConnection) -> list[int]:
            compiled = self._compiled.get(kind)
            if compiled is None:
                compiled = self._compiled[kind] = _compile(self._writes[kind], connection.dialect)
            sql, names, processors = compiled
            values = [
                parameters[name] if process is None else process(parameters[name])
                for name, process in zip(names, processors, strict=True)
            ]
            driver: Any = (await connection.get_raw_connection()).driver_connection
            rows = await driver.execute_fetchall(sql, values)  # aiosqlite: one thread call
            if not rows:
                raise await conflict(connection, record)
            return [int(rows[0][0])]

        return await self._run(write)

    @classmethod
    def store_identity(cls, url: StorageURL) -> Hashable:
        """The database file's real path."""
        path = engine_url(url).database or ""
        return os.path.realpath(path)

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        """Check that the URL names a file."""
        engine_url(url)

    def _same_store(self, url: URL) -> bool:
        return url.get_backend_name() == "sqlite" and os.path.realpath(
            url.database or ""
        ) == self.store_identity(self._parsed)

    def _create_engine(self) -> AsyncEngine:
        engine = create_async_engine(
            engine_url(self._parsed),
            isolation_level="AUTOCOMMIT",
            hide_parameters=True,
            logging_name=ENGINE_LOGGING_NAME,
            json_serializer=json_passthrough,
            json_deserializer=json_as_text,
            connect_args={"timeout": 10},
        )
        event.listen(engine.sync_engine, "connect", _configure_connection)
        return engine


_Compiled = tuple[str, tuple[str, ...], tuple[Callable[[Any], Any] | None, ...]]
"""A statement as sqlite3 runs it: its SQL, its parameters' names in order, their converters."""


def _compile(statement: Any, dialect: Dialect) -> _Compiled:
    """``statement`` compiled once for ``dialect`` (qmark parameters), with each parameter's
    bind processor (UUIDs as hex, timestamps as UTC text, JSON through the engine's serializer).
    """
    compiled = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    processors = tuple(
        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    )
    return compiled.string, names, processors


redact_log_arguments("aiosqlite")  # it logs each call with its SQL parameters at DEBUG
redact_log_arguments(f"sqlalchemy.engine.Engine.{ENGINE_LOGGING_NAME}")


def _configure_connection(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
