"""``postgresql://``: the ``external_records`` table through SQLAlchemy's async engine (asyncpg).

URLs are written as for libpq: ``postgresql://user:password@host:5432/db?sslmode=require``.
``postgres://``, ``postgresql+asyncpg://`` and SQLAlchemy's libpq drivers' schemes
(``postgresql+psycopg://``, ``postgresql+psycopg2://``) work too. Query options:

* ``sslmode`` (``disable``, ``allow``, ``prefer``, ``require``, ``verify-ca``, ``verify-full``),
  ``sslrootcert``, ``sslcert``, ``sslkey``: as in libpq, whatever the driver in the scheme
  (asyncpg's ``ssl=`` is refused with the ``sslmode=`` to write instead);
* ``pool_size`` (default 20): connections kept per event loop, opened as needed (the one
  returned last is reused first), and ``max_overflow`` (default 0): more connections opened
  under load, closed when returned;
* ``connect_timeout`` (seconds, default 10) and ``command_timeout`` (seconds, default 60);
* ``application_name``: shown in ``pg_stat_activity``;
* ``replicas`` and ``read_your_writes``: read replicas
  (:mod:`~pydantic_toast.backends.postgresql_replicas`);
* ``batch_size`` (default 1000): records per statement when a batch is saved or loaded (a
  larger batch runs several statements; a save keeps them in one transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn
from urllib.parse import urlencode
from uuid import UUID

import asyncpg
from asyncpg.protocol import NO_TIMEOUT
from sqlalchemy import (
    URL,
    Double,
    Text,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql import ClauseElement, ColumnElement, Select
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.util import greenlet_spawn

from pydantic_toast._exceptions import (
    ConcurrencyError,
    StorageConfigurationError,
    StorageUsageError,
    StoredDataError,
    shorten,
)
from pydantic_toast._records import (
    ClassKeys,
    PageCursor,
    RecordKey,
    StoredRecord,
    read_record,
    written_by,
)
from pydantic_toast._url import StorageURL
from pydantic_toast.backends import postgresql_staging as staging
from pydantic_toast.backends.base import Capability, batch_size_of, batch_spans
from pydantic_toast.backends.jsonb import exact_text, needs_exact_text, refuse_unstorable
from pydantic_toast.backends.postgresql_replicas import (
    ON_PRIMARY,
    REPLICA_OPTIONS,
    Replicas,
    replica_options,
)
from pydantic_toast.backends.postgresql_watchdog import Watchdog
from pydantic_toast.backends.sql import (
    COUNT,
    DELETE,
    DELETE_CHECKED,
    REVISION,
    SQLAlchemyBackend,
    deleted_at,
    expired_classes_statement,
    expires_at,
    json_as_text,
    json_passthrough,
    live,
    page_statement,
    purge_classes,
    purge_statement,
    write_statements,
)
from pydantic_toast.backends.sql_logging import ENGINE_LOGGING_NAME, redact_log_arguments
from pydantic_toast.backends.sql_table import TABLE_NAME, records_table
from pydantic_toast.runtime.boundary import connecting, ended_unknown, not_applied
from pydantic_toast.runtime.errors import sqlstate
from pydantic_toast.runtime.gate import Gate
from pydantic_toast.runtime.loops import unwinding_interrupt
from pydantic_toast.runtime.rollbacks import saves_on
from pydantic_toast.runtime.transaction import (
    joined_connection,
    joined_save,
    statement_connection,
)

__all__ = ["PostgreSQLBackend", "engine_options"]

redact_log_arguments(f"sqlalchemy.engine.Engine.{ENGINE_LOGGING_NAME}")  # rows, at DEBUG

# A pooled connection: SQLAlchemy's proxy, or the pool's entry leased as it is.
_Lease = PoolProxiedConnection | ConnectionPoolEntry

_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SSL_FILES = ("sslrootcert", "sslcert", "sslkey")
_NUMBERS = {"pool_size": 20, "max_overflow": 0, "connect_timeout": 10.0, "command_timeout": 60.0}
_OPTIONS = {"sslmode", *_SSL_FILES, *_NUMBERS, "application_name", *REPLICA_OPTIONS, "batch_size"}


def _number(url: StorageURL, name: str, default: float) -> float:
    """Option ``name`` of ``url``: a whole number for a pool size (at least 1; 0 or more for
    ``max_overflow``), a finite number of seconds above 0 for a timeout.

    Raises:
        StorageConfigurationError: It is not such a number (asyncpg refused a timeout of 0
            only when connecting, and took ``nan`` or ``inf``; ``pool_size=2.5`` became 2).
    """
    raw = url.query.get(name)
    if raw is None:
        return default
    whole = isinstance(default, int)
    least = 0 if name == "max_overflow" else 1
    wanted = f"a whole number of {least} or more" if whole else "a number of seconds above 0"
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        value = None
    if value is None or not (value >= least if whole else 0 < value < math.inf):
        raise StorageConfigurationError(
            f"{url.masked}: {name} must be {wanted}, got {shorten(raw)!r}"
        )
    return value


def engine_options(url: StorageURL) -> tuple[URL, dict[str, Any]]:
    """The SQLAlchemy URL and ``create_async_engine`` options for a libpq-style URL.

    Raises:
        StorageConfigurationError: An option is unknown or has a bad value.
    """
    if "ssl" in url.query:
        raise StorageConfigurationError(_ssl_spelling(url))
    unknown = sorted(set(url.query) - _OPTIONS)
    if unknown:
        raise StorageConfigurationError(
            f"{url.masked}: unknown option(s) {shorten(', '.join(unknown))}; PostgreSQL URLs take "
            f"{', '.join(sorted(_OPTIONS))}"
        )
    numbers = {name: _number(url, name, default) for name, default in _NUMBERS.items()}
    connect_args: dict[str, Any] = {
        "timeout": numbers["connect_timeout"],
        "command_timeout": numbers["command_timeout"],
        "ssl": _ssl_option(url),
    }
    if url.query.get("sslmode", "prefer") in ("allow", "prefer"):
        files = {name: url.query[name] for name in _SSL_FILES if name in url.query}
        if files:
            # asyncpg takes any SSLContext for sslmode=require (no fallback to plain text), so
            # these modes go by name; it then reads the files from a DSN, as libpq does.
            connect_args["dsn"] = f"postgresql://?{urlencode(files)}"
    # JIT never pays off for single-row statements, and it slows asyncpg's per-connection
    # type introspection (tens of ms for each new connection's first statements).
    connect_args["server_settings"] = {"jit": "off"}
    if "application_name" in url.query:
        connect_args["server_settings"]["application_name"] = url.query["application_name"]
    sa_url = URL.create(
        "postgresql+asyncpg",
        username=url.username,
        password=url.password,
        host=url.host,
        port=url.port,
        database=url.path.lstrip("/") or None,
    )
    options: dict[str, Any] = {
        "isolation_level": "AUTOCOMMIT",
        # Nothing to reset: every statement commits on its own.
        "pool_reset_on_return": None,
        "hide_parameters": True,
        "logging_name": ENGINE_LOGGING_NAME,
        "pool_size": int(numbers["pool_size"]),
        "max_overflow": int(numbers["max_overflow"]),
        # The connection returned last is taken first: after a burst, one connection (one
        # warm server process) serves the sequential operations instead of all of them in
        # turn (FIFO made a 10-field load 1.8x slower). Waiters keep their order in the gate.
        "pool_use_lifo": True,
        "pool_timeout": numbers["connect_timeout"],
        "json_serializer": json_passthrough,
        "json_deserializer": json_as_text,
        "connect_args": connect_args,
    }
    return sa_url, options


def _ssl_spelling(url: StorageURL) -> str:
    """The refusal of ``ssl=``: asyncpg's (and SQLAlchemy's asyncpg URLs') spelling of libpq's
    ``sslmode=``, which is what this library's URLs take, whatever the driver in the scheme."""
    value = url.query["ssl"]
    # asyncpg's ssl=true is a default SSLContext: the certificate and host name are verified.
    mode = value.lower().replace("_", "-")  # asyncpg also takes verify_full, verify_ca
    if mode in ("true", "1", "yes", "on"):
        mode = "verify-full"
    if mode in ("false", "0", "no", "off"):
        mode = "disable"
    if "sslmode" in url.query:
        fix = "remove ssl= (the URL's sslmode= applies)"
    elif mode in _SSL_MODES:
        fix = f"write sslmode={mode} instead"
    else:
        fix = f"write sslmode= instead, one of {', '.join(_SSL_MODES)}"
    return (
        f"{url.masked}: ssl={shorten(value)!r} is asyncpg's spelling of the TLS option; "
        f"PostgreSQL URLs here take libpq's (sslmode, sslrootcert, sslcert, sslkey) for every "
        f"driver in the scheme, so {fix}"
    )


