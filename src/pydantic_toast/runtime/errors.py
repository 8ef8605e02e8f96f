"""The one map from driver and backend exceptions to pydantic-toast's errors.

Every call into a backend crosses :mod:`pydantic_toast.runtime.boundary`, which hands any
exception that is not already the library's to :func:`translate`. Nothing else in the library
turns a driver error into a library error.

The map reads what drivers expose without importing them: PostgreSQL's SQLSTATE codes (asyncpg,
through SQLAlchemy's wrappers too), SQLite's messages, Redis' error prefixes and exception
classes, botocore's S3 error codes and exception classes, and the builtin
``OSError``/``TimeoutError`` family. What it cannot place becomes a
:class:`~pydantic_toast.StorageOperationError` naming the backend and the exception type.

The translated error's ``__cause__`` is a :class:`DriverError` summary (type, SQLSTATE or error
code, and the driver's traceback) rather than the driver's exception itself: drivers put
statement parameters, JSON excerpts and connection strings in their messages, and none of that
may travel with the library's errors.
"""

from __future__ import annotations

import errno
import re
import ssl
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

from pydantic_toast._exceptions import (
    ExternalStorageError,
    StorageAuthenticationError,
    StorageBusyError,
    StorageConfigurationError,
    StorageConnectionError,
    StorageConnectTimeoutError,
    StorageOperationError,
    StoragePoolTimeoutError,
    StorageSchemaError,
    StorageTimeoutError,
    StorageValidationError,
    StoredDataError,
    shorten,
)
from pydantic_toast._url import StorageURL

__all__ = [
    "NOT_APPLIED",
    "DriverError",
    "Failure",
    "sqlstate",
    "translate",
    "unanswered",
    "unsent",
]

NOT_APPLIED: Final = "_pydantic_toast_not_applied"
"""The attribute marking a write's timeout that the store did not apply (see
:func:`pydantic_toast.runtime.boundary.not_applied`)."""

MIGRATE_HINT: Final = (
    "run `pydantic-toast migrate <url>` with this storage URL before first use (the library's "
    "own migrations: your project's `alembic upgrade head` does not apply them)"
)


class DriverError(Exception):
    """A summary of the driver exception behind a library error: its type and error code.

    Attributes:
        type_name: The driver exception's qualified type name.
        code: Its SQLSTATE, errno or error prefix, when it has one.
    """

    def __init__(self, type_name: str, code: str | None) -> None:
        super().__init__(f"{type_name}{f' ({code})' if code else ''}")
        self.type_name = type_name
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.type_name, self.code), self.__dict__


