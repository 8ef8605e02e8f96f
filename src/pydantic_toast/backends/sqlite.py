"""``sqlite:///path/to/file.db``: the embedded default, the same table through aiosqlite.

Migrate the file first (``pydantic-toast migrate sqlite:///path/to/file.db``, or
``alembic upgrade head``). Timestamps stay timezone-aware with microseconds. The database runs
in WAL mode, so readers do not block the writer. Expired records (``ttl``) stay in the file,
invisible, until :func:`~pydantic_toast.purge_expired` deletes them.

A record whose JSON is longer than 1 MiB is written in pieces (incremental blob I/O: the row
inserted with ``zeroblob(n)`` as its data, then filled 1 MiB at a time) and so stored as a BLOB
of the JSON's UTF-8 text; smaller ones are stored as TEXT. Bound whole, SQLite would copy the
value and assemble the row in memory first (2x the JSON; see ``bench/rss_sqlite_floor.py``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Hashable, Sequence
from functools import cache
from typing import Any

from sqlalchemy import URL, Integer, Select, bindparam, event, func, literal_column, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from pydantic_toast._exceptions import StorageConfigurationError, StorageSchemaError, shorten
from pydantic_toast._records import StoredRecord
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.base import Capability
from pydantic_toast.backends.sql import (
    SQLAlchemyBackend,
    conflict,
    json_as_text,
    json_passthrough,
    write_parameters,
    write_statements,
)
from pydantic_toast.backends.sql_logging import ENGINE_LOGGING_NAME, redact_log_arguments
from pydantic_toast.backends.sql_table import TABLE_NAME, records_table
from pydantic_toast.runtime.transaction import joined_connection

__all__ = ["PIECE", "SQLiteBackend", "configure_connection", "engine_url"]

PIECE = 1 << 20
"""A record whose JSON is longer is written in pieces of this many bytes (blob I/O)."""

_SAVEPOINT = "pydantic_toast_large_record"


@cache
def _large_statements() -> dict[str, Any]:
    """The writes of a large record and the read of its rowid, built at the first one.

    A write sets the data column to ``zeroblob(n)``, ``n`` bound as ``data`` (``b_data`` for
    an update), with no RETURNING (an UPDATE's RETURNING expands the zeroblob); ``locate``
    reads the written row's revision and rowid (blob I/O finds a row by its rowid). Built
    lazily: the objects of statements that most processes never run would cost every
    garbage collection.
    """
    c = records_table.c
    statements = write_statements(
        insert,
        lambda name: func.zeroblob(bindparam(name, type_=Integer())),
        returning=False,
        times_as_text=True,
    )
    statements["locate"] = select(c.revision, literal_column("rowid")).where(
        c.class_name == bindparam("class_name"), c.id == bindparam("id")
    )
    return statements


def engine_url(url: StorageURL) -> URL:
    """The SQLAlchemy URL for ``sqlite:///path``.

    Raises:
        StorageConfigurationError: No file path, an in-memory database, or query options.
    """
    path = url.path[1:] if url.path.startswith("/") else url.path
    if url.query:
        raise StorageConfigurationError(
            f"{url.masked}: unknown option(s) {shorten(', '.join(sorted(url.query)))}; SQLite "
            "URLs take none (write sqlite:///path/to/file.db)"
        )
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


def _missing_file(url: StorageURL) -> str | None:
    """Why the database file ``url`` names is missing, or ``None`` (a stat, once per connect).

    A missing folder is left to the connection's error, which names the path.
    """
    path = engine_url(url).database or ""
    if os.path.exists(path) or not os.path.isdir(os.path.dirname(path) or "."):
        return None
    relative = "" if os.path.isabs(path) else ", relative to the working directory"
    return f"the SQLite file {path} does not exist ({os.path.abspath(path)}{relative})"


class SQLiteBackend(SQLAlchemyBackend):
    """Records in a SQLite file's ``external_records`` table."""

    _insert = staticmethod(insert)
    _times_as_text = True
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
        # By statement name: the result processors of a SELECT's columns (None: kept as read).
        self._converters: dict[str, tuple[Callable[[Any], Any] | None, ...]] = {}

    async def connect(self) -> None:
        """Check that the database file exists, then connect and check the table.

        Raises:
            StorageSchemaError: The file does not exist: only ``pydantic-toast migrate``
                creates one (connecting would leave an empty file behind, and a relative path
                that resolved elsewhere than meant would only say that the table is missing).
        """
        missing = None if self._given is not None else _missing_file(self._parsed)
        if missing is not None:
            raise StorageSchemaError(
                f"{missing}: check the path, or run `pydantic-toast migrate "
                f"{self._parsed.masked}` to create it before first use",
                url=self._parsed.masked,
            )
        await super().connect()

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        """Write the records, each checked against its expected revision; all or none.

        A single record outside a transaction is written in one call to the connection's
        thread: the conditional statement and the fetch of its RETURNING row together
        (SQLAlchemy's cursor takes four calls: open, execute, fetch, close), so no cancellation
        can fall between the statement and its fetch. A cancelled save is still seen through
        (see ``_finish_when_cancelled``): returning the connection to the pool takes a call too.
        A record above :data:`PIECE` is written in pieces (see :meth:`_write_large`).
        """
        if (
            len(records) != 1
            or len(records[0].data) > PIECE
            or joined_connection(self._same_store) is not None
        ):
            return await super().save_records(records)
        (record,) = records
        kind, parameters = write_parameters(record)

        async def write(connection: AsyncConnection) -> list[int]:
            sql, values = self._bound(kind, self._writes[kind], parameters, connection)
            driver: Any = (await connection.get_raw_connection()).driver_connection
            rows = await driver.execute_fetchall(sql, values)  # aiosqlite: one thread call
            if not rows:
                raise await conflict(connection, record)
            return [int(rows[0][0])]

        return await self._run(write)

    async def _select(
        self, name: str, statement: Select[Any], parameters: dict[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """The rows, in one call to the connection's thread (a single load, a page, a count).

        SQLAlchemy's cursor takes four (open, execute, fetch, close). The statement is compiled
        once, its parameters bound and its columns converted by the processors SQLAlchemy would
        apply. Inside :func:`~pydantic_toast.transaction`, SQLAlchemy's own path.
        """
        if joined_connection(self._same_store) is not None:
            return await super()._select(name, statement, parameters)

        async def read(connection: AsyncConnection) -> list[Any]:
            sql, values = self._bound(name, statement, parameters, connection)
            driver: Any = (await connection.get_raw_connection()).driver_connection
            rows: list[Any] = await driver.execute_fetchall(sql, values)
            return rows

        rows = await self._run(read)
        converters = self._converters[name]
        if not any(converters):
            return rows
        return [
            [
                value if convert is None else convert(value)
                for convert, value in zip(converters, row, strict=True)
            ]
            for row in rows
        ]

    async def _before_joined_savepoint(self, connection: AsyncConnection) -> None:
        await self._begin_joined(connection)  # a session's SAVEPOINT: the same trap

    async def _begin_joined(self, connection: AsyncConnection) -> None:
        """Begin the caller's transaction in the database if sqlite3 has not yet.

        sqlite3 (outside autocommit) begins one before a write statement only: a SAVEPOINT as
        the transaction's first statement (a batch's, or a session's ``begin_nested()``)
        would begin a transaction of its own, whose RELEASE commits, out of reach of the
        caller's rollback.
        """
        driver: Any = (await connection.get_raw_connection()).driver_connection
        if not driver.in_transaction and driver.isolation_level is not None:
            await connection.exec_driver_sql(f"BEGIN {driver.isolation_level}")

    async def _write_record(self, connection: AsyncConnection, record: StoredRecord) -> int:
        if len(record.data) > PIECE:
            return await self._write_large(connection, record)
        return await super()._write_record(connection, record)

    async def _write_large(self, connection: AsyncConnection, record: StoredRecord) -> int:
        """Write ``record`` in pieces, in one call to the connection's thread; its revision.

        Raises:
            ConcurrencyError: The record is at another revision (nothing written).
        """
        kind, parameters = write_parameters(record)
        size = "data" if kind != "update" else "b_data"
        parameters[size] = len(record.data)
        statements = _large_statements()
        write = self._bound(f"large {kind}", statements[kind], parameters, connection)
        key = {"class_name": record.class_name, "id": record.id}
        locate = self._bound("locate", statements["locate"], key, connection)
        driver: Any = (await connection.get_raw_connection()).driver_connection
        # aiosqlite has no blob API: the writes run in its connection's thread through its
        # _execute (as its own methods do), on the sqlite3 connection it wraps.
        revision: int | None = await driver._execute(
            lambda: _write_in_pieces(driver._conn, write, locate, record.data)
        )
        if revision is None:
            raise await conflict(connection, record)
        return revision

    def _bound(
        self, name: str, statement: Any, parameters: dict[str, Any], connection: AsyncConnection
    ) -> tuple[str, list[Any]]:
        """``statement`` (compiled once as ``name``) with its parameters as sqlite3 binds them."""
        compiled = self._compiled.get(name)
        if compiled is None:
            dialect = connection.dialect
            compiled = self._compiled[name] = _compile(statement, dialect)
            if isinstance(statement, Select):
                self._converters[name] = _result_processors(statement, dialect)
        sql, names, processors, added = compiled
        if added:
            parameters = {**added, **parameters}
        values = [
            parameters[key] if process is None else process(parameters[key])
            for key, process in zip(names, processors, strict=True)
        ]
        return sql, values

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
            pool_reset_on_return=None,  # see _roll_back_if_begun
        )
        event.listen(engine.sync_engine, "connect", configure_connection)
        event.listen(engine.sync_engine, "reset", _roll_back_if_begun)
        return engine


_Compiled = tuple[str, tuple[str, ...], tuple[Callable[[Any], Any] | None, ...], dict[str, Any]]
"""A statement as sqlite3 runs it: its SQL, its parameters' names in order, their converters,
and the values of the parameters SQLAlchemy adds itself (a ``LIMIT``'s ``OFFSET``)."""


def _roll_back_if_begun(dbapi_connection: Any, _record: Any, reset_state: Any) -> None:
    """A ``reset`` listener: roll back a connection returned to the pool inside a transaction.

    The backend's connections autocommit. SQLAlchemy rolls back a transaction begun through
    it when the connection closes; one begun on the driver itself (a record written in pieces
    runs its ``BEGIN IMMEDIATE`` in sqlite3's thread) is rolled back here if it did not reach
    its ``COMMIT`` or ``ROLLBACK``. The pool's own reset rolled back on every return: a call
    to the connection's thread, one of two in a single save and of five in a single load.
    """
    if not reset_state.terminate_only and dbapi_connection.driver_connection.in_transaction:
        dbapi_connection.rollback()


def _write_in_pieces(
    connection: sqlite3.Connection,
    write: tuple[str, list[Any]],
    locate: tuple[str, list[Any]],
    data: bytes,
) -> int | None:
    """Run ``write`` (a row with ``zeroblob(len(data))`` as its data), then fill the zeroblob
    from ``data`` a piece at a time; return the new revision, or ``None`` when ``write``
    changed no row (another revision: nothing written).

    In a transaction of the connection's own (``BEGIN IMMEDIATE``: the write lock first), so
    readers see the row once it is whole, and a failed write leaves nothing. Inside the
    caller's transaction (``transaction()``; begun here when sqlite3 would begin it before a
    write) a savepoint undoes a failed write, and the caller commits.
    With ``data`` the row's last column, SQLite keeps the zeroblob unexpanded and writes each
    piece to its pages: the save holds no copy of the value.
    """
    own = not connection.in_transaction and connection.isolation_level is None
    if own:
        connection.execute("BEGIN IMMEDIATE")
    else:
        if not connection.in_transaction:
            connection.execute(f"BEGIN {connection.isolation_level}")
        connection.execute(f"SAVEPOINT {_SAVEPOINT}")
    try:
        revision = None
        if connection.execute(*write).rowcount == 1:
            revision, rowid = connection.execute(*locate).fetchone()
            view = memoryview(data)
            with connection.blobopen(TABLE_NAME, "data", rowid) as blob:
                for start in range(0, len(view), PIECE):
                    blob.write(view[start : start + PIECE])
    except BaseException:
        if own:
            connection.execute("ROLLBACK")
        else:
            connection.execute(f"ROLLBACK TO {_SAVEPOINT}")
            connection.execute(f"RELEASE {_SAVEPOINT}")
        raise
    connection.execute("COMMIT" if own else f"RELEASE {_SAVEPOINT}")
    return None if revision is None else int(revision)


def _compile(statement: Any, dialect: Dialect) -> _Compiled:
    """``statement`` compiled once for ``dialect`` (qmark parameters), with each parameter's
    bind processor (UUIDs as hex, timestamps as UTC text, JSON through the engine's serializer).
    """
    compiled = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    processors = tuple(
        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    )
    added = {name: value for name, value in compiled.params.items() if value is not None}
    return compiled.string, names, processors, added


def _result_processors(
    statement: Select[Any], dialect: Dialect
) -> tuple[Callable[[Any], Any] | None, ...]:
    """What SQLAlchemy applies to each column ``statement`` selects (UUIDs from hex, aware
    timestamps from text); the JSON data is kept as sqlite3 reads it (text, or bytes of a
    record written in pieces), as the engine's deserializer keeps it."""
    return tuple(
        None
        if column is records_table.c.data
        else column.type.dialect_impl(dialect).result_processor(dialect, None)
        for column in statement.selected_columns
    )


redact_log_arguments("aiosqlite")  # it logs each call with its SQL parameters at DEBUG
redact_log_arguments(f"sqlalchemy.engine.Engine.{ENGINE_LOGGING_NAME}")


def configure_connection(dbapi_connection: Any, _record: Any) -> None:
    """A ``connect`` event listener: WAL mode and a 10 s busy timeout on a new connection."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