def _ssl_option(url: StorageURL) -> Any:
    mode = url.query.get("sslmode", "prefer")
    if mode not in _SSL_MODES:
        raise StorageConfigurationError(
            f"{url.masked}: sslmode must be one of {', '.join(_SSL_MODES)}, got {mode!r}"
        )
    if mode == "disable":
        return False
    if mode in ("allow", "prefer", "require") and not any(f in url.query for f in _SSL_FILES):
        return mode
    context = _ssl_context(url, mode)
    # asyncpg takes any SSLContext for sslmode=require (TLS or no connection), so allow and
    # prefer go by name, and it loads their files itself (see engine_options); the context
    # built here checked those files when the URL was.
    return mode if mode in ("allow", "prefer") else context


def _ssl_context(url: StorageURL, mode: str) -> ssl.SSLContext:
    """The SSL context of ``mode`` with the URL's certificate files loaded.

    Raises:
        StorageConfigurationError: A file cannot be read, or holds no certificate or key.
    """
    try:
        if mode in ("allow", "prefer") or (mode == "require" and "sslrootcert" not in url.query):
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif mode == "require":  # libpq: require with a root certificate checks it (verify-ca)
            context = ssl.create_default_context(cafile=url.query["sslrootcert"])
            context.check_hostname = False
        else:
            context = ssl.create_default_context(cafile=url.query.get("sslrootcert"))
            context.check_hostname = mode == "verify-full"
        if "sslcert" in url.query:
            context.load_cert_chain(url.query["sslcert"], url.query.get("sslkey"))
    except (OSError, ssl.SSLError) as exc:
        files = " and ".join(f for f in _SSL_FILES if f in url.query)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StorageConfigurationError(
            f"{url.masked}: the {files} file(s) cannot be used ({shorten(reason)}): give "
            "readable PEM files (sslcert a certificate, sslkey its private key, sslrootcert the "
            "server's CA certificate)"
        ) from None
    return context


def _iso_utc(column: ColumnElement[datetime]) -> ColumnElement[str]:
    """``column``'s timestamp as ISO 8601 text in UTC, whatever the session's settings
    (``2026-01-02T03:04:05.123456+00:00``; no fraction when it is 0).

    JSON's text of a timestamp, which ``DateStyle`` leaves alone, without its quotes: a third
    of ``to_char``'s server time (0.4 against 1.3 µs a timestamp). NULL for a timestamp before
    year 1, a text ``datetime.fromisoformat`` refuses for infinity (or a year after 9999):
    :func:`_unreadable_timestamps` refuses both.
    """
    utc = func.timezone(literal_column("'UTC'"), column)
    text = func.btrim(cast(func.to_json(utc), Text), literal_column("'\"'")).concat(
        literal_column("'+00:00'")
    )
    return case((column >= literal_column("'0001-01-01 00:00:00+00'"), text)).label(column.key)


def _iso_text_utc(column: ColumnElement[datetime]) -> ColumnElement[str]:
    """:func:`_iso_utc`'s text, as the server writes a UTC timestamp under an ``ISO``
    ``DateStyle`` (``2026-01-02 03:04:05.123456+00:00``; no fraction when it is 0).

    A little less server time than :func:`_iso_utc`'s JSON text (and a third of ``to_char``'s),
    but the text follows the session's ``DateStyle``: only a connection that
    reports an ISO one runs it (see :func:`_iso_dates`). A year after 9999 or BC, or infinity,
    is text ``datetime.fromisoformat`` refuses, as under :func:`_iso_utc`.
    """
    utc = cast(func.timezone(literal_column("'UTC'"), column), Text).concat(
        literal_column("'+00:00'")
    )
    return case((column >= literal_column("'0001-01-01 00:00:00+00'"), utc)).label(column.key)


_ON_ISO_DATESTYLE = {
    "select_many": "select_many_iso",
    "select_class": "select_class_iso",
    "select_texts": "select_texts_iso",
}
"""The batch reads, and their forms taking timestamps as :func:`_iso_text_utc` writes them."""
_BATCH_READ_PARAMETERS = {
    "select_many": ["class_names", "ids", "now"],
    "select_class": ["ids", "class_name", "now"],
    "select_texts": ["ids", "class_name", "now"],
}


def _read_columns(
    columns: Sequence[ColumnElement[Any]],
    as_text: Callable[[ColumnElement[datetime]], ColumnElement[str]],
) -> list[ColumnElement[Any]]:
    """A read's ``columns``, the timestamps as ``as_text`` writes them, and ``updated_at`` as
    :data:`_AS_CREATED` when it equals ``created_at``.

    A record written once (the usual one) then has one timestamp to decode and parse, not two:
    ``datetime.fromisoformat`` and asyncpg's text decoding cost about 2,000 instructions a
    timestamp, a twentieth of a 10-field batch load.
    """
    c = records_table.c
    made = [
        as_text(column) if column.key in ("created_at", "updated_at") else column
        for column in columns
    ]
    at = [column.key for column in columns].index("updated_at")
    made[at] = case(
        (c.updated_at == c.created_at, literal_column(f"'{_AS_CREATED}'")),
        else_=as_text(c.updated_at),
    ).label("updated_at")
    return made


_AS_CREATED = "="
"""A read's ``updated_at`` of a record whose ``updated_at`` is its ``created_at``."""


def _iso_dates(driver: Any) -> bool:
    """Whether asyncpg connection ``driver``'s session writes dates in the ISO style.

    The server reports every change of ``DateStyle`` to the client (asyncpg keeps the last
    value it reported), so a ``SET DateStyle`` on a pooled connection is seen at its next use.
    """
    return str(getattr(driver.get_settings(), "DateStyle", "")).startswith("ISO")


# A purge chunk's ids as an array: ``id = ANY(array)`` with the class is a condition on the
# primary key, probed once per id; ``IN (SELECT ...)`` left the plan to the statistics, and
# PostgreSQL hashed a sequential scan of the whole table for each chunk (29-45 ms against
# 8-11 ms per chunk of 1,000 rows beside 100,000 expired and 100,000 permanent rows, medians
# of three runs; bench/pg_expiry_plans.py).
_PURGE = purge_statement(
    lambda class_name, chunk: (
        (records_table.c.class_name == class_name)
        & (records_table.c.id == any_(func.array(chunk.scalar_subquery())))
    )
)


def _key_by_key(
    keys: TableValuedAlias,
    matches: ColumnElement[bool],
    columns: Sequence[ColumnElement[Any]],
    now_seconds: ColumnElement[datetime],
) -> Select[Any]:
    """A batch read that looks each of ``keys`` up in the primary key, one probe per key.

    A plain join of the keys and the table left the plan to the statistics: for a class of
    some thousands to tens of thousands of rows the planner hashed every row of the class for
    each chunk of 1,000 keys, a cost that grew with the class (``bench/pg_load_plan.py``; in
    ``bench/run.py`` an async batch load of 10,000 records went from 164 to 417 ms as its
    table grew). A ``LATERAL`` subquery with ``LIMIT 1`` cannot be flattened into a join: the
    planner can only run it once per key, as an index probe.
    """
    one = select(*columns).where(matches, live(now_seconds)).limit(literal_column("1"))
    record = one.lateral("record")
    return select(keys.c.position, *record.c).select_from(keys).join(record, true())