@dataclass(frozen=True, slots=True)
class Failure:
    """Where a backend call failed: which backend, which operation, in which phase.

    Attributes:
        backend: The backend's kind for messages (``"PostgreSQL"``, ``"Redis"``, a class name).
        url: The storage URL (shown masked only).
        operation: ``"connect"``, ``"save"``, ``"load"``, ``"delete"``, ``"list"`` or ``"count"``.
        connecting: Whether the failure came while opening a connection.
        class_name: The class whose records were involved, when known.
        built_in: Whether the backend is one of the library's, whose tables its migrations
            make. A backend of the application's own on sqlite3 or a PostgreSQL driver keeps
            its own tables: its messages name neither ``external_records`` nor
            ``pydantic-toast migrate``.
    """

    backend: str
    url: StorageURL
    operation: str
    connecting: bool = False
    class_name: str | None = None
    built_in: bool = True

    @property
    def where(self) -> str:
        """``Backend at host:port`` for messages; ``Backend (url)`` for a store with neither
        host nor port (a file path, ``memory://``), which ``localhost`` would misname."""
        if self.url.scheme in ("memory", "sqlite", "sqlite+aiosqlite") or not (
            self.url.host or self.url.port
        ):
            return f"{self.backend} ({self.url.masked})"
        return f"{self.backend} at {self.url.address}"

    @property
    def database(self) -> str:
        """The database name (PostgreSQL), for messages."""
        return shorten(self.url.path.lstrip("/") or self.url.username or "postgres")


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind ``exc`` (through SQLAlchemy's wrappers), if any."""
    return _first(_codes(exc, "sqlstate"))


def translate(exc: BaseException, failure: Failure) -> tuple[ExternalStorageError, bool]:
    """The library error for ``exc``, and whether the operation may be retried once.

    Only a connection lost on the way (not a refusal, not a timeout) is worth one retry; the
    boundary decides whether the operation is safe to repeat.
    """
    if isinstance(exc, ExternalStorageError):
        return exc, False
    sqlstate = _first(_codes(exc, "sqlstate"))
    if sqlstate is not None:
        return _postgres(sqlstate, exc, failure)
    for rule in _RULES:
        result = rule(exc, failure)
        if result is not None:
            return result
    return _fallback(exc, failure), False


def unsent(exc: BaseException) -> bool:
    """Whether the driver failed while connecting, before any request could leave.

    Backends mark errors of their pools' connecting step themselves
    (:func:`pydantic_toast.runtime.boundary.connecting`); this reads the drivers whose
    connecting happens out of their reach: botocore's ``EndpointConnectionError`` and
    ``ConnectTimeoutError``, and redis-py's "Error ... connecting to" (a cluster node's
    connection opened inside the client).
    """
    driver = _innermost(exc)
    name, module = type(driver).__name__, type(driver).__module__
    if module.startswith(("botocore", "aiobotocore")):
        return name in ("EndpointConnectionError", "ConnectTimeoutError")
    if module.startswith("redis") and name in ("ConnectionError", "TimeoutError"):
        return str(driver).startswith(("Error ", "Timeout ")) and " connecting to " in str(driver)
    return False


def unanswered(exc: BaseException, failure: Failure) -> bool:
    """Whether the client gave up waiting for the reply to a request it had sent (a socket or
    read timeout): the server may have applied it, or may still apply it.

    PostgreSQL's ``command_timeout`` is one: asyncpg then asks the server to cancel the
    statement, but one that had completed (its reply slow on the network, or the server
    answering just then) stays applied. A timeout the server reports itself (PostgreSQL's
    ``statement_timeout`` or ``lock_timeout``, SQLite's busy timeout) is not one: the
    statement failed, nothing was applied. Nor is a timeout while connecting (see
    :func:`unsent`) or waiting for a pooled connection, nor one the backend found not applied
    (``pydantic_toast.runtime.boundary.not_applied``).
    """
    if _first(_codes(exc, "sqlstate")) is not None or unsent(exc):
        return False
    if any(getattr(error, NOT_APPLIED, False) for error in _chain(exc)):
        return False
    driver = _innermost(exc)
    if failure.backend == "PostgreSQL":  # not SQLAlchemy's pool TimeoutError: nothing was sent
        return isinstance(driver, TimeoutError)
    return isinstance(driver, TimeoutError) or type(driver).__name__ in (
        "TimeoutError",  # redis-py's
        "ReadTimeoutError",  # botocore's
    )


def summary(exc: BaseException) -> DriverError:
    """A :class:`DriverError` for ``exc``, carrying its traceback but none of its text."""
    driver = _innermost(exc)
    code = (
        _first(_codes(exc, "sqlstate"))
        or _s3_code(driver)
        or (str(driver.errno) if isinstance(driver, OSError) and driver.errno else None)
    )
    status = getattr(driver, "status_code", None)  # redis-py 8: the reply's error prefix
    if code is None and isinstance(status, str) and status.isalpha() and len(status) <= 32:
        code = status
    kind = type(driver)
    result = DriverError(f"{kind.__module__}.{kind.__qualname__}", code)
    return result.with_traceback(exc.__traceback__)


# -- PostgreSQL, by SQLSTATE ----------------------------------------------------------------------


def _postgres(
    sqlstate: str, exc: BaseException, failure: Failure
) -> tuple[ExternalStorageError, bool]:
    url, where = failure.url.masked, failure.where
    if not failure.built_in and sqlstate in _LIBRARY_SCHEMA_STATES:
        return _own_schema(sqlstate, exc, failure), False
    if sqlstate in ("42P01", "42703"):
        return StorageSchemaError(
            f"the {_missing(exc, sqlstate)} does not exist in database {failure.database} on "
            f"{where} (not migrated, or migrated by an older pydantic-toast): {MIGRATE_HINT}",
            url=url,
        ), False
    if sqlstate in ("28P01", "28000"):
        user = shorten(failure.url.username or "postgres")
        return StorageAuthenticationError(
            f"{where} rejected the credentials of user {user!r}: check the user name and "
            "password in the storage URL",
            url=url,
        ), False
    if sqlstate == "3D000":
        return StorageConnectionError(
            f"database {failure.database} does not exist on {where}: create it "
            f"(createdb {failure.database}), then {MIGRATE_HINT}",
            url=url,
        ), False
    if sqlstate in ("57014", "55P03"):
        return StorageTimeoutError(_server_timeout(sqlstate, exc, failure), url=url), False
    if sqlstate == "57P03":
        return StorageBusyError(
            f"{where} is not accepting connections now (SQLSTATE 57P03: starting up, shutting "
            "down, or a standby without hot_standby): retry in a moment; if it lasts, point "
            "the storage URL at a server that accepts connections",
            url=url,
        ), False
    if sqlstate in ("53300", "53000"):
        return StorageBusyError(
            f"{where} cannot take the connection now (SQLSTATE {sqlstate}: out of connections "
            "or resources): retry later, or lower pool_size",
            url=url,
        ), False
    if sqlstate in ("57P01", "57P02") or sqlstate.startswith("08"):
        return _lost(failure), True
    if sqlstate == "22P05":
        return StorageValidationError(
            "a string holds the NUL character (\\u0000), which PostgreSQL's jsonb cannot store: "
            "nothing was written; strip NUL characters from the data or use another backend",
            class_name=failure.class_name,
        ), False
    if sqlstate in ("22P02", "22023") and failure.operation == "save":
        return StorageValidationError(
            "a value cannot be stored in PostgreSQL's jsonb (NaN or Infinity in a float): "
            "nothing was written; use None instead, or another backend",
            class_name=failure.class_name,
        ), False
    if sqlstate == "42501":
        staging = (
            ", and TEMPORARY on the database (records over 1 MiB are staged in a temporary table)"
            if failure.operation == "save"
            else ""
        )
        return StorageOperationError(
            f"{where} denied the {failure.operation} (insufficient privilege): grant the URL's "
            "user SELECT, INSERT, UPDATE and DELETE on external_records and "
            f"external_record_counts{staging}"
        ), False
    if sqlstate == "25006":
        return StorageOperationError(
            f"{where} is read-only (a standby?): point the storage URL at the primary"
        ), False
    return StorageOperationError(
        f"{where} refused the {failure.operation} (SQLSTATE {sqlstate})"
    ), False


_LIBRARY_SCHEMA_STATES = ("42P01", "42703", "3D000", "42501")
"""The SQLSTATEs whose messages name the library's tables or its migrate command."""


def _own_schema(sqlstate: str, exc: BaseException, failure: Failure) -> ExternalStorageError:
    """The error for ``sqlstate`` from a backend of the application's own, whose tables and
    grants are its own: the fix is in that backend's setup, not ``pydantic-toast migrate``."""
    url, where = failure.url.masked, failure.where
    if sqlstate in ("42P01", "42703"):
        missing = _missing(exc, sqlstate, "table")
        return StorageSchemaError(
            f"the {missing} does not exist in database {failure.database} on {where} "
            f"(SQLSTATE {sqlstate}): create the tables the {failure.backend} backend uses, as "
            "its setup says (pydantic-toast migrate makes only the built-in backends' table)",
            url=url,
        )
    if sqlstate == "3D000":
        return StorageConnectionError(
            f"database {failure.database} does not exist on {where}: create it "
            f"(createdb {failure.database})",
            url=url,
        )
    return StorageOperationError(
        f"{where} denied the {failure.operation} (insufficient privilege, SQLSTATE 42501): "
        f"grant the URL's user the privileges the {failure.backend} backend needs on its tables"
    )


# PostgreSQL's message names the missing table or column: the library's own, never user data.
_UNDEFINED = re.compile(r'^(relation|column) "?(?:\w+\.)?(\w+)"? (?:of relation "\w+" )?does not')


def _server_timeout(sqlstate: str, exc: BaseException, failure: Failure) -> str:
    """What ended a statement the server cancelled (SQLSTATE 57014 or 55P03), and the fix.

    The server's own ``statement_timeout`` and ``lock_timeout`` (a DBA's ``ALTER ROLE`` or
    ``ALTER DATABASE ... SET``) are told apart by the server's message, which holds no data;
    the URL's ``command_timeout`` cannot lift them. A message in another language (the
    server's ``lc_messages``) gets the general text.
    """
    where, operation = failure.where, failure.operation
    reason = next(
        (str(error) for error in _chain(exc) if getattr(error, "sqlstate", None) == sqlstate),
        "",
    )
    if "statement timeout" in reason:
        return (
            f"the server's statement_timeout ended a statement on {where} during {operation} "
            "(another transaction may hold the row, or the statement is slow): retry, or raise "
            "statement_timeout for the URL's user or database (ALTER ROLE ... SET "
            "statement_timeout; the URL's command_timeout does not change it)"
        )
    if "lock timeout" in reason:
        return (
            f"the server's lock_timeout ended a lock wait on {where} during {operation} "
            "(another transaction holds the row or the table): retry, or raise lock_timeout for "
            "the URL's user or database (ALTER ROLE ... SET lock_timeout; the URL's "
            "command_timeout does not change it)"
        )
    what = "a statement" if sqlstate == "57014" else "a lock wait"
    return (
        f"{what} on {where} exceeded its timeout or was cancelled during {operation} (another "
        "transaction may hold the row; the server's statement_timeout or lock_timeout, or a "
        "cancel request): retry, or raise the timeout that ended it (command_timeout in the "
        "URL, or the server's statement_timeout or lock_timeout for the URL's user)"
    )


def _missing(exc: BaseException, sqlstate: str, table: str = "table external_records") -> str:
    """``table <name>`` or ``column <name>`` from the undefined object's error, or a general
    phrase: after an upgrade, the table that is missing may be another than external_records."""
    for error in _chain(exc):
        if getattr(error, "sqlstate", None) == sqlstate:
            found = _UNDEFINED.match(str(error))
            if found is not None:
                kind = "table" if found.group(1) == "relation" else "column"
                return f"{kind} {found.group(2)}"
    return table if sqlstate == "42P01" else "column"


# -- the other drivers, rule by rule -----------------------------------------------------------

Translation = tuple[ExternalStorageError, bool] | None


def _sqlite(exc: BaseException, failure: Failure) -> Translation:
    driver = _innermost(exc)
    if type(driver).__module__ != "sqlite3":
        return None
    message = str(driver)
    url = failure.url.masked
    if not failure.built_in:
        return _own_sqlite(message, type(driver).__name__, failure)
    if message.startswith(("no such table", "no such column", "table external_records has no")):
        return StorageSchemaError(
            f"external_records is missing or outdated in {failure.url.masked}: {MIGRATE_HINT}",
            url=url,
        ), False
    if "database is locked" in message or "busy" in message:
        return StorageBusyError(
            f"{failure.where} stayed locked by another writer past the busy timeout: retry",
            url=url,
        ), False
    if "file is not a database" in message:
        return StorageConnectionError(
            f"{shorten(_sqlite_file(failure.url.path), 200)} is not a SQLite database file "
            f"({type(driver).__name__}: {message}): the URL names another kind of file, or an "
            "encrypted or damaged one; point it at the database file, or at a new path "
            "(pydantic-toast migrate creates it)",
            url=url,
        ), False
    if "unable to open" in message or "readonly" in message or "disk" in message:
        return StorageConnectionError(
            f"SQLite could not use {shorten(_sqlite_file(failure.url.path), 200)} "
            f"({type(driver).__name__}: {shorten(message)}): check the path, its folder and "
            "their permissions",
            url=url,
        ), False
    return None


def _own_sqlite(message: str, kind: str, failure: Failure) -> Translation:
    """sqlite3's errors in a backend of the application's own: its tables and its file are
    its own (the URL's path need not name the file, as it does for ``sqlite://``)."""
    url, where = failure.url.masked, failure.where
    # sqlite3's messages here name a table, a column or the file's state, never data.
    if message.startswith(("no such table", "no such column")) or (
        message.startswith("table ") and " has no column" in message
    ):
        return StorageSchemaError(
            f"{where}: {shorten(message)} ({kind}): create or update the tables the "
            f"{failure.backend} backend uses, as its setup says (pydantic-toast migrate makes "
            "only the built-in backends' table)",
            url=url,
        ), False
    if "database is locked" in message or "busy" in message:
        return StorageBusyError(
            f"{where}: the SQLite database stayed locked by another writer ({kind}): retry",
            url=url,
        ), False
    if (
        "unable to open" in message
        or "readonly" in message
        or "disk" in message
        or ("file is not a database" in message)
    ):
        return StorageConnectionError(
            f"{where} could not use its SQLite database file ({kind}: {shorten(message)}): check "
            "the path the backend opens, its folder and their permissions",
            url=url,
        ), False
    return None


def _sqlite_file(path: str) -> str:
    """The file a ``sqlite://`` URL's path names: ``/data.db`` is relative, ``//tmp/x.db`` not."""
    return path[1:] if path.startswith("/") else path


_REDIS_BUSY = (
    "BusyLoadingError",
    "TryAgainError",
    "MasterDownError",
    "ClusterDownError",
    "AskError",
    "MovedError",
)


def _redis(exc: BaseException, failure: Failure) -> Translation:
    # redis-py raises one class per reply prefix (and strips the prefix from the message).
    driver = _innermost(exc)
    if not type(driver).__module__.startswith("redis"):
        return None
    url, where = failure.url.masked, failure.where
    name, message = type(driver).__name__, str(driver)
    # redis-py's cluster client wraps the failure of its last startup node ("Redis Cluster
    # cannot be connected ...") in RedisClusterException: that failure is the one to report.
    reason = driver.__cause__
    if name == "RedisClusterException" and "cannot be connected" in message and reason:
        translated = _redis(reason, replace(failure, connecting=True))
        if translated is not None:
            return translated
    if name == "RedisClusterException" and "Cluster mode is not enabled" in message:
        return StorageConfigurationError(
            f"{where} is not a cluster node (cluster mode is not enabled on it): use a "
            "redis:// URL for a single server, or point redis+cluster:// at a cluster's node"
        ), False
    # AskError, MovedError: a Redis Cluster slot migrating, or moved again, under a large
    # document's pieces (sent on the slot's primary directly, not through the cluster client).
    if name in _REDIS_BUSY or (name == "ResponseError" and message.startswith("BUSY")):
        return StorageBusyError(f"{where} is busy ({name}): retry in a moment", url=url), False
    # ClusterError: redis-py's cluster client gave up on a command after 16 redirections or
    # TRYAGAIN replies (its only use of it); "non local key": a script reading a key its node
    # lacks. Either way the command never ran, refused while a slot was migrated.
    if name == "ClusterError" or (name == "ResponseError" and "non local key" in message):
        return StorageBusyError(
            f"{where}: a hash slot is being migrated between nodes and the command was refused "
            f"until it ends ({name}): retry in a moment",
            url=url,
        ), False
    if name == "MaxConnectionsError":
        return StorageBusyError(
            f"{where}: every pooled connection to a cluster node is busy: retry, or raise "
            "max_connections",
            url=url,
        ), False
    if name == "ConnectionError" and "max number of clients" in message:
        return StorageBusyError(
            f"{where} has reached its maximum number of clients: retry later, or lower "
            "max_connections",
            url=url,
        ), False
    # redis-py 8 keeps the reply's prefix (NOAUTH, WRONGPASS, LOADING...) as ``status_code``.
    status = getattr(driver, "status_code", None)
    if name.startswith("Authentication"):
        if status == "NOAUTH" or "required" in message or "already authenticated" in message:
            fix = (
                "write redis://:password@host:port/db (or redis://user:password@...)"
                if failure.built_in
                else f"give the {failure.backend} backend the server's password"
            )
            return StorageAuthenticationError(
                f"{where} needs a password and the storage URL gives none: {fix}", url=url
            ), False
        if "no password is set" in message or "without any password" in message:
            return StorageAuthenticationError(
                f"{where} has no password set but the storage URL gives one: remove it from "
                "the URL, or set requirepass on the server",
                url=url,
            ), False
        who = f"user {shorten(failure.url.username)!r}" if failure.url.username else "the password"
        return StorageAuthenticationError(
            f"{where} rejected {who}: check the credentials in the storage URL "
            "(redis://user:password@host:port/db)",
            url=url,
        ), False
    if name == "NoPermissionError":
        return StorageOperationError(
            f"{where}: the ACL of user {shorten(failure.url.username or 'default')!r} forbids "
            f"the {failure.operation}: "
            "allow its commands and key prefix (ACL SETUSER)"
        ), False
    if "DB index is out of range" in message:
        # The built-in backends take the database from the URL's path; another may not.
        database = (
            f"database {shorten(failure.url.path.strip('/'))}"
            if failure.built_in
            else f"database the {failure.backend} backend selects"
        )
        return StorageConfigurationError(
            f"{where} has no {database}: use a database number below the server's `databases` "
            "setting (16 by default)"
        ), False
    # UNBLOCKED: a command the server held (WAIT, after the save script ran) was released
    # because the primary was demoted in a failover. The write may or may not have reached
    # the promoted replica, as when the connection is lost after sending: settled as that.
    if name == "ResponseError" and message.startswith("UNBLOCKED"):
        return StorageConnectionError(
            f"{where} was demoted to a replica in a failover during {failure.operation}: "
            "the next call goes to the promoted primary",
            url=url,
        ), True
    if name == "ReadOnlyError":
        return StorageOperationError(
            f"{where} is a read-only replica: point the storage URL at the primary"
        ), False
    if name == "OutOfMemoryError":
        return StorageOperationError(
            f"{where} is out of memory (maxmemory) and refuses writes: free memory or raise it"
        ), False
    if name == "MasterNotFoundError":  # redis+sentinel: no sentinel names a healthy primary
        return StorageConnectionError(
            f"no sentinel reachable from {where} names a healthy primary for the service in "
            "the URL's path: a failover may be under way (retry in a moment); otherwise check "
            "the service name, that the sentinels run, and sentinel_password if they need one",
            url=url,
        ), False
    if name == "ConnectionError" and "No connection available" in message:
        return _pool_timeout(failure), False
    if name == "TimeoutError" or isinstance(driver, TimeoutError):
        return _timeout(failure), False
    if name == "ConnectionError" or isinstance(driver, OSError):
        return _unreachable(failure), True
    if name == "InvalidResponse" and (failure.connecting or failure.operation == "connect"):
        return StorageConnectionError(
            f"{where} did not answer as a Redis server does ({name}): check the host and port "
            "in the URL (another service may listen there)",
            url=url,
        ), False
    return StorageOperationError(f"{where} refused the {failure.operation} ({name})"), False


# S3 error codes (botocore's ClientError.response["Error"]["Code"]; a HEAD answers with a bare
# HTTP status, since its response has no body).
_S3_DENIED: Final = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
)
_S3_BUSY: Final = frozenset({"503", "SlowDown", "ServiceUnavailable", "RequestLimitExceeded"})


