"""``postgresql://``: the ``external_records`` table through SQLAlchemy's async engine (asyncpg).

URLs are written as for libpq: ``postgresql://user:password@host:5432/db?sslmode=require``.
``postgres://`` and ``postgresql+asyncpg://`` work too. Query options:

* ``sslmode`` (``disable``, ``allow``, ``prefer``, ``require``, ``verify-ca``, ``verify-full``),
  ``sslrootcert``, ``sslcert``, ``sslkey``: as in libpq;
* ``pool_size`` (default 5) and ``max_overflow`` (default 10): connections per event loop;
* ``connect_timeout`` (seconds, default 10) and ``command_timeout`` (seconds, default 60);
* ``application_name``: shown in ``pg_stat_activity``.
"""

from __future__ import annotations

import ssl
from typing import Any

from sqlalchemy import URL
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pydantic_toast._exceptions import (
    ExternalStorageError,
    StorageConfigurationError,
    StorageConnectionError,
    StorageSchemaError,
    StorageValidationError,
)
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.sql import SQLAlchemyBackend, json_as_text, json_passthrough
from pydantic_toast.backends.sql_table import TABLE_NAME

__all__ = ["PostgreSQLBackend", "engine_options"]

_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SSL_FILES = ("sslrootcert", "sslcert", "sslkey")
_NUMBERS = {"pool_size": 5, "max_overflow": 10, "connect_timeout": 10.0, "command_timeout": 60.0}
_OPTIONS = {"sslmode", *_SSL_FILES, *_NUMBERS, "application_name"}
_MIGRATE_HINT = (
    "run `alembic upgrade head` with DATABASE_URL set to this database, or "
    "`pydantic-toast migrate <url>`, before first use"
)


def engine_options(url: StorageURL) -> tuple[URL, dict[str, Any]]:
    """The SQLAlchemy URL and ``create_async_engine`` options for a libpq-style URL.

    Raises:
        StorageConfigurationError: An option is unknown or has a bad value.
    """
    unknown = sorted(set(url.query) - _OPTIONS)
    if unknown:
        raise StorageConfigurationError(
            f"{url.masked}: unknown option(s) {', '.join(unknown)}; PostgreSQL URLs take "
            f"{', '.join(sorted(_OPTIONS))}"
        )
    numbers: dict[str, float] = {}
    for name, default in _NUMBERS.items():
        raw = url.query.get(name)
        try:
            numbers[name] = type(default)(raw) if raw is not None else default
        except ValueError:
            raise StorageConfigurationError(
                f"{url.masked}: {name} must be a number, got {raw!r}"
            ) from None
        if numbers[name] < 0 or (name == "pool_size" and numbers[name] < 1):
            raise StorageConfigurationError(f"{url.masked}: {name} must be positive")
    connect_args: dict[str, Any] = {
        "timeout": numbers["connect_timeout"],
        "command_timeout": numbers["command_timeout"],
        "ssl": _ssl_option(url),
    }
    if "application_name" in url.query:
        connect_args["server_settings"] = {"application_name": url.query["application_name"]}
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
        "hide_parameters": True,
        "pool_size": int(numbers["pool_size"]),
        "max_overflow": int(numbers["max_overflow"]),
        "pool_timeout": numbers["connect_timeout"],
        "json_serializer": json_passthrough,
        "json_deserializer": json_as_text,
        "connect_args": connect_args,
    }
    return sa_url, options


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
    if mode in ("allow", "prefer", "require"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=url.query.get("sslrootcert"))
        context.check_hostname = mode == "verify-full"
    if "sslcert" in url.query:
        context.load_cert_chain(url.query["sslcert"], url.query.get("sslkey"))
    return context


class PostgreSQLBackend(SQLAlchemyBackend):
    """Records in PostgreSQL's ``external_records`` table (create it with Alembic first).

    One engine per URL and event loop, shared by every model on that URL; one round trip per
    save, load or batch.
    """

    _insert = staticmethod(insert)

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        """Check the options and SSL settings without connecting."""
        engine_options(url)

    def _create_engine(self) -> AsyncEngine:
        sa_url, options = engine_options(self._parsed)
        return create_async_engine(sa_url, **options)

    def _explain(self, exc: BaseException) -> ExternalStorageError:
        where = self._parsed.address
        database = self._parsed.path.lstrip("/") or self._parsed.username or "postgres"
        sqlstate = _sqlstate(exc)
        if sqlstate == "42P01":
            return StorageSchemaError(
                f"the table {TABLE_NAME} does not exist in database {database} at {where}: "
                f"{_MIGRATE_HINT}",
                url=self._parsed.masked,
            )
        if sqlstate in ("28P01", "28000"):
            return StorageConnectionError(
                f"{where} rejected the credentials of user {self._parsed.username!r}: check the "
                "user name and password in the storage URL",
                url=self._parsed.masked,
            )
        if sqlstate == "3D000":
            return StorageConnectionError(
                f"database {database} does not exist on {where}: create it "
                f"(createdb {database}), then {_MIGRATE_HINT}",
                url=self._parsed.masked,
            )
        if sqlstate == "22P05":
            return StorageValidationError(
                "a string holds the NUL character (\\u0000), which PostgreSQL's jsonb cannot "
                "store: nothing was written; strip NUL characters from the data or use another "
                "backend (SQLite, Redis)"
            )
        if sqlstate in ("22P02", "22023"):
            return StorageValidationError(
                "a float field holds NaN or Infinity, which PostgreSQL's jsonb cannot store: "
                "nothing was written; use None instead, or another backend (SQLite, Redis)"
            )
        if isinstance(exc, ssl.SSLError) or "SSL" in type(_driver_error(exc)).__name__:
            return StorageConnectionError(
                f"the SSL handshake with {where} failed ({type(_driver_error(exc)).__name__}): "
                "check sslmode and sslrootcert",
                url=self._parsed.masked,
            )
        if isinstance(exc, ConnectionError) and "SSL" in str(exc):
            return StorageConnectionError(
                f"{where} does not accept SSL connections but sslmode requires SSL: enable SSL "
                "on the server or use sslmode=prefer or disable",
                url=self._parsed.masked,
            )
        if isinstance(exc, OSError | TimeoutError):
            return StorageConnectionError(
                f"could not connect to PostgreSQL at {where} ({type(exc).__name__}): check that "
                "the server runs and accepts TCP connections, and the host and port in the URL",
                url=self._parsed.masked,
            )
        return super()._explain(exc)


def _driver_error(exc: BaseException) -> BaseException:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return exc.orig.__cause__ or exc.orig
    return exc


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (getattr(exc, "orig", None), _driver_error(exc), exc):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None