def _batch_reads(
    columns: Sequence[ColumnElement[Any]], now_seconds: ColumnElement[datetime]
) -> dict[str, Select[Any]]:
    """The batch read statements (``select_many``, ``select_class``, ``select_texts``), each
    row ``position`` and then ``columns``."""
    c = records_table.c
    # A batch's rows say which key they answer by its position: no class_name and id to
    # decode (a UUID object per row) and no dict of keys to match them through.
    keys = (
        func.unnest(
            bindparam("class_names", type_=ARRAY(Text())), bindparam("ids", type_=ARRAY(c.id.type))
        )
        .table_valued("class_name", "id", with_ordinality="position")
        .render_derived(with_types=False)
    )
    select_many = _key_by_key(
        keys, (c.class_name == keys.c.class_name) & (c.id == keys.c.id), columns, now_seconds
    )

    def of_one_class(ids: ColumnElement[Any]) -> Select[Any]:
        """A batch of one class (the usual one): its name once, not an array of the same name."""
        numbered = (
            func.unnest(ids)
            .table_valued("id", with_ordinality="position")
            .render_derived(with_types=False)
        )
        matches = (c.class_name == bindparam("class_name")) & (c.id == numbered.c.id)
        return _key_by_key(numbered, matches, columns, now_seconds)

    select_class = of_one_class(bindparam("ids", type_=ARRAY(c.id.type)))
    # The same, its ids sent as their canonical texts joined by commas, one text parameter:
    # asyncpg encodes a uuid[] element by element (4,000 instructions an id: ABC checks for
    # nested arrays, then UUID.bytes), where a batch's references already hold the texts.
    joined = bindparam("ids", type_=Text())
    select_texts = of_one_class(
        cast(func.string_to_array(joined, literal_column("','")), ARRAY(c.id.type))
    )
    return {"select_many": select_many, "select_class": select_class, "select_texts": select_texts}


def _unreadable_timestamps(class_name: str, id: UUID) -> StoredDataError:
    """What a loaded row whose timestamp ``datetime.fromisoformat`` refused raises.

    See :func:`_iso_utc`: NULL (a year before 1) makes it raise ``TypeError``, infinity (an
    empty text) ``ValueError``. The rows' loops call it inline, without a function per row.
    """
    return StoredDataError(
        f"the stored {class_name} record {id} has a created_at or updated_at that Python's "
        "datetime cannot hold (infinite, or outside years 1-9999); it is left untouched",
        class_name=class_name,
        id=id,
    )


_from_iso = datetime.fromisoformat
# The running task of a loop. On Python 3.11, asyncio.current_task(loop) is a Python function
# reading asyncio's own map of them (1,000 instructions a statement): the map is read directly.
_current_task: Any = (
    asyncio.current_task if sys.version_info >= (3, 12) else asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]
)


def _compile(statement: ClauseElement) -> tuple[str, list[str]]:
    compiled = statement.compile(dialect=asyncpg_dialect())  # type: ignore[no-untyped-call]
    return str(compiled), list(getattr(compiled, "positiontup", None) or ())


# Several records in one statement: each row carries the revision it expects (0: new, NULL:
# last write wins). Conditional rows are UPDATEs (a deleted or expired record is never written
# back; under READ COMMITTED the revision test is re-checked on the newest row version after
# waiting for a concurrent writer), new rows INSERT ... DO NOTHING unless the row there has
# expired, forced rows upsert (as new rows over expired ones). A row's updated_at is its "now"
# for expiry. Each write returns the rows it wrote; fewer than sent is a conflict, and the
# caller's transaction rolls back. Each kind's write reads its rows from ``{rows}``: the
# parameters' arrays themselves when a chunk holds one kind (see _write_statement), else the
# input CTE of _WRITE_MANY, which writes every kind in one statement.
_ROWS = """unnest($1::text[], $2::uuid[], $3::integer[], $4::text[], $5::text[],
         $6::timestamptz[], $7::timestamptz[], $8::integer[], $9::timestamptz[])
    AS r(class_name, id, schema_version, data, data_exact, created_at, updated_at, expected,
         expires_at)"""
_CHANGED = f"""UPDATE {TABLE_NAME} AS t
  SET schema_version = r.schema_version, data = r.data::jsonb, data_exact = r.data_exact,
      updated_at = r.updated_at, expires_at = r.expires_at, revision = t.revision + 1
  FROM {{rows}}
  WHERE t.class_name = r.class_name AND t.id = r.id AND t.revision = r.expected
    AND t.created_at = r.created_at
    AND (t.expires_at IS NULL OR t.expires_at > r.updated_at)
  RETURNING t.class_name, t.id, t.revision"""
_INSERT = f"""INSERT INTO {TABLE_NAME} (class_name, id, schema_version, data, data_exact,
                            created_at, updated_at, expires_at, revision)
  SELECT class_name, id, schema_version, data::jsonb, data_exact, created_at, updated_at,
         expires_at, 1"""
_ADDED = f"""{_INSERT}
  FROM {{rows}} WHERE expected = 0
  ON CONFLICT (class_name, id) DO UPDATE
  SET data = excluded.data, data_exact = excluded.data_exact,
      schema_version = excluded.schema_version, created_at = excluded.created_at,
      updated_at = excluded.updated_at, expires_at = excluded.expires_at, revision = 1
  WHERE {TABLE_NAME}.expires_at <= excluded.updated_at
  RETURNING class_name, id, revision"""
_FORCED = f"""{_INSERT}
  FROM {{rows}} WHERE expected IS NULL
  ON CONFLICT (class_name, id) DO UPDATE
  SET data = excluded.data, data_exact = excluded.data_exact,
      schema_version = excluded.schema_version, updated_at = excluded.updated_at,
      expires_at = excluded.expires_at,
      created_at = CASE WHEN {TABLE_NAME}.expires_at <= excluded.updated_at
                        THEN excluded.created_at ELSE {TABLE_NAME}.created_at END,
      revision = CASE WHEN {TABLE_NAME}.expires_at <= excluded.updated_at
                      THEN 1 ELSE {TABLE_NAME}.revision + 1 END
  RETURNING class_name, id, revision"""
_WRITE_MANY = f"""
WITH input AS (
  SELECT * FROM {_ROWS}
), changed AS (
  {_CHANGED.format(rows="input AS r")}
), added AS (
  {_ADDED.format(rows="input AS r")}
), forced AS (
  {_FORCED.format(rows="input AS r")}
)
SELECT * FROM changed UNION ALL SELECT * FROM added UNION ALL SELECT * FROM forced
"""
# A chunk whose records are all of one kind is that kind's write alone, on the arrays: no CTE
# to materialize (a copy of every row in a tuple store, another of the unnested arrays), two
# writes fewer to plan. Server CPU per record of new records (bench/pg_batch_server.py and a
# statement-only variant of it): 100 fields 79 -> 68 µs; 100 KB in 256 KiB chunks 1,420 -> 940
# (raw executemany: 940).
_WRITE_ONE_KIND = {
    "changed": _CHANGED.format(rows=_ROWS),
    "added": _ADDED.format(rows=_ROWS),
    "forced": _FORCED.format(rows=_ROWS),
}
# JSON per batch statement. Above a few hundred KiB, the client's buffers for a statement
# (asyncpg's parameters, its Bind message, asyncio's unsent rest) each take fresh pages from
# the kernel: 100 KB records in 2 MiB chunks cost the client 72 page faults and 203 µs of
# system CPU per record (1 MiB and 512 KiB: 67-70 faults), in 256 KiB chunks none and 29 µs.
# (A much larger statement's rows also spill to temporary files beyond work_mem.)
_CHUNK_BYTES = 256 << 10
# The same with large records' data taken from the staging table (postgresql_staging).
_WRITE_STAGED = staging.staged_write(_WRITE_MANY, staging.TABLE)


def _write_statement(chunk: Sequence[StoredRecord]) -> str:
    """The statement writing ``chunk`` (no staged record): its kind's write when it holds one
    kind, else the statement writing every kind."""
    expected = {record.revision for record in chunk}
    if expected == {0}:
        return _WRITE_ONE_KIND["added"]
    if expected == {None}:
        return _WRITE_ONE_KIND["forced"]
    if 0 not in expected and None not in expected:
        return _WRITE_ONE_KIND["changed"]
    return _WRITE_MANY