def _s3(exc: BaseException, failure: Failure) -> Translation:
    driver = _innermost(exc)
    module = type(driver).__module__
    if not module.startswith(("botocore", "aiobotocore")):
        return None
    url, name = failure.url.masked, type(driver).__name__
    bucket = failure.url.host
    endpoint = failure.url.query.get("endpoint_url") or "AWS"
    where = f"S3 bucket {bucket!r} at {endpoint}"
    code = _s3_code(driver)
    if code == "NoSuchBucket" or (code == "404" and failure.operation == "connect"):
        return StorageConnectionError(
            f"{where} does not exist: create it (aws s3 mb s3://{bucket}, with --endpoint-url for "
            "a non-AWS store) or fix the bucket name in the storage URL",
            url=url,
        ), False
    if code in _S3_DENIED:
        return StorageAuthenticationError(
            f"{where} denied the {failure.operation} ({code}): check the access key and secret "
            "(s3://key:secret@bucket/prefix, or the AWS credential chain) and that their policy "
            "allows s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on the bucket",
            url=url,
        ), False
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return StorageAuthenticationError(
            f"no AWS credentials were found for {where}: put them in the URL "
            "(s3://key:secret@bucket/prefix) or in the AWS chain (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials with AWS_PROFILE, an instance role)",
            url=url,
        ), False
    if code in _S3_BUSY:
        return StorageBusyError(
            f"{where} is throttling requests ({code}): retry later", url=url
        ), False
    if name == "ConnectTimeoutError":
        return StorageConnectTimeoutError(
            f"connecting to {where} timed out: check endpoint_url and the network, or raise "
            "connect_timeout in the URL",
            url=url,
        ), False
    if name == "ReadTimeoutError":
        return StorageTimeoutError(
            f"the {failure.operation} on {where} timed out: retry, or raise read_timeout in the "
            "URL",
            url=url,
        ), False
    if name in ("EndpointConnectionError", "ConnectionClosedError", "HTTPClientError"):
        if failure.connecting or failure.operation == "connect":
            return StorageConnectionError(
                f"could not connect to {where}: check that the store runs and that endpoint_url "
                "in the URL gives its scheme, host and port",
                url=url,
            ), False
        return _lost(failure), True
    if code:
        return StorageOperationError(
            f"{where} refused the {failure.operation} (S3 error {code})"
        ), False
    return None


