"""What the SQL backends share: statements on ``external_records``.

Every operation is a single statement on an AUTOCOMMIT connection: one round trip, no
BEGIN/COMMIT around it. Statements are built once from the mapped table; SQLAlchemy caches
their compiled form. Model data travels as the JSON text Pydantic wrote: the engine's JSON
serializer passes text through instead of re-encoding it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy import (
    URL,
    LargeBinary,
    Select,
    Text,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal_column,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import QueuePool

from pydantic_toast._exceptions import ConcurrencyError, StorageUsageError
from pydantic_toast._records import PageCursor, RecordKey, StoredRecord, read_record
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.base import RecordBackend
from pydantic_toast.backends.sql_table import counts_table, records_table
from pydantic_toast.runtime.boundary import connecting
from pydantic_toast.runtime.loops import is_library_loop
from pydantic_toast.runtime.transaction import joined_connection, statement_connection

__all__ = [
    "CLASSES_AT_ONCE",
    "COUNT",
    "DELETE",
    "EXPIRED_CLASSES",
    "PURGE",
    "REVISION",
    "SQLAlchemyBackend",
    "conflict",
    "expired",
    "expired_classes_statement",
    "expires_at",
    "json_as_text",
    "json_passthrough",
    "live",
    "page_statement",
    "purge_classes",
    "purge_statement",
    "see_through",
    "upsert",
    "write_parameters",
    "write_statements",
]

T = TypeVar("T")

_table = records_table
_c = _table.c
_COLUMNS = (
    _c.class_name,
    _c.id,
    _c.schema_version,
    _c.data,
    _c.created_at,
    _c.updated_at,
    _c.revision,
)


def live(now: Any) -> Any:
    """Rows not expired at ``now``: an expired row is missing until the purge deletes it."""
    return or_(_c.expires_at.is_(None), _c.expires_at > now)


def expired(now: Any) -> Any:
    """Rows expired at ``now`` (``expires_at`` reached)."""
    return _c.expires_at <= now


def expires_at(record: StoredRecord) -> datetime | None:
    """When ``record`` expires: its write time plus its ``ttl``, or never."""
    if record.ttl is None:
        return None
    return record.updated_at + timedelta(seconds=record.ttl)


_NOW = bindparam("now", type_=_c.expires_at.type)
_SELECT_ONE = select(*_COLUMNS).where(
    _c.class_name == bindparam("class_name"), _c.id == bindparam("id"), live(_NOW)
)
_SELECT_MANY = select(*_COLUMNS).where(
    tuple_(_c.class_name, _c.id).in_(bindparam("keys", expanding=True)), live(_NOW)
)
# Returns the deleted row's expiry: deleting an expired row reports "not found".
DELETE = (
    delete(_table)
    .where(_c.class_name == bindparam("class_name"), _c.id == bindparam("id"))
    .returning(_c.expires_at)
)
# The class's counter rows, kept exact by triggers (migration 0004_record_counts): at most
# 16 rows read through the primary key, whatever the number of records; less the class's rows
# that have expired and wait for the purge (a range of the partial index on (class_name,
# expires_at): no other class's rows are read).
_EXPIRED_IN_CLASS = (
    select(func.count())
    .select_from(_table)
    .where(_c.class_name == bindparam("class_name"), expired(_NOW))
    .scalar_subquery()
)
COUNT = select(
    func.coalesce(func.sum(counts_table.c.records), literal_column("0")) - _EXPIRED_IN_CLASS
).where(counts_table.c.class_name == bindparam("class_name"))
_DELETE_MANY = (
    delete(_table)
    .where(tuple_(_c.class_name, _c.id).in_(bindparam("keys", expanding=True)))
    .returning(_c.class_name, _c.id, _c.expires_at)
)
_NEWEST_FIRST = (_c.created_at.desc(), _c.id.desc())


def expired_classes_statement(*, lateral: bool) -> Select[Any]:
    """The classes from ``from_class`` on (in ``class_name`` order) that have rows expired at
    ``now``: at most ``limit`` of them.

    A skip-scan of the partial index on ``(class_name, expires_at)``: a recursive query steps
    from one class of expiring rows to the next (the index's first entry past the class), and
    a class's first entry holds its oldest expiry, which says whether it has expired rows.
    It costs a probe or two per class that has expiring rows, however many, reads no
    permanent row, and stops at the ``limit``-th class found. With ``lateral`` (PostgreSQL),
    a step reads the next class and its oldest expiry in one probe (``LATERAL``); without it
    (SQLite has no ``LATERAL``), a step reads the next class and a second probe its oldest
    expiry. The classes come from the table itself, not from the counter rows: a class whose
    counter rows are missing (deleted by hand, rows loaded with the triggers disabled) is
    found too.
    """
    expiring = _c.expires_at.is_not(None)
    from_class = bindparam("from_class", type_=_c.class_name.type)
    if lateral:

        def next_entry(after: Any) -> Select[Any]:
            return (
                select(_c.class_name, _c.expires_at.label("oldest"))
                .where(after, expiring)
                .order_by(_c.class_name, _c.expires_at)
                .limit(literal_column("1"))
            )

        walk = next_entry(_c.class_name >= from_class).cte("walk", recursive=True)
        step = next_entry(_c.class_name > walk.c.class_name).lateral("next_class")
        walk = walk.union_all(
            select(step.c.class_name, step.c.oldest).select_from(walk).join(step, true())
        )
        return select(walk.c.class_name).where(walk.c.oldest <= _NOW).limit(bindparam("limit"))

    def next_class(after: Any) -> Any:
        query = select(_c.class_name).where(after, expiring).order_by(_c.class_name)
        return query.limit(literal_column("1")).scalar_subquery()

    first = select(next_class(_c.class_name >= from_class).label("class_name"))
    classes = first.cte("walk", recursive=True)
    classes = classes.union_all(
        select(next_class(_c.class_name > classes.c.class_name)).where(
            classes.c.class_name.is_not(None)
        )
    )
    oldest_expiry = (
        select(_c.expires_at)
        .where(_c.class_name == classes.c.class_name, expiring)
        .order_by(_c.expires_at)
        .limit(literal_column("1"))
        .scalar_subquery()
    )
    return (
        select(classes.c.class_name)
        .where(classes.c.class_name.is_not(None), oldest_expiry <= _NOW)
        .limit(bindparam("limit"))
    )


EXPIRED_CLASSES = expired_classes_statement(lateral=False)


def purge_statement(keys_among: Callable[[Any, Select[Any]], Any]) -> Any:
    """The purge of one class: delete at most ``limit`` of ``class_name``'s rows expired at
    ``now``, oldest first.

    The chunk of ids, oldest first, comes from the index on ``(class_name, expires_at)``, and
    each row is then found through the primary key: ``keys_among(class_name, chunk)`` makes
    the condition on the key from the class and the chunk's SELECT (for PostgreSQL an array of
    ids, so that the planner cannot hash the whole table instead, as it did for
    ``(class_name, id) IN (...)`` of a table of 100,000 rows; SQLite probes its primary key
    for ``(class_name, id) IN (...)``, where for ``class_name = ? AND id IN (...)`` it read all
    the class's expired rows in the index). The outer condition is checked again on the row as
    it is when its lock is taken (PostgreSQL, READ COMMITTED): a write that renewed the record
    meanwhile (a forced or last-write-wins save of an expired record) keeps it. Run by
    :func:`purge_classes`, for the classes :func:`expired_classes_statement` lists.
    """
    class_name: Any = bindparam("class_name")
    chunk = (
        select(_c.id)
        .where(_c.class_name == class_name, expired(_NOW))
        .order_by(_c.expires_at)
        .limit(bindparam("limit"))
    )
    return delete(_table).where(keys_among(class_name, chunk), expired(_NOW))


PURGE = purge_statement(
    lambda _, chunk: tuple_(_c.class_name, _c.id).in_(chunk.with_only_columns(_c.class_name, _c.id))
)


CLASSES_AT_ONCE = 100
"""How many classes :func:`purge_classes` lists at a time: enough for one listing in the
usual case (a few classes with expiring rows), few enough that the listing stops early
when the first classes hold ``limit`` expired rows between them."""


async def purge_classes(
    expired_classes: Callable[[str, int], Awaitable[Sequence[str]]],
    purge: Callable[[str, int], Awaitable[int]],
    limit: int,
) -> int:
    """Delete at most ``limit`` expired rows, class after class; return how many went.

    ``expired_classes(from_class, n)`` lists at most ``n`` classes with expired rows, from
    ``from_class`` on (:func:`expired_classes_statement`); ``purge(class_name, n)`` runs the
    purge statement of one class (``n`` its limit): one that deletes fewer rows than asked
    has emptied its class. A list shorter than asked held every class left with expired rows:
    when its classes are done, so is the purge (a purge with nothing to delete is one
    statement). After a full list, the next one starts at its last class (emptied by then,
    so listed again only if it has expired rows again), unless the list's classes gave
    nothing (their rows taken meanwhile by another purge or renewed by writes): the purge
    ends there rather than list the same classes again and again.
    """
    total = 0
    from_class = ""  # (sorts before every other text)
    while total < limit:
        wanted = min(limit - total, CLASSES_AT_ONCE)
        classes = await expired_classes(from_class, wanted)
        listed_at = total
        for class_name in classes:
            while total < limit:
                asked = limit - total
                deleted = max(await purge(class_name, asked), 0)  # (-1: the driver cannot tell)
                total += deleted
                if deleted < asked:
                    break
            if total >= limit:
                break
        if len(classes) < wanted or total == listed_at:
            break  # (nothing deleted from a list: a concurrent purge, or writes, took them)
        from_class = classes[-1]
    return total


def page_statement(columns: Sequence[Any], *, after: bool) -> Select[Any]:
    """A page of one class's rows, newest first: one SELECT of ``columns``.

    With ``after``, the rows whose ``(created_at, id)`` is smaller than the bound cursor
    (``after_created_at``, ``after_id``): a row-value comparison that the index on
    ``(class_name, created_at, id)`` answers with one range scan, read backwards, stopped
    after ``limit`` rows. The cursor is a sort key, so it holds when its row is deleted (or
    expired). Expired rows are left out (the bound ``now``).
    """
    query = select(*columns).where(_c.class_name == bindparam("class_name"), live(_NOW))
    if after:
        cursor = tuple_(
            bindparam("after_created_at", type_=_c.created_at.type),
            bindparam("after_id", type_=_c.id.type),
        )
        query = query.where(tuple_(_c.created_at, _c.id) < cursor)
    return query.order_by(*_NEWEST_FIRST).limit(bindparam("limit"))


_PAGE_FIRST = page_statement(_COLUMNS, after=False)
_PAGE_AFTER = page_statement(_COLUMNS, after=True)


def upsert(insert: Any) -> Any:
    """``insert`` (a dialect's INSERT) made an unconditional upsert (last write wins).

    It keeps ``created_at`` of old rows and increments their revision; new rows, and rows that
    had expired (a new record in the same place), get the INSERT's revision (1) and
    ``created_at``.
    """
    replaced = expired(insert.excluded.updated_at)
    return insert.on_conflict_do_update(
        index_elements=[_c.class_name, _c.id],
        set_={
            "data": insert.excluded.data,
            "data_exact": insert.excluded.data_exact,
            "schema_version": insert.excluded.schema_version,
            "updated_at": insert.excluded.updated_at,
            "expires_at": insert.excluded.expires_at,
            "created_at": case((replaced, insert.excluded.created_at), else_=_c.created_at),
            "revision": case(
                (replaced, literal_column("1")), else_=_c.revision + literal_column("1")
            ),
        },
    )


def _same_created_at(times_as_text: bool) -> Any:
    """The update's condition that the stored ``created_at`` is the one the writer read."""
    held = bindparam("b_created_at", type_=_c.created_at.type)
    if not times_as_text:
        return _c.created_at == held
    # julianday() reads any spelling SQLite knows, to about 40 microseconds: the exact text
    # first, so that the library's own rows keep the exact comparison.
    return or_(_c.created_at == held, func.julianday(_c.created_at) == func.julianday(held))


def delete_checked_statement(times_as_text: bool) -> Any:
    """``DELETE`` only at the revision the caller read and, when it knows it (``b_created_at``
    not NULL), with the ``created_at`` it read: a row changed, or deleted and created again,
    since is left alone. ``times_as_text``: as in :func:`write_statements`."""
    held = bindparam("b_created_at", type_=_c.created_at.type)
    same = _c.created_at == func.coalesce(held, _c.created_at)
    if times_as_text:
        same = or_(same, func.julianday(_c.created_at) == func.julianday(held))
    return DELETE.where(_c.revision == bindparam("revision"), same)


DELETE_CHECKED = delete_checked_statement(times_as_text=False)


def write_statements(
    insert: Callable[..., Any],
    data: Callable[[str], Any],
    *,
    returning: bool = True,
    times_as_text: bool = False,
) -> dict[str, Any]:
    """The three single-record writes, each one statement returning the new revision.

    * ``insert``: a new record (expected revision 0): inserts, or takes the place of an
      expired row, or returns no row if a live record has the id;
    * ``update``: an existing record at ``expected``: updates it only if the stored revision is
      still that one, its ``created_at`` still the one read (a record deleted and created
      again is another one) and it has not expired, so a deleted or expired record is never written
      back; under READ COMMITTED PostgreSQL re-checks the condition on the newest row version
      after waiting for a concurrent writer, so two writers expecting the same revision cannot
      both succeed;
    * ``upsert``: last write wins.

    A write's ``updated_at`` is its "now" for expiry. The UPDATE's parameters are prefixed
    ``b_`` (SQLAlchemy reserves column names there).

    Args:
        insert: The dialect's ``insert``.
        data: Makes the bound value of the ``data`` column from a parameter name (a dialect
            may cast the text).
        returning: Whether the statements return the new revision (without it, a write that
            found another revision changes no row).
        times_as_text: The database keeps times as text (SQLite): a ``created_at`` spelt
            otherwise than SQLAlchemy spells it (a row written by SQL, whose column default is
            ``CURRENT_TIMESTAMP``, or by another tool) is compared as an instant.
    """
    values = {
        "class_name": bindparam("class_name"),
        "id": bindparam("id"),
        "schema_version": bindparam("schema_version"),
        "data": data("data"),
        "data_exact": bindparam("data_exact", type_=Text()),
        "created_at": bindparam("created_at"),
        "updated_at": bindparam("updated_at"),
        "expires_at": bindparam("expires_at", type_=_c.expires_at.type),
        "revision": literal_column("1"),
    }
    new = insert(_table).values(values)
    changed = (
        update(_table)
        .where(
            _c.class_name == bindparam("b_class_name"),
            _c.id == bindparam("b_id"),
            _c.revision == bindparam("b_expected"),
            _same_created_at(times_as_text),
            live(bindparam("b_updated_at", type_=_c.updated_at.type)),
        )
        .values(
            schema_version=bindparam("b_schema_version"),
            data=data("b_data"),
            data_exact=bindparam("b_data_exact", type_=Text()),
            updated_at=bindparam("b_updated_at"),
            expires_at=bindparam("b_expires_at", type_=_c.expires_at.type),
            revision=_c.revision + literal_column("1"),
        )
    )
    take_expired = new.on_conflict_do_update(
        index_elements=[_c.class_name, _c.id],
        set_={
            name: getattr(new.excluded, name)
            for name in values
            if name not in ("class_name", "id", "revision")
        }
        | {"revision": literal_column("1")},
        where=expired(new.excluded.updated_at),
    )
    writes = {"insert": take_expired, "update": changed, "upsert": upsert(new)}
    if not returning:
        return writes
    return {kind: statement.returning(_c.revision) for kind, statement in writes.items()}


def _json_bytes_as_text(name: str) -> Any:
    """The bound value of SQLite's ``data`` column: the JSON's UTF-8 bytes, stored as text.

    ``CAST(? AS TEXT)`` stores the same text a bound ``str`` would, without the decoded copy
    of the document a ``str`` costs the client (a 100 MB save peaked at 4.0x the JSON, 3.0x
    with bytes: the JSON, sqlite3's copy of the bound value and the row it assembles; see
    ``bench/rss_sqlite_floor.py``).
    """
    return cast(bindparam(name, type_=LargeBinary()), Text())


def write_parameters(record: StoredRecord) -> tuple[str, dict[str, Any]]:
    """Which of :func:`write_statements` writes ``record`` (SQLite's JSON), and its parameters."""
    parameters = {
        "class_name": record.class_name,
        "id": record.id,
        "schema_version": record.schema_version,
        "data": record.data,  # bytes: see _json_bytes_as_text
        "data_exact": None,  # SQLite's JSON column keeps the text as written
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "expires_at": expires_at(record),
    }
    expected = record.revision
    if expected is None:
        return "upsert", parameters
    if expected == 0:
        return "insert", parameters
    parameters = {f"b_{k}": v for k, v in parameters.items()}
    parameters["b_expected"] = expected
    return "update", parameters


async def conflict(connection: AsyncConnection, record: StoredRecord) -> ConcurrencyError:
    """The error for a write of ``record`` that found another revision (read now)."""
    current = (
        await connection.execute(
            REVISION, {"class_name": record.class_name, "id": record.id, "now": _now()}
        )
    ).scalar_one_or_none()
    return ConcurrencyError(
        record.class_name, record.id, expected=record.revision or 0, current=current, ttl=record.ttl
    )


REVISION = select(_c.revision).where(
    _c.class_name == bindparam("class_name"), _c.id == bindparam("id"), live(_NOW)
)


def deleted_at(class_name: str, id: UUID, revision: int, current: int | None) -> bool:
    """The outcome of a checked delete whose statement deleted no live row, from the revision
    read after it (``None``: no record).

    A record there was found at another revision, or at this one with another ``created_at``
    (deleted and created again since), or changed since: it was left alone.

    Raises:
        ConcurrencyError: The record exists; nothing was deleted.
    """
    if current is None:
        return False
    raise ConcurrencyError(class_name, id, expected=revision, current=current, deleting=True)


def json_passthrough(value: Any) -> str:
    """The engine's JSON serializer: text is already JSON; anything else is encoded."""
    return value if isinstance(value, str) else json.dumps(value)


def json_as_text(value: Any) -> Any:
    """The engine's JSON deserializer: keep the text, Pydantic parses it."""
    return value


class SQLAlchemyBackend(RecordBackend):
    """A store in the ``external_records`` table, reached through an async SQLAlchemy engine.

    Subclasses create the engine (:meth:`_create_engine`) and name the dialect's upsert
    (:attr:`_insert`).

    Args:
        url: The storage URL.
        engine: The application's own engine for this database, used instead of one made
            from the URL (see :func:`pydantic_toast.use_engine`). Its owner disposes of it.
    """

    _insert: Callable[..., Any]
    # Whether the database keeps times as text (see write_statements).
    _times_as_text = False
    # Whether a cancelled operation runs on to its end before the cancellation is raised (a
    # driver whose statements cannot be abandoned half-way; see SQLiteBackend).
    _finish_when_cancelled = False

    def __init__(self, url: str, *, engine: AsyncEngine | None = None) -> None:
        super().__init__(url)
        self._parsed = StorageURL.parse(url)
        self._given = engine
        self._engine: AsyncEngine | None = None
        self._writes = write_statements(
            self._insert, _json_bytes_as_text, times_as_text=self._times_as_text
        )
        self._delete_checked = delete_checked_statement(self._times_as_text)

    def _create_engine(self) -> AsyncEngine:
        raise NotImplementedError

    @property
    def engine(self) -> AsyncEngine:
        """The connected engine (after :meth:`connect`)."""
        if self._engine is None:
            raise StorageUsageError(f"{self!r} is not connected: call connect() first")
        return self._engine

    async def connect(self) -> None:
        """Create the engine (or take the one handed in) and check that the table exists."""
        await self._open_engine()

        async def check(connection: AsyncConnection) -> None:
            await connection.execute(COUNT.limit(0), {"class_name": "", "now": _now()})

        try:
            await self._run(check)
        except BaseException:
            await self.disconnect()
            raise

    async def _open_engine(self) -> None:
        if self._given is None:
            self._engine = self._create_engine()
            return
        if is_library_loop(asyncio.get_running_loop()):
            raise StorageUsageError(
                f"{self!r} uses an engine handed in with use_engine(), which belongs to the "
                "application's event loop: use the async API (await obj.asave(), await "
                "Model.aload(...)) for its models, not model_dump()/model_validate()"
            )
        # Its pool, with connections that autocommit while this backend holds them (as the
        # library's own engines' do): otherwise a statement run through SQLAlchemy (every
        # SQLite operation, a batch delete) began a transaction that was rolled back when the
        # connection went back to the pool, and the write was lost without an error.
        self._engine = self._given.execution_options(isolation_level="AUTOCOMMIT")

    async def disconnect(self) -> None:
        """Close the engine's pool (an engine handed in is left to its owner)."""
        engine, self._engine = self._engine, None
        if engine is not None and self._given is None:
            await engine.dispose()

    def _same_store(self, url: URL) -> bool:
        """Whether a SQLAlchemy URL reaches this backend's store (for joined transactions)."""
        return False

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        """Write the records, each checked against its expected revision; all or none.

        One statement per record; several records run in one ``BEGIN IMMEDIATE``
        transaction, rolled back at the first conflict (inside :func:`~pydantic_toast.transaction`,
        in a savepoint of the caller's transaction, which a conflict rolls back).
        """
        write_one = self._write_record
        joined = joined_connection(self._same_store) is not None

        async def write(connection: AsyncConnection) -> list[int]:
            if len(records) == 1:
                return [await write_one(connection, records[0])]
            if joined:  # BEGIN inside the caller's transaction would fail
                await self._begin_joined(connection)
                async with connection.begin_nested():
                    return [await write_one(connection, record) for record in records]
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                revisions = [await write_one(connection, record) for record in records]
            except BaseException:
                await connection.exec_driver_sql("ROLLBACK")
                raise
            await connection.exec_driver_sql("COMMIT")
            return revisions

        return await self._run(write)

    async def _begin_joined(self, connection: AsyncConnection) -> None:
        """Make sure the caller's transaction has begun in the database (see SQLite's)."""

    async def _write_record(self, connection: AsyncConnection, record: StoredRecord) -> int:
        """Write one record by its conditional statement; return its new revision.

        Raises:
            ConcurrencyError: The record is at another revision.
        """
        kind, parameters = write_parameters(record)
        revision = (await connection.execute(self._writes[kind], parameters)).scalar_one_or_none()
        if revision is None:
            raise await conflict(connection, record)
        return int(revision)

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Read the records in one statement, in the order of ``keys``."""
        now = _now()
        if len(keys) == 1:
            ((class_name, id),) = keys
            parameters = {"class_name": class_name, "id": id, "now": now}
            rows = await self._select("select one", _SELECT_ONE, parameters)
            return [_to_record(rows[0]) if rows else None]

        async def read(connection: AsyncConnection) -> dict[RecordKey, StoredRecord]:
            result = await connection.execute(_SELECT_MANY, {"keys": list(keys), "now": now})
            return {(row.class_name, row.id): _to_record(row) for row in result}

        found = await self._run(read)
        return [found.get(key) for key in keys]

    async def delete(self, id: UUID, class_name: str) -> bool:
        """Delete one record; return whether it existed (an expired row did not)."""
        now = _now()

        async def delete(connection: AsyncConnection) -> bool:
            result = await connection.execute(DELETE, {"class_name": class_name, "id": id})
            return any(row.expires_at is None or row.expires_at > now for row in result)

        return await self._run(delete)

    async def delete_checked(
        self, id: UUID, class_name: str, revision: int, *, created_at: datetime | None = None
    ) -> bool:
        """Delete one record at ``revision`` (and ``created_at``): one statement; its revision
        is read on a miss."""
        now = _now()
        key = {"class_name": class_name, "id": id}
        checked = {**key, "revision": revision, "b_created_at": created_at}

        async def delete(connection: AsyncConnection) -> tuple[bool, int | None]:
            result = await connection.execute(self._delete_checked, checked)
            if any(row.expires_at is None or row.expires_at > now for row in result):
                return True, revision
            return False, (await connection.execute(REVISION, {**key, "now": now})).scalar()

        deleted, current = await self._run(delete)
        return deleted or deleted_at(class_name, id, revision, current)

    async def delete_records(self, keys: Sequence[RecordKey]) -> list[bool]:
        """Delete the records in one statement; whether each existed (an expired one did not)."""
        if not keys:
            return []
        now = _now()

        async def delete(connection: AsyncConnection) -> set[RecordKey]:
            result = await connection.execute(_DELETE_MANY, {"keys": list(keys)})
            return {
                (row.class_name, row.id)
                for row in result
                if row.expires_at is None or row.expires_at > now
            }

        existed = await self._run(delete)
        return [key in existed for key in keys]

    async def purge_expired(self, *, limit: int) -> int:
        """Delete at most ``limit`` expired rows: the classes that have some, listed in one
        statement, then a statement per class; return how many went."""
        now = _now()

        async def purge(connection: AsyncConnection) -> int:
            async def expired_classes(from_class: str, classes: int) -> list[str]:
                parameters = {"from_class": from_class, "now": now, "limit": classes}
                return list((await connection.execute(EXPIRED_CLASSES, parameters)).scalars())

            async def one_class(class_name: str, rows: int) -> int:
                parameters = {"class_name": class_name, "now": now, "limit": rows}
                result = await connection.execute(PURGE, parameters)
                return int(getattr(result, "rowcount", 0))

            return await purge_classes(expired_classes, one_class, limit)

        return await self._run(purge)

    async def list_records(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[StoredRecord]:
        """Records newest first (``created_at``, then id), past ``after``: one SELECT."""
        parameters: dict[str, Any] = {"class_name": class_name, "limit": limit, "now": _now()}
        if after is not None:
            parameters["after_created_at"], parameters["after_id"] = after

        if after is None:
            rows = await self._select("page first", _PAGE_FIRST, parameters)
        else:
            rows = await self._select("page after", _PAGE_AFTER, parameters)
        return [_to_record(row) for row in rows]

    async def count(self, class_name: str) -> int:
        """How many records of ``class_name`` are stored."""
        parameters = {"class_name": class_name, "now": _now()}
        ((count,),) = await self._select("count", COUNT, parameters)
        return int(count)

    async def list_class_names(self) -> list[str]:
        """The class names that have rows (expired ones too, until purged): one SELECT
        DISTINCT, which walks the primary key's index."""

        async def read(connection: AsyncConnection) -> list[str]:
            result = await connection.execute(select(_c.class_name).distinct())
            return [str(name) for (name,) in result]

        return await self._run(read)

    async def _select(
        self, name: str, statement: Select[Any], parameters: dict[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """The rows ``statement`` selects with ``parameters``, converted by its columns' types.

        ``name`` names the statement (one per statement) for a subclass that compiles it
        once and runs it on the driver (SQLite).
        """

        async def read(connection: AsyncConnection) -> Sequence[Sequence[Any]]:
            rows: Sequence[Sequence[Any]] = (await connection.execute(statement, parameters)).all()
            return rows

        return await self._run(read)

    async def _before_joined_savepoint(self, connection: AsyncConnection) -> None:
        """Run inside a joined session's nested transaction before the session emits its
        savepoint (see :func:`~pydantic_toast.runtime.transaction.statement_connection`)."""

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection (errors from the connecting step are marked as such).

        Inside :func:`~pydantic_toast.transaction` on this store: the caller's connection.
        """
        joined = await statement_connection(
            self._same_store, before_savepoint=self._before_joined_savepoint
        )
        if joined is not None:
            yield joined
            return
        connection = self.engine.connect()
        # A connection being opened is seen through even when the caller is cancelled (then
        # closed at once): abandoned half-way, its file or socket would stay open until the
        # garbage collector finds it.
        try:
            await see_through(connection.start(), then=connection.close)
        except Exception as exc:
            connecting(exc)
            raise
        try:
            yield connection
        finally:
            await connection.close()

    async def _run(self, operation: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``operation`` on a pooled connection."""
        if self._finish_when_cancelled and joined_connection(self._same_store) is None:
            return await see_through(self._run_on_connection(operation))
        return await self._run_on_connection(operation)

    async def _run_on_connection(self, operation: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async with self._connection() as connection:
            return await operation(connection)

    def pool_connections(self) -> tuple[int, int] | None:
        """The engine's pool: connections checked out, and checked in (idle)."""
        engine = self._engine
        pool = engine.sync_engine.pool if engine is not None else None
        if not isinstance(pool, QueuePool):  # NullPool, StaticPool: nothing to count
            return None
        return pool.checkedout(), pool.checkedin()

    async def discard_connections(self) -> None:
        """Close the pool: after a lost connection its idle connections are likely dead."""
        if self._engine is not None:
            await self._engine.dispose()


async def see_through(
    work: Awaitable[T], *, then: Callable[[], Awaitable[object]] | None = None
) -> T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile.

    A cancellation that arrives meanwhile is raised once ``work`` is done (after ``then()``,
    which undoes it); the result or error of ``work`` is then dropped.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            cancelled = True
    if not cancelled:
        return task.result()
    if task.cancelled() or task.exception() is not None:  # retrieved: no "never retrieved"
        raise asyncio.CancelledError
    if then is not None:
        await then()
    raise asyncio.CancelledError


def _now() -> datetime:
    """The time expiry is judged against: the application's clock, as for ``ttl`` itself."""
    return datetime.now(UTC)


def _to_record(row: Sequence[Any]) -> StoredRecord:
    """The record in a row of :data:`_COLUMNS`."""
    class_name, id, schema_version, data, created_at, updated_at, revision = row
    # JSON text; on SQLite, bytes of it for a record written in pieces
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, bytes):
        data = json.dumps(data).encode()
    return read_record(class_name, id, data, schema_version, created_at, updated_at, revision)