def _hot_path_statements() -> dict[str, str]:
    """The save and load statements, built from the mapped table and compiled once."""
    table = records_table
    c = table.c
    # data_exact: NULL unless jsonb would rewrite a number in data (see backends.jsonb).
    names = [
        "class_name",
        "id",
        "schema_version",
        "data",
        "data_exact",
        "created_at",
        "updated_at",
        "expires_at",
    ]
    writes = write_statements(insert, lambda name: cast(bindparam(name, type_=Text()), JSONB))
    # Loads read the exact text where it was kept, else jsonb's text, as UTF-8 bytes: asyncpg
    # hands bytea over as bytes (one copy of the message), where text would be decoded to str
    # and encoded back, two more copies of a large record.
    exact_or_jsonb = func.convert_to(
        func.coalesce(c.data_exact, cast(c.data, Text)), literal_column("'UTF8'")
    )
    columns = [
        exact_or_jsonb if n == "data" else c[n]
        for n in [*names, "revision"]
        if n not in ("data_exact", "expires_at")
    ]
    # Loads take the client's clock as epoch seconds (time.time()): asyncpg encodes a float
    # for a tenth of what a timestamptz parameter costs (datetime.now(UTC) and its encoding
    # were 9k of a 10-field load's instructions). to_timestamp() keeps microseconds.
    now_seconds = func.to_timestamp(bindparam("now", type_=Double()))
    # Loaded timestamps come as ISO 8601 text in UTC: datetime.fromisoformat reads one for a
    # fifth of what asyncpg's own timestamptz decoding costs (6k instructions each), and a
    # timestamp Python cannot hold is refused the same way in a single load and in a batch.
    # One record's key is known: its row leaves out class_name and id (less to decode).
    select_one = select(*_read_columns(columns[2:], _iso_utc)).where(
        c.class_name == bindparam("class_name"), c.id == bindparam("id"), live(now_seconds)
    )
    batch_reads = _batch_reads(_read_columns(columns[2:], _iso_utc), now_seconds)
    # The same, reading the timestamps as the server's own text of them (see _iso_text_utc).
    batch_reads |= {
        _ON_ISO_DATESTYLE[name]: statement
        for name, statement in _batch_reads(
            _read_columns(columns[2:], _iso_text_utc), now_seconds
        ).items()
    }
    statements = {}
    changed = [
        "b_schema_version",
        "b_data",
        "b_data_exact",
        "b_updated_at",
        "b_expires_at",
        "b_class_name",
        "b_id",
        "b_expected",
        "b_created_at",
    ]
    for name, statement, expected in (
        ("insert", writes["insert"], names),
        ("update", writes["update"], changed),
        ("upsert", writes["upsert"], names),
        ("revision", REVISION, ["class_name", "id", "now"]),
        ("select_one", select_one, ["class_name", "id", "now"]),
        *(
            (name, statement, _BATCH_READ_PARAMETERS[name.removesuffix("_iso")])
            for name, statement in batch_reads.items()
        ),
        ("delete", DELETE, ["class_name", "id"]),
        ("delete_checked", DELETE_CHECKED, ["class_name", "id", "revision", "b_created_at"]),
        ("count", COUNT, ["class_name", "now"]),
        ("page_first", page_statement(columns, after=False), ["class_name", "now", "limit"]),
        (
            "page_after",
            page_statement(columns, after=True),
            ["class_name", "now", "after_created_at", "after_id", "limit"],
        ),
        (
            "expired_classes",
            expired_classes_statement(lateral=True),
            ["from_class", "now", "limit"],
        ),
        ("purge", _PURGE, ["class_name", "now", "limit"]),
    ):
        sql, order = _compile(statement)
        assert order == expected, (name, order)  # the call sites pass parameters in this order
        statements[name] = sql
    return statements


_SQL = _hot_path_statements()
_SETTLED = {"insert": 0, "upsert": 0, "update": 5, "delete": 0, "delete_checked": 0}
"""The single-record writes whose timeout :meth:`PostgreSQLBackend._statement` settles (see
:class:`_Ended`), and where their arguments hold the record's class name (its id follows)."""
_ANY_TIME = float("-inf")
"""``select_one``'s "now" that finds a row whether or not it has expired."""


class _Ended(TimeoutError):
    """A ``command_timeout`` after which :meth:`PostgreSQLBackend._statement` read the record
    back on the statement's own connection, which runs its next statement only once the timed
    out one has ended: applied, or stopped by the cancel. The row read (``select_one``'s, or
    ``None``) tells which (:func:`_timed_out_write`, :func:`_timed_out_delete`). Any other
    timeout leaves that unknown.

    Attributes:
        row: The record's row once the statement had ended, or ``None``: there was none.
    """

    def __init__(self, row: Any) -> None:
        super().__init__()
        self.row = row