def _s3_code(error: BaseException) -> str | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return None


def _sqlalchemy_pool(exc: BaseException, failure: Failure) -> Translation:
    if type(exc).__module__ == "sqlalchemy.exc" and type(exc).__name__ == "TimeoutError":
        return _pool_timeout(failure), False
    return None


def _ssl(exc: BaseException, failure: Failure) -> Translation:
    for error in _chain(exc):
        if isinstance(error, ssl.SSLError) or "SSL" in type(error).__name__:
            return StorageConnectionError(
                f"the SSL handshake with {failure.where} failed ({type(error).__name__}): "
                "check sslmode and sslrootcert",
                url=failure.url.masked,
            ), False
        if isinstance(error, ConnectionError) and "SSL" in str(error):
            return _ssl_refused(str(error), failure), False
    return None


_SSL_REQUIRED = frozenset({"require", "verify-ca", "verify-full"})


def _ssl_refused(message: str, failure: Failure) -> StorageConnectionError:
    """asyncpg's answer to a reply to its SSL request that is not "S": "rejected SSL upgrade"
    for "N" when the URL requires SSL, and for a reply that is not PostgreSQL's at all (the
    only reason when SSL is optional); an error response, whose text it does not show."""
    if "error response" in message:
        problem = (
            "answered the request for SSL with an error (its text is not shown: it comes "
            "before encryption): check the server's log"
        )
    elif failure.url.query.get("sslmode") in _SSL_REQUIRED:
        problem = (
            "does not accept SSL connections but the URL requires SSL: enable SSL on the "
            "server or use sslmode=prefer or disable (or, if it is not a PostgreSQL server, "
            "check the host and port in the URL)"
        )
    else:
        problem = (
            "did not answer as a PostgreSQL server does: check the host and port in the URL "
            "(another service may listen there)"
        )
    return StorageConnectionError(f"{failure.where} {problem}", url=failure.url.masked)


def _redis_closed_under(exc: BaseException, failure: Failure) -> Translation:
    """A redis-py connection closed by another task while this one used it: a lost connection.

    redis-py's cluster client disconnects a node's free connections after an error on one
    of them while other tasks may take one of those (``ClusterNode.disconnect_free_
    connections`` awaits each disconnect); the one that did then fails inside redis-py's
    connection code with an AttributeError or TypeError on its closed stream.
    """
    if not isinstance(exc, AttributeError | TypeError) or exc.__traceback__ is None:
        return None
    innermost = traceback.extract_tb(exc.__traceback__)[-1]
    if innermost.filename.replace("\\", "/").endswith("redis/asyncio/connection.py"):
        return _lost(failure), True
    return None


def _builtin(exc: BaseException, failure: Failure) -> Translation:
    driver = _innermost(exc)
    if isinstance(driver, TimeoutError):
        return _timeout(failure), False
    if _local_file_problem(driver) and not (failure.connecting or failure.operation == "connect"):
        return _file_problem(driver, failure), False
    if isinstance(driver, OSError):
        return _unreachable(failure), True
    if type(driver).__module__.startswith("asyncpg") and type(driver).__name__ in (
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "InternalClientError",
        "ConnectionFailureError",
    ):
        return _lost(failure), True
    if type(exc).__name__ == "DBAPIError" and getattr(exc, "connection_invalidated", False):
        return _lost(failure), True
    return None