class PostgreSQLBackend(SQLAlchemyBackend):
    """Records in PostgreSQL's ``external_records`` table (create it with Alembic first).

    Its store is identified by host, port and database, whatever the URL's options. Expired
    records (``ttl``) stay in the table, invisible, until :func:`~pydantic_toast.purge_expired`
    deletes them.

    One engine per URL and event loop, shared by every model on that URL, or the application's
    own (``pydantic_toast.use_engine(url, engine)``). The engine's pool is the only pool: every
    operation checks a connection out, runs one statement (built from the mapped table,
    compiled once, prepared once per connection) on its asyncpg connection, and checks it back
    in. Inside :func:`~pydantic_toast.transaction`, statements run on the caller's connection.
    """

    _insert = staticmethod(insert)
    capabilities = frozenset(Capability)
    _dropped = False  # a broken connection's record waits in the pool to reconnect
    _replicas: Replicas | None = None  # read replicas (replicas= in the URL), once connected
    _leasing: Any = None  # the engine's pool, when its idle connections are leased directly
    _idle: Any = None  # then, the asyncio queue holding its idle entries
    _idle_entries: Any = None  # and that queue's own list or deque of them
    _take_entry: Any = None  # the end of it the queue takes from
    _idle_limit = 0  # how many entries the queue holds at most
    _mark: Any = None  # and what its entries leased directly hold as their proxy reference
    _gate: Gate | None = None  # first come, first served: see _checkout
    _gated: bool = False  # whether _gate was decided (None: the pool has no fixed size)

    def __init__(self, url: str, *, engine: AsyncEngine | None = None) -> None:
        super().__init__(url, engine=engine)
        self._batch_size = batch_size_of(self._parsed)
        self._watchdog = Watchdog()

    @classmethod
    def store_identity(cls, url: StorageURL) -> tuple[str, int, str]:
        """Host, port and database: the same table whatever the spelling or options."""
        host = url.host or "localhost"
        return (host.lower(), url.port or 5432, url.path.lstrip("/") or url.username or "postgres")

    async def connect(self) -> None:
        """Create the engine (or take the one handed in) and check that the table exists."""
        self._dropped = False
        await self._open_engine()
        try:
            await self.count("")
            if "replicas" in self._parsed.query:
                self._replicas = Replicas(self, self._parsed)
                await self._replicas.connect()
        except BaseException:
            await self.disconnect()
            raise

    async def disconnect(self) -> None:
        """Close the pool (and the read replicas' pools)."""
        replicas, self._replicas = self._replicas, None
        if replicas is not None:
            await replicas.disconnect()
        self._watchdog.close()
        await super().disconnect()

    async def delete(self, id: UUID, class_name: str) -> bool:
        """Delete one record; return whether it existed (an expired row did not).

        Past ``command_timeout``, see :func:`_timed_out_delete`.
        """
        now = datetime.now(UTC)
        with self._writing([(class_name, id)]):
            try:
                rows = await self._statement("fetch", "delete", class_name, id)
            except _Ended as ended:
                _timed_out_delete(ended)
        return any(row[0] is None or row[0] > now for row in rows)

    async def delete_checked(
        self, id: UUID, class_name: str, revision: int, *, created_at: datetime | None = None
    ) -> bool:
        """Delete one record at ``revision`` (and ``created_at``): one statement; its revision
        is read on a miss.

        Under READ COMMITTED the statement re-checks the revision on the newest version of a
        row that a concurrent write changed, so a write committed first is never deleted.
        Past ``command_timeout``, see :func:`_timed_out_delete`.
        """
        now = datetime.now(UTC)
        with self._writing([(class_name, id)]):
            try:
                rows = await self._statement(
                    "fetch", "delete_checked", class_name, id, revision, created_at
                )
            except _Ended as ended:
                _timed_out_delete(ended)
        if any(row[0] is None or row[0] > now for row in rows):
            return True
        current = await self._statement("fetchval", "revision", class_name, id, now)
        return deleted_at(class_name, id, revision, current)

    async def delete_records(self, keys: Sequence[RecordKey]) -> list[bool]:
        """Delete the records in one statement; whether each existed (an expired one did not)."""
        with self._writing(keys):
            return await super().delete_records(keys)

    def _writing(self, keys: Sequence[RecordKey]) -> contextlib.AbstractContextManager[None]:
        """Reads of ``keys`` go to the primary while they are written and for the window
        after (see :meth:`Replicas.writing`); nothing without replicas.

        Inside :func:`~pydantic_toast.transaction`, the window starts again at the commit:
        replicas see the write only then, however long after it the caller commits.
        """
        if self._replicas is None:
            return contextlib.nullcontext()
        saves = joined_save(self)
        if saves is not None:
            replicas = self._replicas
            saves.after_commit(lambda: replicas.note_writes(keys))
        return self._replicas.writing(keys)

    async def purge_expired(self, *, limit: int) -> int:
        """Delete at most ``limit`` expired rows: the classes that have some, listed in one
        statement, then a statement per class; return how many went."""
        now = datetime.now(UTC)

        async def expired_classes(from_class: str, classes: int) -> list[str]:
            rows = await self._statement("fetch", "expired_classes", from_class, now, classes)
            return [row[0] for row in rows]

        async def one_class(class_name: str, rows: int) -> int:
            return int(await self._statement("execute", "purge", class_name, now, rows))

        return await purge_classes(expired_classes, one_class, limit)

    async def list_records(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[StoredRecord]:
        """Records newest first (``created_at``, then id), past ``after``: one SELECT.

        The index on ``(class_name, created_at, id)`` is scanned backwards from the cursor
        and stops after ``limit`` rows: the cost of a page does not grow with the table.
        Expired rows are left out.
        """
        now = datetime.now(UTC)
        if after is None:
            rows = await self._statement("fetch", "page_first", class_name, now, limit)
        else:
            rows = await self._statement(
                "fetch", "page_after", class_name, now, after.created_at, after.id, limit
            )
        return [_row_record(row) for row in rows]

    async def count(self, class_name: str) -> int:
        """How many live records of ``class_name`` are stored."""
        return int(await self._statement("fetchval", "count", class_name, datetime.now(UTC)))

    def check_records(self, records: Sequence[StoredRecord]) -> None:
        """Refuse NaN, the infinities and the NUL character, which ``jsonb`` cannot hold."""
        for record in records:
            refuse_unstorable(record)

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        """Write the records, each checked against its expected revision; all or none.

        One record is one statement (one round trip). Several are one statement too, inside
        a transaction that a conflict rolls back. ``created_at`` of existing rows is kept.
        """
        self.check_records(records)
        if self._replicas is None:  # the common case, without a context manager's cost
            return await self._write(records)
        with self._writing([record.key for record in records]):
            return await self._write(records)

    async def _write(self, records: Sequence[StoredRecord]) -> list[int]:
        if len(records) == 1 and not staging.is_large(records[0]):
            return [await self._write_one(records[0])]  # a VALUES row plans faster than unnest
        return await self._write_many(records)

    async def _write_one(self, record: StoredRecord) -> int:
        """One conditional statement (see :func:`~pydantic_toast.backends.sql.write_statements`)."""
        expected = record.revision
        data = record.data.decode()
        exact = exact_text(record)
        try:
            if expected is None or expected == 0:
                revision = await self._statement(
                    "fetchval",
                    "upsert" if expected is None else "insert",
                    record.class_name,
                    record.id,
                    record.schema_version,
                    data,
                    exact,
                    record.created_at,
                    record.updated_at,
                    expires_at(record),
                )
            else:
                revision = await self._statement(
                    "fetchval",
                    "update",
                    record.schema_version,
                    data,
                    exact,
                    record.updated_at,
                    expires_at(record),
                    record.class_name,
                    record.id,
                    expected,
                    record.created_at,
                )
        except _Ended as ended:
            return _timed_out_write(record, ended)
        if revision is None:
            current = await self._statement(
                "fetchval", "revision", record.class_name, record.id, record.updated_at
            )
            raise _conflict(record, current)
        return int(revision)

    async def _write_many(self, records: Sequence[StoredRecord]) -> list[int]:
        """The batch statement in a transaction (a savepoint in a joined one); all or none.

        A batch runs as one statement per chunk of at most ``batch_size`` records and
        256 KiB of JSON (see :func:`_write_statement`), all in that transaction: the driver
        never holds more than a chunk's parameters at once. Outside a caller's transaction,
        chunks of one statement are sent together (see :func:`_runs`; asyncpg encodes each
        chunk's parameters as it sends them), their replies awaited once. Large records are
        streamed into a staging table first (:mod:`.postgresql_staging`).
        """
        spans = batch_spans(
            records, self._batch_size, most_bytes=_CHUNK_BYTES, carried_up_to=staging.STAGE_ABOVE
        )
        # Each chunk's rows are read into its records' revisions and dropped: a batch holds its
        # revisions, not a (class name, id) key per record.
        revisions: list[int] = []
        joined = await statement_connection(self._same_store)
        if joined is not None:
            async with _savepoint(joined):  # a conflict undoes this batch, not the caller's
                for start, end in spans:
                    chunk = records[start:end]
                    if any(map(staging.is_large, chunk)):
                        raw: Any = await joined.get_raw_connection()
                        rows = await _write_staged(raw.driver_connection, chunk)
                    else:
                        result = await joined.exec_driver_sql(
                            _write_statement(chunk), _columns(chunk)
                        )
                        rows = list(result.all())
                    written = {(row[0], row[1]): row[2] for row in rows}
                    missing = _first_missing(chunk, written)
                    if missing is not None:
                        found = await joined.exec_driver_sql(
                            _SQL["revision"], (missing.class_name, missing.id, missing.updated_at)
                        )
                        raise _conflict(missing, found.scalar())
                    revisions += [int(written[record.key]) for record in chunk]
            return revisions
        pooled = await self._checkout()
        driver: Any = pooled.driver_connection
        try:
            async with driver.transaction():
                for statement, run in _runs(records, spans, self._batch_size):
                    start, end = run[0][0], run[-1][1]
                    chunk = records[start:end]
                    if statement is None:
                        rows = await _write_staged(driver, chunk)
                    elif len(run) == 1:
                        rows = await driver.fetch(statement, *_columns(chunk))
                    else:  # pipelined: one round trip for the run (asyncpg encodes lazily)
                        rows = await driver.fetchmany(
                            statement, (_columns(records[s:e]) for s, e in run)
                        )
                    written = {(row[0], row[1]): row[2] for row in rows}
                    missing = _first_missing(chunk, written)
                    if missing is not None:
                        current = await driver.fetchval(
                            _SQL["revision"], missing.class_name, missing.id, missing.updated_at
                        )
                        raise _conflict(missing, current)  # rolls the transaction back
                    revisions += [int(written[record.key]) for record in chunk]
        except (ConcurrencyError, asyncpg.PostgresError):
            self._checkin(pooled, broken=driver.is_closed() or unwinding_interrupt())
            raise
        except BaseException:
            # Lost, timed out or cancelled inside the transaction: its state is unknown.
            self._checkin(pooled, broken=True)
            raise
        self._checkin(pooled, broken=False)
        return revisions

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Read the records, in the order of ``keys``: one statement per ``batch_size`` keys."""
        now = time.time()
        if len(keys) == 1:
            ((class_name, id),) = keys
            row = await self._statement("fetchrow", "select_one", class_name, id, now)
            return [None if row is None else _loaded(class_name, id, row)]
        records: list[StoredRecord | None] = [None] * len(keys)
        size = self._batch_size
        texts = keys.as_str() if type(keys) is ClassKeys else None  # str(id) of each id
        for start in range(0, len(keys), size):
            if type(keys) is ClassKeys:  # a batch of one class: its name once, not an array
                ids = keys.ids[start : start + size]
                names = [keys.class_name] * len(ids)
                if texts is None:
                    rows = await self._statement("fetch", "select_class", ids, keys.class_name, now)
                else:
                    joined = ",".join(texts[start : start + size])
                    rows = await self._statement(
                        "fetch", "select_texts", joined, keys.class_name, now
                    )
            else:
                chunk = keys[start : start + size]
                names = [key[0] for key in chunk]
                ids = [key[1] for key in chunk]
                rows = await self._statement("fetch", "select_many", names, ids, now)
            try:
                for row in rows:
                    position = row[0] - 1  # positions count from 1
                    class_name, id = names[position], ids[position]
                    created, updated = _from_iso(row[3]), row[4]
                    records[start + position] = read_record(
                        class_name,
                        id,
                        row[2],
                        row[1],
                        created,
                        created if updated == _AS_CREATED else _from_iso(updated),
                        row[5],
                    )
            except (TypeError, ValueError):  # only the timestamps raise these
                raise _unreadable_timestamps(class_name, id) from None
        return records

    async def _statement(self, kind: _Kind, name: str, *args: Any) -> Any:
        """Run one compiled statement: one round trip, no BEGIN/COMMIT around it.

        ``kind`` says what comes back: ``execute`` the affected row count, ``fetch`` the rows,
        ``fetchrow`` the first row, ``fetchval`` the first value. Inside
        :func:`~pydantic_toast.transaction` on this database, it runs on the caller's
        connection, in the caller's transaction.
        """
        # Asked without a coroutine first: outside a transaction (the common case) there is
        # no connection to join, and awaiting statement_connection() to learn that costs more
        # instructions than the check.
        if (
            joined_connection(self._same_store) is not None
            and (joined := await statement_connection(self._same_store)) is not None
        ):
            result = await joined.exec_driver_sql(_SQL[name], args)
            if kind == "execute":
                return result.rowcount
            if kind == "fetchrow":
                return result.first()
            return result.scalar() if kind == "fetchval" else result.all()
        if self._replicas is not None:
            answer = await self._replicas.read(kind, name, args)
            if answer is not ON_PRIMARY:
                return answer
        lease = self._take_idle() or await self._checkout()
        try:
            if name in _ON_ISO_DATESTYLE and _iso_dates(lease.driver_connection):
                name = _ON_ISO_DATESTYLE[name]
            statements = lease.info.get(_PREPARED)
            prepared = None if statements is None else statements.get(name)
            if prepared is None and kind != "execute":
                prepared = await _prepare(lease, name)
            if kind == "execute" or prepared is False:
                driver: Any = lease.driver_connection
                if kind == "execute":
                    status: str = await driver.execute(_SQL[name], *args)
                    result_value: Any = int(status.rpartition(" ")[2] or 0)
                else:
                    result_value = await getattr(driver, kind)(_SQL[name], *args)
            else:
                # The connection's own prepared statement: asyncpg's statement cache lookup
                # and timeout bookkeeping around it cost a tenth of a small load's work.
                try:
                    result_value = await self._run_prepared(prepared, kind, args)
                except asyncpg.InvalidCachedStatementError:
                    # The table changed under it (a migration ran): prepared again, once, as
                    # asyncpg does with the statements it caches (never inside a transaction).
                    lease.info.pop(_PREPARED, None)
                    prepared = await _prepare(lease, name)
                    result_value = await self._run_prepared(prepared, kind, args)
        except (asyncpg.PostgresError, TimeoutError, asyncio.CancelledError) as exc:
            # Refused by the server, or timed out or cancelled mid-statement: asyncpg has
            # already asked the server to cancel the statement and makes the connection's next
            # statement wait for that, so the connection goes back to the pool. Terminating it
            # instead would fail the cancel request's pending future, unretrieved.
            connection: Any = lease.driver_connection
            broken = connection.is_closed() or unwinding_interrupt()
            key = _SETTLED.get(name) if isinstance(exc, TimeoutError) and not broken else None
            if key is not None:
                # A write may have completed before the cancel reached it: the record read back
                # on this connection, once the write has ended, tells (see _Ended).
                try:
                    row = await connection.fetchrow(
                        _SQL["select_one"], args[key], args[key + 1], _ANY_TIME
                    )
                except Exception:
                    broken = True  # asyncpg's timer ended that wait too: the outcome is unknown
                except BaseException:
                    self._checkin(lease, broken=True)
                    raise
                else:
                    self._checkin(lease, broken=False)
                    raise _Ended(row) from exc
            self._checkin(lease, broken=broken)
            raise
        except BaseException:
            # Lost on the way, or a driver failure: the connection's state is unknown.
            # Terminating it is synchronous, so nothing is left to await.
            self._checkin(lease, broken=True)
            raise
        self._checkin(lease, broken=False)
        return result_value

    async def _run_prepared(self, prepared: Any, kind: _Kind, args: tuple[Any, ...]) -> Any:
        """Run ``prepared``, bounded by ``command_timeout`` through the backend's watchdog.

        The watchdog stands in for asyncpg's timer per statement (see
        :mod:`.postgresql_watchdog`). asyncpg's timer still bounds it when the connection has
        no ``command_timeout``, outside a task, or when the server has not yet acknowledged the
        cancellation of an earlier statement on the connection (asyncpg's timer then also
        bounds the wait for that, and drops the connection if it never comes).

        The statement goes to the connection's protocol as asyncpg's ``PreparedStatement``
        sends it, without the three coroutines and the checks around that call, which cost
        more instructions than the rest of a small load's backend work: the protocol itself
        refuses a closed or busy connection (``InterfaceError``, as the checks would), and a
        statement closed under it is refused here, as ``PreparedStatement`` refuses it.
        """
        state = prepared._state
        if state.closed:  # (the connection is then dropped, with its statements)
            raise asyncpg.InterfaceError("the prepared statement is closed")
        driver: Any = prepared._connection  # lease.driver_connection, without two properties
        protocol = driver._protocol
        limit = 0 if kind == "fetch" else 1
        timeout = driver._config.command_timeout
        loop = driver._loop
        task = _current_task(loop)
        if not timeout or task is None or protocol._is_cancelling():
            rows = await protocol.bind_execute(state, args, "", limit, False, None)
            return _answer(kind, rows)
        watchdog = self._watchdog
        watchdog.watch(task, loop, timeout)
        try:
            rows = await protocol.bind_execute(state, args, "", limit, False, NO_TIMEOUT)
        except asyncio.CancelledError:
            if watchdog.expired(task):
                raise TimeoutError from None  # what asyncpg's own timer raises
            raise
        finally:
            watchdog.forget(task)
        return _answer(kind, rows)

    async def _checkout(self) -> _Lease:
        """A connection from the engine's pool, to the operations in the order they asked.

        Waiting happens in a FIFO gate as wide as the pool, not in the pool's queue: an
        asyncio queue hands a returned connection to whoever asks before its woken waiter
        runs (the next operation of the task that returned it, a request just arrived), and
        the waiter that lost it goes to the back of the line. Under a load test of 100
        clients on a 20-connection pool that made the p99 latency 15 times the median.
        """
        if not self._gated:
            self._gated = True
            self._gate = _gate_for(self.engine.sync_engine.pool)
        gate = self._gate
        if gate is None:
            return await self._lease()
        if not gate.enter_now():
            pool: Any = self.engine.sync_engine.pool
            try:
                async with asyncio.timeout(pool.timeout()):
                    await gate.enter()
            except TimeoutError:
                # The pool's own timeout and error: translated as a StoragePoolTimeoutError.
                raise PoolTimeoutError(
                    f"no pooled connection became free within connect_timeout {pool.timeout()} s"
                ) from None
        try:
            return await self._lease()
        except BaseException:
            gate.leave()
            raise

    def _take_idle(self) -> ConnectionPoolEntry | None:
        """:meth:`_checkout`'s common case, without a coroutine: an idle entry, or ``None``.

        Taken when the pool's entries are leased directly (see :meth:`_lease`), an idle one
        has its connection open, nobody waits at the gate and no pool listener is registered;
        otherwise ``None`` (nothing taken), and the caller awaits :meth:`_checkout`.
        """
        engine = self._engine
        if engine is None:
            return None
        pool: Any = engine.sync_engine.pool
        idle = self._idle
        if pool is not self._leasing or not idle._queue or pool._invalidate_time:
            return None
        dispatch = pool.dispatch
        if dispatch.checkout or dispatch.checkin:
            return None
        gate = self._gate
        if gate is not None and not gate.enter_now():
            return None
        # Taken from the asyncio queue's own container (see _put_back): its public methods
        # were 7.6k instructions per operation (a twentieth of a 10-field load's).
        entry = self._take_entry()
        if entry.dbapi_connection is None:  # dropped: reconnecting awaits (see _lease)
            self._put_back(entry)
            if gate is not None:
                gate.leave()
            return None
        entry.fairy_ref = self._mark
        return entry  # type: ignore[no-any-return]

    async def _lease(self) -> _Lease:
        pool: Any = self.engine.sync_engine.pool
        if pool is not self._leasing:
            # Its settings are checked once per pool (a dispose makes a new one); the time of
            # its last invalidation on every checkout.
            self._leasing = pool if _takes_idle_without_awaiting(pool) else None
            self._idle = pool._pool._queue if self._leasing is not None else None
            if self._idle is not None:
                self._idle_entries, self._take_entry, self._idle_limit = _queue_ends(self._idle)
            # A weak reference to the pool: alive while it is leased (SQLAlchemy reads an
            # entry's fairy_ref for that), and it tells this pool's direct leases apart.
            self._mark = weakref.ref(pool) if self._leasing is not None else None
        if pool is self._leasing and pool._pool._queue.qsize() and not pool._invalidate_time:
            # Taking an idle connection never awaits, so it needs no greenlet (the bridge costs
            # more than the checkout itself).
            dispatch = pool.dispatch
            if not (dispatch.checkout or dispatch.checkin):
                # No pool event listeners: the pool's entry is leased as it is. The proxy
                # SQLAlchemy wraps around it (and its weakref finalizer) cost more than the
                # queue operations.
                entry = pool._do_get()
                if entry.dbapi_connection is None:
                    # Its connection was dropped: reconnecting awaits, through the bridge.
                    try:
                        await greenlet_spawn(entry.get_connection)
                    except BaseException as exc:
                        entry._checkin_failed(exc, _fairy_was_created=False)
                        if isinstance(exc, Exception):
                            connecting(exc)
                        raise
                entry.fairy_ref = self._mark
                return entry  # type: ignore[no-any-return]
            if not self._dropped:
                proxied: PoolProxiedConnection = pool.connect()
                return proxied
        try:
            return await self.engine.raw_connection()
        except Exception as exc:
            connecting(exc)
            raise

    def _checkin(self, lease: _Lease, *, broken: bool) -> None:
        """Return ``lease`` to the pool, synchronously (no await: safe in a cancelled task)."""
        mark = self._mark
        if (
            not broken
            and mark is not None
            and getattr(lease, "fairy_ref", None) is mark
            and len(self._idle_entries) < self._idle_limit
        ):
            # Leased directly from the current pool, which has room: back into its queue, as
            # the entry's checkin() would put it (no check-in listener, or it was not leased
            # directly; nothing to finalize: AUTOCOMMIT).
            lease.fairy_ref = None  # type: ignore[union-attr]
            self._put_back(lease)
            if self._gate is not None:
                self._gate.leave()
            return
        try:
            self._return(lease, broken=broken)
        finally:
            if self._gate is not None:
                self._gate.leave()

    def _put_back(self, entry: Any) -> None:
        """Put ``entry`` into the pool's queue of idle entries (which has room).

        Through ``put_nowait`` only when a checkout of SQLAlchemy's own waits in that queue (it
        wakes the first); otherwise straight into the queue's container, as its own ``_put``
        does, without the bookkeeping for ``join()``, which nothing calls on a pool's queue.
        """
        idle = self._idle
        if idle._getters:
            idle.put_nowait(entry)
        else:
            self._idle_entries.append(entry)

    def _return(self, lease: _Lease, *, broken: bool) -> None:
        pool: Any = self.engine.sync_engine.pool
        if pool is self._leasing:
            full = self._idle.full()
        else:
            full = not (isinstance(pool, AsyncAdaptedQueuePool) and pool.checkedin() < pool.size())
        if broken:
            # Its entry waits in the pool to reconnect, which awaits: proxied checkouts go
            # through the greenlet bridge until the pool is renewed.
            self._dropped = True
        if isinstance(lease, PoolProxiedConnection):
            if broken or full:
                # An overflow connection (the pool is full), or a pool class whose check-in may
                # await: closing it gracefully would need the greenlet bridge.
                lease.invalidate()
            else:
                lease.close()  # a queue put and no reset (AUTOCOMMIT): nothing to await
            return
        entry: Any = lease
        if broken or full:
            entry.invalidate()  # terminated (synchronous); the entry goes back empty
        entry.checkin()

    def reply_timeout(self) -> float | None:
        """The URL's ``command_timeout`` (``None`` for 0: no timeout)."""
        raw = self._parsed.query.get("command_timeout")
        seconds = _NUMBERS["command_timeout"] if raw is None else float(raw)
        return seconds or None

    async def discard_connections(self) -> None:
        """Close the pool: after a lost connection its idle connections are likely dead."""
        await super().discard_connections()
        self._dropped = False

    def _same_store(self, url: URL) -> bool:
        """Whether a SQLAlchemy URL reaches this backend's database."""
        identity = (
            (url.host or "localhost").lower(),
            url.port or 5432,
            url.database or url.username or "postgres",
        )
        return identity == self.store_identity(self._parsed)

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        """Check the options and SSL settings without connecting."""
        engine_options(url)
        replica_options(url)
        batch_size_of(url)

    def _create_engine(self) -> AsyncEngine:
        sa_url, options = engine_options(self._parsed)
        return create_async_engine(sa_url, **options)


_Kind = Literal["execute", "fetch", "fetchrow", "fetchval"]
_PREPARED = "pydantic_toast_prepared"
"""The key, in a pooled connection's ``info``, of its prepared statements by name (the
dictionary goes with the connection: SQLAlchemy clears it when the connection is replaced)."""


async def _prepare(lease: _Lease, name: str) -> Any:
    """Prepare the statement ``name`` on ``lease``'s connection and keep it there.

    ``False`` (kept too) when the connection caches no statements (asyncpg's
    ``statement_cache_size=0``, as behind PgBouncer in transaction mode): its statements then
    stay unnamed, run through the connection itself.
    """
    driver: Any = lease.driver_connection
    statements = lease.info.setdefault(_PREPARED, {})
    if not getattr(driver, "_stmt_cache_enabled", False):
        statements[name] = False
        return False
    statement = statements[name] = await driver.prepare(_SQL[name])
    return statement


def _answer(kind: _Kind, rows: list[Any]) -> Any:
    """What a prepared statement's ``kind`` of call returns from its ``rows``."""
    if kind == "fetch":
        return rows
    if not rows:
        return None
    return rows[0] if kind == "fetchrow" else rows[0][0]


def _queue_ends(idle: Any) -> tuple[Any, Callable[[], Any], int]:
    """An asyncio queue's container of items, the end of it taken from, and its capacity.

    The queue's own ``_get`` and ``_put`` without their Python calls: SQLAlchemy's pool queue
    is a ``LifoQueue`` (taken from the end put to) or a ``Queue`` (from the other end), both
    putting with ``append``.
    """
    entries = idle._queue
    take = entries.pop if isinstance(idle, asyncio.LifoQueue) else entries.popleft
    return entries, take, idle._maxsize if idle._maxsize > 0 else sys.maxsize