# Errors of a store's own files or disk (a backend on the file system): never a lost
# connection, and repeating the call cannot help. While connecting they are left to
# _unreachable: a missing or forbidden Unix socket is a server that cannot be reached.
_FILE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
)
_FILE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EROFS", "EDQUOT", "EFBIG", "ENAMETOOLONG")
    if hasattr(errno, name)
)


def _local_file_problem(driver: BaseException) -> bool:
    # A PermissionError of a socket (EPERM: a firewall refusing a send) names no file.
    return (
        isinstance(driver, _FILE_ERRORS)
        or (isinstance(driver, PermissionError) and driver.filename is not None)
        or (isinstance(driver, OSError) and driver.errno in _FILE_ERRNOS)
    )


def _file_problem(driver: BaseException, failure: Failure) -> StorageOperationError:
    code = getattr(driver, "errno", None)
    name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    return StorageOperationError(
        f"the {failure.backend} backend failed during {failure.operation} with "
        f"{type(driver).__name__}{f' ({name})' if name else ''}: a problem with the store's "
        "files or disk (a path, permissions, space), not a lost connection, so it was not "
        "retried; see the chained DriverError's traceback for where"
    )


_RULES: Final[tuple[Callable[[BaseException, Failure], Translation], ...]] = (
    _sqlite,
    _ssl,
    _redis,
    _redis_closed_under,
    _s3,
    _sqlalchemy_pool,
    _builtin,
)