def _gate_for(pool: Any) -> Gate | None:
    """A FIFO gate admitting as many operations as ``pool`` has connections, if it is bounded.

    Operations that take connections elsewhere (transactions, Core statements) bypass it and
    may make an admitted one wait in the pool's queue: the gate orders, it does not reserve.
    """
    if not isinstance(pool, AsyncAdaptedQueuePool) or pool._max_overflow < 0:
        return None
    return Gate(pool.size() + pool._max_overflow)


def _takes_idle_without_awaiting(pool: Any) -> bool:
    """Whether checking out an idle connection of ``pool`` runs no await (no ping, no recycle)."""
    return (
        isinstance(pool, AsyncAdaptedQueuePool)
        and getattr(pool, "_pre_ping", True) is False
        and getattr(pool, "_recycle", 0) < 0
        and getattr(pool, "_invalidate_time", 1) == 0
    )


def _row_record(row: Any) -> StoredRecord:
    """A record from a row of the page statements' columns."""
    return read_record(row[0], row[1], row[3], row[2], row[4], row[5], row[6])


def _loaded(class_name: str, id: UUID, row: Any) -> StoredRecord:
    """The record of a ``select_one`` row."""
    try:
        created, updated = _from_iso(row[2]), row[3]
        updated = created if updated == _AS_CREATED else _from_iso(updated)
    except (TypeError, ValueError):
        raise _unreadable_timestamps(class_name, id) from None
    return read_record(class_name, id, row[1], row[0], created, updated, row[4])