def _fallback(exc: BaseException, failure: Failure) -> ExternalStorageError:
    driver = _innermost(exc)
    kind = type(driver).__name__
    if failure.operation == "load" and isinstance(driver, ValueError | UnicodeError):
        return StoredDataError(
            f"{failure.where} returned a record that cannot be read ({kind} in the backend's "
            "load): it was written by something else or damaged, and is left untouched",
            class_name=failure.class_name or "?",
            id="?",
        )
    return StorageOperationError(
        f"the {failure.backend} backend failed during {failure.operation} with {kind}: see the "
        "chained DriverError's traceback for where"
    )


# -- shared messages ---------------------------------------------------------------------------


def _unreachable(failure: Failure) -> StorageConnectionError:
    if failure.connecting or failure.operation == "connect":
        return StorageConnectionError(
            f"could not connect to {failure.where}: check that the server runs and accepts "
            "connections, and the host and port in the URL",
            url=failure.url.masked,
        )
    return _lost(failure)


def _lost(failure: Failure) -> StorageConnectionError:
    return StorageConnectionError(
        f"the connection to {failure.where} was lost during {failure.operation}: check that the "
        "server runs; the next call reconnects",
        url=failure.url.masked,
    )


def _timeout(failure: Failure) -> ExternalStorageError:
    redis = failure.backend.startswith("Redis")  # Redis, RedisCluster, RedisSentinel
    # A backend of the application's own reads the options it reads: name none of the URL's.
    own = f"the {failure.backend} backend's"
    if failure.connecting or failure.operation == "connect":
        option = "socket_connect_timeout" if redis else "connect_timeout"
        fix = f"{option} in the URL" if failure.built_in else f"{own} connect timeout"
        return StorageConnectTimeoutError(
            f"connecting to {failure.where} timed out: check the host and the network, or raise "
            f"{fix}",
            url=failure.url.masked,
        )
    option = {"PostgreSQL": "command_timeout", "Redis": "socket_timeout"}.get(
        "Redis" if redis else failure.backend, "command or socket timeout"
    )
    fix = f"the URL's {option}" if failure.built_in else f"{own} timeout"
    return StorageTimeoutError(
        f"the {failure.operation} on {failure.where} timed out: the server is slow or a lock is "
        f"held; retry, or raise {fix}",
        url=failure.url.masked,
    )


def _pool_timeout(failure: Failure) -> StoragePoolTimeoutError:
    return StoragePoolTimeoutError(
        f"no pooled connection to {failure.where} became free within the pool timeout: raise "
        "pool_size/max_connections in the URL, or lower the concurrency",
        url=failure.url.masked,
    )


# -- reading drivers' exceptions -------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, SQLAlchemy's ``orig``, and their causes and contexts, without repeats."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        for linked in (error.__context__, error.__cause__, getattr(error, "orig", None)):
            if isinstance(linked, BaseException):
                stack.append(linked)


def _codes(exc: BaseException, attribute: str) -> Iterator[str]:
    for error in _chain(exc):
        code = getattr(error, attribute, None)
        if isinstance(code, str) and code:
            yield code


def _first(codes: Iterator[str]) -> str | None:
    return next(codes, None)


def _innermost(exc: BaseException) -> BaseException:
    """The driver's own exception behind SQLAlchemy's wrapper, or ``exc`` itself."""
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        return orig.__cause__ or orig
    return exc