def _timed_out_write(record: StoredRecord, ended: _Ended) -> int:
    """The revision of a single save that timed out, when it completed all the same.

    asyncpg asks the server to cancel a statement that runs past ``command_timeout``; one that
    had completed first (its reply slow on the network, or the server answering just then)
    stays applied. The record read back once the statement had ended (:class:`_Ended`) tells
    which: written by this save, the save succeeded; otherwise the cancel stopped it (or another
    write replaced it since), and the timeout stands, marked as not applied (safe to retry).
    When the end could not be waited for, the boundary settles the save by reading back
    (:func:`~pydantic_toast.runtime.outcomes.settle_save`).
    """
    found = None
    if ended.row is not None:
        with contextlib.suppress(StoredDataError):  # unreadable: not what this save wrote
            found = _loaded(record.class_name, record.id, ended.row)
    if found is not None and written_by(record, found) and found.revision is not None:
        return found.revision
    raise not_applied(ended)


def _timed_out_delete(ended: _Ended) -> NoReturn:
    """Raise what a single delete that timed out raises, once it had ended (:class:`_Ended`).

    The row still there (expired or not): the cancel stopped the delete, and the timeout
    stands, marked as not applied (safe to retry). The row gone: this delete removed it, or
    another writer had just deleted it, which cannot be told apart: the outcome stays unknown
    (the boundary raises :class:`~pydantic_toast.OutcomeUnknownError`), never a success that
    may be false.
    """
    if ended.row is not None:
        raise not_applied(ended)
    raise ended_unknown(
        ended,
        "the delete has ended since, and the record is gone: removed by this delete, or by "
        "another writer just before it (then this one found nothing to delete), which cannot "
        "be told apart",
    )


@contextlib.asynccontextmanager
async def _savepoint(joined: AsyncConnection) -> AsyncIterator[None]:
    """A savepoint of the caller's transaction around a batch written inside it: released
    when the block ends, rolled back when it raises.

    Raises:
        StorageUsageError: The caller's connection has no transaction open (``AUTOCOMMIT``),
            so its batch could not be all or nothing.
    """
    try:
        savepoint = await joined.begin_nested()
    except DBAPIError as exc:
        if sqlstate(exc) != "25P01":  # no_active_sql_transaction
            raise
        # SQLAlchemy told of the savepoint before sending it: no rollback will end it.
        if joined.sync_connection is not None:
            saves_on(joined.sync_connection).released()
        savepoint = None
    if savepoint is None:
        raise StorageUsageError(
            "pydantic_toast.transaction() was given a PostgreSQL connection with no "
            "transaction open (isolation_level='AUTOCOMMIT'), where a batch save cannot be all "
            "or nothing: pass a connection without AUTOCOMMIT, inside `async with "
            "engine.begin()`"
        )
    try:
        yield
    except BaseException:
        if savepoint.is_active:
            await savepoint.rollback()
        raise
    await savepoint.commit()


# JSON per run of batch statements sent together, without waiting for each one's reply (see
# _runs): a batch of 500 records of 100 KB was 250 statements, 250 round trips, each a wait
# for the server to be scheduled again on a busy machine (0.74x raw executemany's throughput).
_RUN_BYTES = 4 << 20


def _runs(
    records: Sequence[StoredRecord], spans: list[tuple[int, int]], most_records: int
) -> list[tuple[str | None, list[tuple[int, int]]]]:
    """The chunks ``spans`` of ``records`` in runs, each sent as one pipeline: consecutive
    chunks written by one statement, up to ``most_records`` records (as many rows as one
    chunk's statement returns at most) and :data:`_RUN_BYTES` of JSON a run (one command
    timeout covers the run). A chunk holding staged records is a run of its own, its
    statement ``None``. Pipelining needs asyncpg 0.30 (``fetchmany``): else each run is one
    chunk."""
    runs: list[tuple[str | None, list[tuple[int, int]]]] = []
    together = hasattr(asyncpg.Connection, "fetchmany")
    taken = bytes_taken = 0
    for start, end in spans:
        chunk = records[start:end]
        statement = None if any(map(staging.is_large, chunk)) else _write_statement(chunk)
        weight = sum(len(record.data) for record in chunk)
        if (
            together
            and runs
            and statement is not None
            and runs[-1][0] == statement
            and taken + end - start <= most_records
            and bytes_taken + weight <= _RUN_BYTES
        ):
            runs[-1][1].append((start, end))
            taken, bytes_taken = taken + end - start, bytes_taken + weight
        else:
            runs.append((statement, [(start, end)]))
            taken, bytes_taken = end - start, weight
    return runs


def _columns(records: Sequence[StoredRecord], *, staged: bool = False) -> tuple[Any, ...]:
    """The batch statement's parameters: one array per column.

    ``staged``: for the staged statement, whose large records' data comes from the stage; their
    ``data`` and exact text are NULL and a tenth array says whether the exact text is the
    staged data.
    """
    columns: tuple[list[Any], ...] = tuple([] for _ in range(10 if staged else 9))
    for record in records:
        large = staged and staging.is_large(record)
        columns[0].append(record.class_name)
        columns[1].append(record.id)
        columns[2].append(record.schema_version)
        columns[3].append(None if large else record.data.decode())
        columns[4].append(None if large else exact_text(record))
        columns[5].append(record.created_at)
        columns[6].append(record.updated_at)
        columns[7].append(record.revision)
        columns[8].append(expires_at(record))
        if staged:
            columns[9].append(large and needs_exact_text(record))
    return columns


async def _write_staged(driver: Any, records: Sequence[StoredRecord]) -> list[Any]:
    """The batch statement with the large records streamed into a staging table first.

    Runs inside the caller's transaction on ``driver`` (an asyncpg connection).
    """
    name = await staging.stage(driver, records)
    rows: list[Any] = await driver.fetch(_WRITE_STAGED, *_columns(records, staged=True))
    await staging.drop(driver, name)
    return rows


def _first_missing(
    records: Sequence[StoredRecord], written: dict[RecordKey, int]
) -> StoredRecord | None:
    """The first record the batch statement did not write (a conflict), if any."""
    if all(record.key in written for record in records):
        return None
    return next(record for record in records if record.key not in written)


def _conflict(record: StoredRecord, current: int | None) -> ConcurrencyError:
    return ConcurrencyError(
        record.class_name, record.id, expected=record.revision or 0, current=current, ttl=record.ttl
    )
