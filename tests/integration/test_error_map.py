"""The one error map, proven on real servers: each failure category, its exact class and message.

Every test asserts the exact library class (``type(exc) is ...``), that the message names the
cause and the fix, and, where a driver failed, that ``__cause__`` is a data-free ``DriverError``.
Servers that must be reconfigured are throwaway ones (``tests/servers.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import redis

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalStorageError,
    OutcomeUnknownError,
    RecordKey,
    RecordNotFoundError,
    StorageAuthenticationError,
    StorageBackend,
    StorageBusyError,
    StorageConfigurationError,
    StorageConnectionError,
    StorageConnectTimeoutError,
    StorageOperationError,
    StoragePoolTimeoutError,
    StorageSchemaError,
    StorageTimeoutError,
    StorageURL,
    StorageValidationError,
    StoredDataError,
    StoredRecord,
)
from pydantic_toast.backends.memory import MemoryBackend
from pydantic_toast.integrations.cli import main as toast_cli
from pydantic_toast.runtime.errors import DriverError
from tests import servers
from tests.integration.conftest import _admin, _with_database, throwaway_database
from tests.silent_servers import SilentServer


def model_on(url: str, name: str = "Ledger", **config: Any) -> type[ExternalBaseModel]:
    return type(
        name,
        (ExternalBaseModel,),
        {
            "__annotations__": {"text": str},
            "model_config": ExternalConfigDict(
                storage=url, external_name=f"{name}{uuid4().hex[:10]}", **config
            ),
        },
    )


ROLE_PASSWORD = "role-pass-7"


def _as_role(url: str, role: str) -> str:
    """``url`` logging in as ``role`` (password ROLE_PASSWORD): the session's server may be
    one with trust authentication or a throwaway one that asks for passwords."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{role}:{ROLE_PASSWORD}@{rest.rsplit('@', 1)[-1]}"


def raised(call: Any) -> ExternalStorageError:
    """The library error ``call()`` raises (fails the test when it raises nothing)."""
    with pytest.raises(ExternalStorageError) as info:
        call()
    return info.value


def assert_mapped(
    error: BaseException, kind: type[ExternalStorageError], *words: str, driver: bool = True
) -> None:
    """``error`` is exactly ``kind``, its message holds ``words``, its cause a DriverError."""
    assert type(error) is kind, f"{type(error).__name__}: {error}"
    for word in words:
        assert word in str(error), f"{word!r} not in {str(error)!r}"
    if driver:
        assert isinstance(error.__cause__, DriverError), repr(error.__cause__)
        assert error.__cause__.__cause__ is None
        assert error.__context__ is error.__cause__ or error.__context__ is None


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener accepts connections and never says a word."""
    with SilentServer() as server:
        yield server.port


# -- cannot connect, connect timeout ---------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "redis", "redis+cluster"])
def test_closed_port_is_a_connection_error(scheme: str) -> None:
    """Nothing listening: StorageConnectionError naming host:port and what to check."""
    port = servers.free_port()
    database = "" if scheme == "redis+cluster" else "0"  # a cluster has database 0 only
    ledger = model_on(f"{scheme}://app:pw@127.0.0.1:{port}/{database}")
    error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(
        error, StorageConnectionError, "could not connect", f"127.0.0.1:{port}", "server runs"
    )


@pytest.mark.parametrize(
    ("scheme", "option"),
    [
        ("postgresql", "0?connect_timeout=0.5"),
        ("redis", "0?socket_connect_timeout=0.5"),
        ("redis+cluster", "?socket_connect_timeout=0.5"),  # took the 10 s socket timeout
    ],
)
def test_silent_server_is_a_connect_timeout(scheme: str, option: str, silent_port: int) -> None:
    """A socket that accepts and stays silent: StorageConnectTimeoutError within the timeout."""
    ledger = model_on(f"{scheme}://app@127.0.0.1:{silent_port}/{option}")
    started = time.monotonic()
    error = raised(lambda: ledger(text="x").model_dump())
    assert time.monotonic() - started < 5
    assert_mapped(error, StorageConnectTimeoutError, "timed out", "connect_timeout")


@pytest.fixture
def http_port() -> Iterator[int]:
    """A port whose listener answers any request as an HTTP server would, then hangs up."""
    with SilentServer(reply=b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n") as server:
        yield server.port


@pytest.mark.parametrize(("scheme", "kind"), [("postgresql", "PostgreSQL"), ("redis", "Redis")])
def test_another_service_on_the_port_says_to_check_host_and_port(
    scheme: str, kind: str, http_port: int
) -> None:
    """An HTTP server where the URL points: PostgreSQL said it "does not accept SSL connections
    but the URL requires SSL" (the URL required none), Redis raised StorageOperationError
    "refused the connect". Both are a connection error naming host:port."""
    ledger = model_on(f"{scheme}://app@127.0.0.1:{http_port}/0")
    error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(
        error,
        StorageConnectionError,
        f"{kind} at 127.0.0.1:{http_port} did not answer as a {kind} server",
        "check the host and port",
    )


@pytest.mark.postgresql
def test_postgres_without_ssl_when_the_url_requires_it(postgres_database_url: str) -> None:
    """sslmode=require on a server without SSL names SSL and the fix (the session's servers
    have no SSL)."""
    ledger = model_on(f"{postgres_database_url}?sslmode=require")
    error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(error, StorageConnectionError, "does not accept SSL", "sslmode=prefer")


# -- authentication --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[servers.TempPostgres]:
    """A throwaway PostgreSQL cluster with password authentication, migrated."""
    with servers.temp_postgres() as temp:
        assert toast_cli(["migrate", temp.url()]) == 0
        yield temp


@pytest.mark.postgresql
def test_postgres_wrong_password(cluster: servers.TempPostgres) -> None:
    """A wrong PostgreSQL password: StorageAuthenticationError naming the user and the fix."""
    ledger = model_on(cluster.url(password="Wr0ng-Pass"))
    error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(
        error, StorageAuthenticationError, "rejected the credentials", "'postgres'", "password"
    )
    assert "Wr0ng-Pass" not in str(error)


@pytest.mark.postgresql
def test_a_frozen_postgres_server_is_bounded_by_command_timeout(
    cluster: servers.TempPostgres,
) -> None:
    """A server whose processes are stopped (SIGSTOP) while the kernel still answers TCP: a
    load on a pooled connection fails after about command_timeout (and the read's one retry
    after connect_timeout), it does not wait forever."""
    ledger = model_on(cluster.url() + "?command_timeout=1&connect_timeout=2")
    pids: list[int] = []

    async def frozen_load() -> tuple[BaseException | None, float]:
        reference = await pydantic_toast.adump(ledger(text="x"))  # a pooled connection exists
        pids.extend(cluster.server_pids())  # its server process included
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            await asyncio.wait_for(ledger.aload(reference), 20)  # type: ignore[attr-defined]
        except BaseException as exc:  # examined below
            return exc, time.monotonic() - started
        return None, time.monotonic() - started

    results: list[tuple[BaseException | None, float]] = []
    caller = threading.Thread(target=lambda: results.append(asyncio.run(frozen_load())))
    caller.start()
    try:
        caller.join(timeout=30)  # a hang would outlive wait_for: its cancellation waits too
        assert not caller.is_alive(), "still waiting on the frozen server after 30 s"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        caller.join()
    ((error, seconds),) = results
    assert isinstance(error, (StorageTimeoutError, StorageConnectTimeoutError)), repr(error)
    assert "timed out" in str(error)
    assert seconds < 10


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[servers.TempRedis]:
    """A throwaway redis-server with requirepass and an ACL user ``app``."""
    try:
        server = servers.TempRedis("--requirepass", "s3cret-pass")
    except FileNotFoundError:
        if servers.IN_CI:
            pytest.fail("no redis-server binary")
        pytest.skip("no redis-server binary")
    admin = redis.Redis(port=server.port, password="s3cret-pass")
    admin.execute_command("ACL", "SETUSER", "app", "on", ">app-pass", "~*", "+@all")
    admin.close()
    try:
        yield server
    finally:
        pydantic_toast.close_storage()
        server.stop()


@pytest.mark.redis
@pytest.mark.parametrize(
    ("credentials", "words"),
    [
        (":Wr0ng-Pass@", ("rejected the password", "check the credentials")),
        ("app:Wr0ng-Pass@", ("rejected user 'app'", "check the credentials")),
        ("nobody:Wr0ng-Pass@", ("rejected user 'nobody'", "check the credentials")),
        ("", ("needs a password and the storage URL gives none", "redis://:password@")),
    ],
    ids=["wrong-password", "acl-user-wrong-password", "unknown-acl-user", "noauth"],
)
def test_redis_authentication(
    locked_redis: servers.TempRedis, credentials: str, words: tuple[str, ...]
) -> None:
    """Wrong password, wrong ACL user, and no password at all are told apart."""
    ledger = model_on(f"redis://{credentials}127.0.0.1:{locked_redis.port}/0")
    error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(error, StorageAuthenticationError, *words)
    assert "Wr0ng-Pass" not in str(error)


# -- statement / lock timeout ------------------------------------------------------------------


def _pids(admin_url: str, application_name: str) -> set[int]:
    import asyncpg

    async def run() -> set[int]:
        connection = await asyncpg.connect(admin_url)
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name
            )
        finally:
            await connection.close()
        return {row["pid"] for row in rows}

    return asyncio.run(run())


@pytest.mark.postgresql
def test_row_lock_past_command_timeout_is_a_statement_timeout_and_keeps_the_pool(
    postgres_database_url: str, postgres_admin_url: str
) -> None:
    """A row lock held past command_timeout: StorageTimeoutError; the other connections stay."""
    import asyncpg

    tag = f"lock{uuid4().hex[:10]}"
    url = f"{postgres_database_url}?application_name={tag}&command_timeout=0.5"
    ledger = model_on(url)
    names = ledger.__toast_settings__.external_name  # type: ignore[attr-defined]

    async def scenario() -> tuple[ExternalStorageError, set[int], set[int]]:
        # Four pooled connections of our own, all idle afterwards.
        instances = [ledger(text=str(n)) for n in range(4)]
        await asyncio.gather(*(pydantic_toast.adump(item) for item in instances))
        before = await asyncio.to_thread(_pids, postgres_admin_url, tag)
        holder = await asyncpg.connect(postgres_database_url)
        try:
            async with holder.transaction():
                await holder.execute(
                    "SELECT 1 FROM external_records WHERE class_name = $1 FOR UPDATE", names
                )
                with pytest.raises(ExternalStorageError) as info:
                    await pydantic_toast.adump(instances[0], force=True)
        finally:
            await holder.close()
        after = await asyncio.to_thread(_pids, postgres_admin_url, tag)
        await pydantic_toast.adump(instances[0], force=True)  # works again once the lock is gone
        return info.value, before, after

    error, before, after = asyncio.run(scenario())
    assert_mapped(error, StorageTimeoutError, "timed out", "lock is held", "command_timeout")
    assert "could not connect" not in str(error)
    assert len(before) >= 2
    assert len(before - after) <= 1, "only the timed-out connection may be dropped"


# -- pool exhausted ------------------------------------------------------------------------------


@pytest.mark.postgresql
def test_postgres_pool_exhausted(postgres_database_url: str) -> None:
    """pool_size=1, max_overflow=0, the one connection held: StoragePoolTimeoutError."""
    import asyncpg

    url = (
        f"{postgres_database_url}?pool_size=1&max_overflow=0&connect_timeout=0.5&command_timeout=5"
    )
    ledger = model_on(url)
    name = ledger.__toast_settings__.external_name  # type: ignore[attr-defined]

    async def scenario() -> BaseException:
        first = ledger(text="held")
        await pydantic_toast.adump(first)
        holder = await asyncpg.connect(postgres_database_url)
        try:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute(
                "SELECT 1 FROM external_records WHERE class_name = $1 FOR UPDATE", name
            )
            blocked = asyncio.ensure_future(
                pydantic_toast.adump(first, force=True)
            )  # holds the connection
            await asyncio.sleep(0.2)
            with pytest.raises(ExternalStorageError) as info:
                await pydantic_toast.adump(ledger(text="waits"))
            await transaction.rollback()
            await blocked
        finally:
            await holder.close()
        return info.value

    error = asyncio.run(scenario())
    assert_mapped(error, StoragePoolTimeoutError, "no pooled connection", "pool_size")


@pytest.mark.redis
def test_redis_pool_exhausted() -> None:
    """max_connections=1, the one connection busy: StoragePoolTimeoutError after pool_timeout."""
    server = servers.TempRedis()
    try:
        ledger = model_on(f"redis://127.0.0.1:{server.port}/0?max_connections=1&pool_timeout=0.3")

        async def scenario() -> BaseException:
            first = ledger(text="held")
            await pydantic_toast.adump(first)
            admin = redis.Redis(port=server.port)
            admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # our one connection waits
            try:
                blocked = asyncio.ensure_future(pydantic_toast.adump(first, force=True))
                await asyncio.sleep(0.1)
                with pytest.raises(ExternalStorageError) as info:
                    await pydantic_toast.adump(ledger(text="waits"))
                await blocked
            finally:
                admin.close()
            await pydantic_toast.aclose_storage()
            return info.value

        error = asyncio.run(scenario())
    finally:
        pydantic_toast.close_storage()
        server.stop()
    assert_mapped(error, StoragePoolTimeoutError, "no pooled connection", "max_connections")


# -- server busy / loading ---------------------------------------------------------------------


@pytest.mark.redis
def test_redis_loading_its_data_file_is_busy(tmp_path: Path) -> None:
    """Redis still loading its RDB answers LOADING: StorageBusyError, "retry", not "unreachable".

    The data file is real (20,000 keys saved by a first server); the second server loads it
    with ``key-load-delay`` (a Redis setting that slows loading per key) so the window is wide.
    """
    seed = servers.TempRedis("--dir", str(tmp_path), "--dbfilename", "big.rdb")
    client = redis.Redis(port=seed.port)
    pipe = client.pipeline(transaction=False)
    for n in range(20_000):
        pipe.set(f"k{n}", "v" * 20)
    pipe.execute()
    client.save()
    client.close()
    seed.stop()
    loading = servers.TempRedis(
        "--dir",
        str(tmp_path),
        "--dbfilename",
        "big.rdb",
        "--key-load-delay",
        "500",
        "--loading-process-events-interval-bytes",
        "1024",
    )
    try:
        ledger = model_on(f"redis://127.0.0.1:{loading.port}/0")
        error = raised(lambda: ledger(text="x").model_dump())
    finally:
        pydantic_toast.close_storage()
        loading.stop()
    assert_mapped(error, StorageBusyError, "busy", "BusyLoadingError", "retry")


@pytest.mark.postgresql
def test_postgres_out_of_connections_is_busy(postgres_admin_url: str) -> None:
    """A database that takes no more connections (SQLSTATE 53300): StorageBusyError."""
    database = f"toast_full_{uuid4().hex[:10]}"
    _admin(postgres_admin_url, f'CREATE DATABASE "{database}" CONNECTION LIMIT 0')
    try:
        # The admin user is a superuser, which ignores the limit: connect as a plain role.
        role = f"toast_full_{uuid4().hex[:8]}"
        _admin(postgres_admin_url, f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{ROLE_PASSWORD}'")
        try:
            plain = _as_role(_with_database(postgres_admin_url, database), role)
            ledger = model_on(plain)
            error = raised(lambda: ledger(text="x").model_dump())
        finally:
            pydantic_toast.close_storage()
            _admin(postgres_admin_url, f'DROP ROLE IF EXISTS "{role}"')
    finally:
        _admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert_mapped(error, StorageBusyError, "cannot take the connection now", "53300", "retry")


@pytest.mark.slow
@pytest.mark.postgresql
def test_postgres_not_accepting_connections_is_busy_then_recovers() -> None:
    """A server answering 57P03 (a standby with hot_standby off, as during startup):
    StorageBusyError naming the cause; once it accepts connections, the next save works."""
    with servers.temp_postgres(start=False) as standby:
        # No primary to follow and no WAL to replay: it stays in standby mode, refusing
        # every connection with SQLSTATE 57P03 until promoted.
        standby.configure("hot_standby = off", standby_signal=True)
        standby.start()
        ledger = model_on(standby.url())
        for _ in range(2):  # a refused connect is not cached: each call asks again
            error = raised(lambda: ledger(text="x").model_dump())
            assert_mapped(error, StorageBusyError, "not accepting connections", "57P03", "retry")
            assert standby.PASSWORD not in str(error)
        standby.promote()
        assert toast_cli(["migrate", standby.url()]) == 0
        reference = ledger(text="after").model_dump()
        assert ledger.model_validate(reference).text == "after"  # type: ignore[attr-defined]


# -- not migrated, bad database number, refused by the store ------------------------------------


@pytest.mark.postgresql
def test_postgres_not_migrated(postgres_admin_url: str) -> None:
    """A database without external_records (42P01): StorageSchemaError naming the command."""
    with throwaway_database(postgres_admin_url, "toast_bare_") as url:
        ledger = model_on(url)
        error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(error, StorageSchemaError, "does not exist", "not migrated", "migrate")


@pytest.mark.postgresql
@pytest.mark.parametrize(
    ("revision", "missing"),
    [("0003_record_revisions", "table external_record_counts"), ("0004_record_counts", "column")],
)
def test_postgres_migrated_by_an_older_version_names_what_is_missing(
    postgres_admin_url: str, revision: str, missing: str
) -> None:
    """A database migrated to an older revision said "the table external_records does not
    exist" (it does: another table or a column is missing); the message names what is."""
    with throwaway_database(postgres_admin_url, "toast_old_") as url:
        assert toast_cli(["migrate", "--revision", revision, url]) == 0
        ledger = model_on(url)
        error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(error, StorageSchemaError, f"the {missing} ", "older pydantic-toast", "migrate")
    assert "external_records does not" not in str(error)


@pytest.mark.sqlite
def test_sqlite_not_migrated(tmp_path: Path) -> None:
    """An SQLite file without the table: StorageSchemaError naming the command."""
    import sqlite3

    path = tmp_path / "bare.db"
    sqlite3.connect(path).close()
    ledger = model_on(f"sqlite:///{path}")
    try:
        error = raised(lambda: ledger(text="x").model_dump())
    finally:
        pydantic_toast.close_storage()
    assert_mapped(error, StorageSchemaError, "external_records is missing", "migrate")


@pytest.mark.redis
def test_redis_database_out_of_range(redis_base_url: str) -> None:
    """redis://.../99 on a 16-database server: StorageConfigurationError naming the database."""
    base = redis_base_url.rsplit("/", 1)[0]
    ledger = model_on(f"{base}/99")
    error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(error, StorageConfigurationError, "no database 99", "`databases` setting")


@pytest.mark.redis
def test_redis_cluster_url_on_a_single_server(redis_base_url: str) -> None:
    """redis+cluster:// naming a server without cluster mode: StorageConfigurationError."""
    base = redis_base_url.rsplit("/", 1)[0].replace("redis://", "redis+cluster://", 1)
    ledger = model_on(f"{base}/")
    error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(error, StorageConfigurationError, "not a cluster node", "redis:// URL")


@pytest.mark.postgresql
def test_postgres_permission_denied_names_the_grant(postgres_database_url: str) -> None:
    """A role without grants on the table: StorageOperationError naming the grant to give."""
    role = f"toast_nogrant_{uuid4().hex[:8]}"
    _admin(postgres_database_url, f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{ROLE_PASSWORD}'")
    try:
        ledger = model_on(_as_role(postgres_database_url, role))
        error = raised(lambda: ledger(text="x").model_dump())
    finally:
        pydantic_toast.close_storage()
        _admin(postgres_database_url, f'DROP ROLE IF EXISTS "{role}"')
    assert_mapped(error, StorageOperationError, "insufficient privilege", "grant", "SELECT, INSERT")


@pytest.mark.postgresql
def test_postgres_without_temporary_privilege_names_it_for_large_saves(
    postgres_admin_url: str,
) -> None:
    """A role that may not create temporary tables: small records save; a record over 1 MiB
    (staged in a temporary table) is refused naming the TEMPORARY grant, nothing written."""
    database = f"toast_notemp_{uuid4().hex[:10]}"
    role = f"toast_notemp_{uuid4().hex[:8]}"
    _admin(postgres_admin_url, f'CREATE DATABASE "{database}"')
    url = _with_database(postgres_admin_url, database)
    try:
        assert toast_cli(["migrate", url]) == 0
        _admin(
            url,
            f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{ROLE_PASSWORD}'",
            f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC',
            "GRANT SELECT, INSERT, UPDATE, DELETE ON external_records, external_record_counts "
            f'TO "{role}"',
        )
        ledger = model_on(_as_role(url, role))
        small = ledger(text="x").model_dump()
        assert ledger.model_validate(small).text == "x"  # type: ignore[attr-defined]
        large = ledger(text="y" * (1 << 20))
        error = raised(lambda: large.model_dump())
        assert pydantic_toast.count(ledger) == 1
    finally:
        pydantic_toast.close_storage()
        _admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        _admin(postgres_admin_url, f'DROP ROLE IF EXISTS "{role}"')
    assert_mapped(error, StorageOperationError, "insufficient privilege", "TEMPORARY")


# -- custom backends, references, stored data ------------------------------------------------


class CorruptFileBackend(MemoryBackend):
    """A user's backend whose data file is damaged: load raises JSONDecodeError."""

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        json.loads('{"text": "S3ntinel')  # raises JSONDecodeError, as a corrupt file would
        raise AssertionError("unreachable")


class ForgetfulBackend(MemoryBackend):
    """A user's backend with a bug: save raises KeyError."""

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        raise KeyError("bucket")


pydantic_toast.register_backend("corruptfile", CorruptFileBackend)
pydantic_toast.register_backend("forgetful", ForgetfulBackend)


def test_custom_backend_json_decode_error_is_stored_data_error_not_validation_error() -> None:
    """JSONDecodeError in a custom load: StoredDataError (a 500), never Pydantic's 422 error."""
    import pydantic

    ledger = model_on(f"corruptfile://{uuid4().hex}")
    reference = ledger(text="x").model_dump()
    try:
        ledger.model_validate(reference)
    except (pydantic.ValidationError, ExternalStorageError) as exc:
        error: BaseException = exc
    else:
        pytest.fail("a corrupt record loaded")
    assert not isinstance(error, pydantic.ValidationError)
    assert_mapped(error, StoredDataError, "cannot be read", "JSONDecodeError", "damaged")
    # A URL without a host (a folder) is named by its path, not as "CorruptFile at localhost".
    on_a_path = model_on(f"corruptfile:///var/data/{uuid4().hex}")
    with pytest.raises(StoredDataError) as info:
        on_a_path.model_validate(on_a_path(text="x").model_dump())
    assert "CorruptFile (corruptfile:///var/data/" in str(info.value)
    assert "localhost" not in str(info.value)


def test_custom_backend_json_decode_error_answers_500_in_fastapi() -> None:
    """Through FastAPI with the library's handlers, unreadable stored data answers 500."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pydantic_toast.fastapi import install_error_handlers

    ledger = model_on(f"corruptfile://{uuid4().hex}", name="Corrupt")
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/load")
    def load(body: dict[str, str]) -> dict[str, str]:
        return {"text": ledger.model_validate(body).text}  # type: ignore[attr-defined]

    reference = ledger(text="x").model_dump()
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/load", json=reference)
    assert answer.status_code == 500
    assert "S3ntinel" not in answer.text


class StuckLoadBackend(MemoryBackend):
    """A user's backend whose read times out (its own client's TimeoutError)."""

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        raise TimeoutError("read timed out")


pydantic_toast.register_backend("stuckload", StuckLoadBackend)


def test_statement_timeout_answers_503_and_unreadable_data_500_in_fastapi() -> None:
    """With the library's handlers: a timed-out load is 503 (retry), stored damage 500."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pydantic_toast.fastapi import install_error_handlers

    stuck = model_on(f"stuckload://{uuid4().hex}", name="Stuck")
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/stuck")
    def load(body: dict[str, str]) -> dict[str, str]:
        return {"text": stuck.model_validate(body).text}  # type: ignore[attr-defined]

    reference = stuck(text="x").model_dump()
    error = raised(lambda: stuck.model_validate(reference))
    assert_mapped(error, StorageTimeoutError, "timed out", "retry")
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/stuck", json=reference)
    assert answer.status_code == 503
    assert answer.json() == {"detail": "storage is unavailable"}


def test_custom_backend_key_error_is_operation_error() -> None:
    """KeyError in a custom save: StorageOperationError naming the backend and the type."""
    ledger = model_on(f"forgetful://{uuid4().hex}")
    error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(error, StorageOperationError, "Forgetful backend failed during save", "KeyError")


class DiskFullBackend(MemoryBackend):
    """A user's file-per-record backend on a full disk: saves raise ENOSPC, loads work."""

    saves = 0

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        type(self).saves += 1
        raise OSError(errno.ENOSPC, "No space left on device")


class MisplacedFileBackend(MemoryBackend):
    """A user's file-per-record backend whose record path is a directory."""

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        raise IsADirectoryError(errno.EISDIR, "Is a directory")


class ForbiddenFileBackend(MemoryBackend):
    """A user's file-per-record backend whose record file it may not read."""

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        raise PermissionError(errno.EACCES, "Permission denied", "/data/records/x.json")


class FirewalledBackend(MemoryBackend):
    """A network backend whose sends a firewall refuses: EPERM from the socket, no file."""

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        raise PermissionError(errno.EPERM, "Operation not permitted")


pydantic_toast.register_backend("diskfull", DiskFullBackend)
pydantic_toast.register_backend("misplacedfile", MisplacedFileBackend)
pydantic_toast.register_backend("forbiddenfile", ForbiddenFileBackend)
pydantic_toast.register_backend("firewalled", FirewalledBackend)


def test_custom_backend_file_errors_are_not_lost_connections() -> None:
    """A file system error in a custom backend's save or load is a StorageOperationError
    naming it, sent once: it was a lost connection ("check that the server runs"), and a
    save on a full disk was sent twice and then reported as an unknown outcome."""
    ledger = model_on(f"diskfull://{uuid4().hex}")
    DiskFullBackend.saves = 0
    error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(error, StorageOperationError, "DiskFull backend failed during save", "ENOSPC")
    assert DiskFullBackend.saves == 1
    misplaced = model_on(f"misplacedfile://{uuid4().hex}")
    error = raised(lambda: misplaced.model_validate(misplaced(text="x").model_dump()))
    assert_mapped(error, StorageOperationError, "IsADirectoryError (EISDIR)", "files or disk")
    forbidden = model_on(f"forbiddenfile://{uuid4().hex}")
    error = raised(lambda: forbidden.model_validate(forbidden(text="x").model_dump()))
    assert_mapped(error, StorageOperationError, "PermissionError (EACCES)", "files or disk")


def test_a_socket_permission_error_is_not_a_file_problem() -> None:
    """A PermissionError naming no file (EPERM from a socket a firewall refuses) is not
    reported as a problem with the store's files or disk."""
    firewalled = model_on(f"firewalled://{uuid4().hex}")
    error = raised(lambda: firewalled.model_validate(firewalled(text="x").model_dump()))
    assert "files or disk" not in str(error)


class OwnTablesBackend(StorageBackend):
    """A user's backend on a database driver, keeping records in a table of its own
    (``toast_kv``), which it expects its own setup to have made: ``sqlite3`` for
    ``ownsqlite://<file>``, asyncpg for ``ownpg://`` (the rest of a PostgreSQL URL)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.target = url.split("://", 1)[1]
        self.connection: Any = None

    async def connect(self) -> None:
        if self.url.startswith("ownpg://"):
            import asyncpg

            self.connection = await asyncpg.connect(f"postgresql://{self.target}")
        else:
            self.connection = sqlite3.connect(self.target)

    async def disconnect(self) -> None:
        if self.url.startswith("ownpg://"):
            await self.connection.close()
        else:
            self.connection.close()

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        if self.url.startswith("ownpg://"):
            await self.connection.execute("INSERT INTO toast_kv VALUES ($1, $2)", str(id), "{}")
        else:
            self.connection.execute("INSERT INTO toast_kv VALUES (?, ?)", (str(id), "{}"))

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        return None


pydantic_toast.register_backend("ownsqlite", OwnTablesBackend)
pydantic_toast.register_backend("ownpg", OwnTablesBackend)


def test_own_sqlite3_tables_missing_do_not_point_at_the_librarys_migrations(
    tmp_path: Path,
) -> None:
    """A user's backend on the sqlite3 module whose table is missing is told to create it,
    not to run pydantic-toast migrate on its URL (which makes external_records and cannot
    serve its scheme), nor told of an external_records table it never uses."""
    ledger = model_on(f"ownsqlite://{tmp_path / 'own.db'}", concurrency="last-write-wins")
    try:
        error = raised(lambda: ledger(text="x").model_dump())
    finally:
        pydantic_toast.close_storage()
    assert_mapped(error, StorageSchemaError, "no such table: toast_kv", "OwnTables backend")
    assert "migrate <url>" not in str(error)
    assert "external_records" not in str(error)


def test_own_sqlite3_file_unusable_names_no_path_the_backend_did_not_open(
    tmp_path: Path,
) -> None:
    """sqlite3 unable to open a user's backend's file: the message did not name the file it
    tried but the URL's path read as sqlite:// reads it (its leading slash cut off)."""
    ledger = model_on(f"ownsqlite://{tmp_path}/missing/own.db", concurrency="last-write-wins")
    try:
        error = raised(lambda: ledger(text="x").model_dump())
    finally:
        pydantic_toast.close_storage()
    assert_mapped(
        error, StorageConnectionError, "OwnTables (ownsqlite://", "could not use its SQLite"
    )


@pytest.mark.postgresql
def test_own_postgres_tables_missing_do_not_point_at_the_librarys_migrations(
    empty_database: str,
) -> None:
    """A user's backend on asyncpg whose table is missing (42P01) is told which table is
    missing and to create it, not to run pydantic-toast migrate."""
    url = empty_database.replace("postgresql://", "ownpg://", 1)
    ledger = model_on(url, concurrency="last-write-wins")
    error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(error, StorageSchemaError, "the table toast_kv does not exist", "OwnTables")
    assert "migrate <url>" not in str(error)
    assert "external_records" not in str(error)


class SlowBackend(StorageBackend):
    """A user's backend bounding its waits with asyncio.timeout, as custom.md asks: its
    connect times out on ``slow://connect``, its loads always."""

    async def connect(self) -> None:
        if self.url.startswith("slow://connect"):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(1)

    async def disconnect(self) -> None:
        return

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        return

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)
        return None


pydantic_toast.register_backend("slow", SlowBackend)


def test_a_custom_backends_timeouts_name_no_url_option_it_may_not_read() -> None:
    """A TimeoutError from a user's backend is a timeout error telling to raise that
    backend's timeout: it said "raise connect_timeout in the URL" and "the URL's command or
    socket timeout", options only the built-in backends read."""
    for url, kind, fix in [
        (f"slow://connect/{uuid4().hex}", StorageConnectTimeoutError, "connect timeout"),
        (f"slow://load/{uuid4().hex}", StorageTimeoutError, "timeout"),
    ]:
        slow = model_on(url, "Slow", concurrency="last-write-wins")
        reference = {"class_name": slow.model_config["external_name"], "id": str(uuid4())}
        error = raised(lambda slow=slow, reference=reference: slow.model_validate(reference))
        assert_mapped(error, kind, f"raise the Slow backend's {fix}")
        assert "URL" not in str(error)


class MistypedBackend(MemoryBackend):
    """A user's backend whose loads and pages hand back records built with one field of the
    wrong type, as read from a text column: ``mistyped://<field>/...``."""

    def mistyped(self, record: StoredRecord) -> Any:
        field = self.url.split("://", 1)[1].split("/", 1)[0]
        if field == "document":
            return record.to_document()
        wrong = {
            "data": record.data.decode(),
            "id": str(record.id),
            "created_at": record.created_at.replace(tzinfo=None),
        }[field]
        return dataclasses.replace(record, **{field: wrong})

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        return [r and self.mistyped(r) for r in await super().load_records(keys)]

    async def list_records(
        self, class_name: str, *, limit: int, after: pydantic_toast.PageCursor | None = None
    ) -> list[StoredRecord]:
        listed = await super().list_records(class_name, limit=limit, after=after)
        return [self.mistyped(record) for record in listed]


pydantic_toast.register_backend("mistyped", MistypedBackend)


@pytest.mark.parametrize(
    ("field", "fix"),
    [
        ("data", "whose data is a str: StoredRecord.data is the JSON object"),
        ("id", "whose id is a str: give a UUID"),
        ("created_at", "whose created_at is not a timezone-aware datetime"),
        ("document", "as a dict: give a StoredRecord (StoredRecord.from_document("),
    ],
)
def test_a_custom_backends_mistyped_records_are_refused_naming_the_field(
    field: str, fix: str
) -> None:
    """A record with text data surfaced as a bare TypeError from deep inside the library, an
    id as text as "answered the record X where X was asked", a naive created_at not at all
    (a lost reply's read back then never matches): each is refused, on load and on a page,
    naming the field and the fix."""
    ledger = model_on(f"mistyped://{field}/{uuid4().hex}", concurrency="last-write-wins")
    reference = ledger(text="x").model_dump()
    for call in (lambda: ledger.model_validate(reference), lambda: pydantic_toast.page(ledger)):
        error = raised(call)
        assert_mapped(error, StorageOperationError, "Mistyped", fix, driver=False)


class PrefixedRedisBackend(StorageBackend):
    """A user's backend on plain Redis GET/SET: ``kvredis://host:port/<key prefix>?db=N``."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.parsed = StorageURL.parse(url)
        self.client: Any = None

    async def connect(self) -> None:
        import redis.asyncio

        self.client = redis.asyncio.Redis(
            host=self.parsed.host or "localhost",
            port=self.parsed.port or 6379,
            db=int(self.parsed.query.get("db", "0")),
        )

    async def disconnect(self) -> None:
        await self.client.aclose()

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        await self.client.set(f"{self.parsed.path}:{class_name}:{id}", json.dumps(data))

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        found = await self.client.get(f"{self.parsed.path}:{class_name}:{id}")
        return None if found is None else json.loads(found)  # type: ignore[no-any-return]


pydantic_toast.register_backend("kvredis", PrefixedRedisBackend)


@pytest.mark.redis
def test_a_custom_redis_backends_database_out_of_range_names_no_path(redis_base_url: str) -> None:
    """A user's Redis backend selecting database 99 was told the server 'has no database
    toast-prefix' (the URL's path, a key prefix to that backend, as the built-in backend
    would read it)."""
    address = redis_base_url.split("://", 1)[1].split("/", 1)[0]
    ledger = model_on(f"kvredis://{address}/toast-prefix?db=99", concurrency="last-write-wins")
    try:
        error = raised(lambda: ledger(text="x").model_dump())
    finally:
        pydantic_toast.close_storage()
    assert_mapped(error, StorageConfigurationError, "no database the PrefixedRedis backend")
    assert "has no database toast-prefix" not in str(error)


class FoundOnlyBackend(MemoryBackend):
    """A user's load_records written as a SQL ``WHERE id IN (...)``: the records found, in
    the database's order (here reversed), no None for a missing one."""

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        found = await super().load_records(keys)
        return [record for record in reversed(found) if record is not None]


pydantic_toast.register_backend("foundonly", FoundOnlyBackend)


def test_custom_load_records_answering_other_keys_is_refused() -> None:
    """A custom load_records answering fewer records, or in another order, than the keys is a
    StorageOperationError saying what it must return: records were handed to the wrong
    references (a tree's list came back shuffled), and a missing record was Pydantic's
    ValidationError 'not enough values to unpack'."""
    ledger = model_on(f"foundonly://{uuid4().hex}")
    name = ledger.__toast_settings__.external_name  # type: ignore[attr-defined]
    error = raised(lambda: ledger.model_validate({"class_name": name, "id": str(uuid4())}))
    assert_mapped(error, StorageOperationError, "answered 0 records for 1 keys", driver=False)
    references = [ledger(text=str(n)).model_dump() for n in range(3)]
    error = raised(lambda: pydantic_toast.validate(list[ledger], references))  # type: ignore[valid-type]
    assert_mapped(
        error, StorageOperationError, "where", "was asked", "None for a key", driver=False
    )


class PickyURLBackend(MemoryBackend):
    """A user's backend whose constructor refuses its URL with a ValueError quoting it."""

    def __init__(self, url: str, **options: Any) -> None:
        raise ValueError(f"cannot use {url}")


pydantic_toast.register_backend("pickyurl", PickyURLBackend)


def test_custom_backend_constructor_error_is_a_configuration_error() -> None:
    """A custom backend's constructor failing is a StorageConfigurationError with the URL
    masked: it left model_validate as Pydantic's ValidationError (a 422) quoting the
    password, and model_dump as the bare ValueError."""
    ledger = model_on(f"pickyurl://user:{ROLE_PASSWORD}@host/{uuid4().hex}")
    name = ledger.__toast_settings__.external_name  # type: ignore[attr-defined]
    loading = raised(lambda: ledger.model_validate({"class_name": name, "id": str(uuid4())}))
    saving = raised(lambda: ledger(text="x").model_dump())
    for error in (loading, saving):
        assert_mapped(error, StorageConfigurationError, "PickyURLBackend(pickyurl://user:***@host/")
        assert "ValueError" in str(error)
        assert ROLE_PASSWORD not in str(error)


class OptionCheckingBackend(MemoryBackend):
    """A user's backend whose URL hooks fail on their own: check_url converting an option
    (a ValueError quoting the URL), store_identity on a URL without a host."""

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        if "timeout" in url.query and not url.query["timeout"].isdigit():
            raise ValueError(f"bad timeout in {url.raw}")

    @classmethod
    def store_identity(cls, url: StorageURL) -> Hashable:
        return url.host.lower()  # type: ignore[union-attr]  # AttributeError without a host


pydantic_toast.register_backend("optionchecking", OptionCheckingBackend)


@pytest.mark.parametrize(
    ("url", "hook", "kind"),
    [
        (f"optionchecking://user:{ROLE_PASSWORD}@host/?timeout=soon", "check_url", "ValueError"),
        (f"optionchecking://user:{ROLE_PASSWORD}@/", "store_identity", "AttributeError"),
    ],
)
def test_a_custom_url_hook_failing_is_a_configuration_error(url: str, hook: str, kind: str) -> None:
    """A custom check_url or store_identity raising an exception of its own at the class
    statement is a StorageConfigurationError naming the hook, the masked URL and the
    exception's type: it escaped as itself, its message quoting the password."""
    with pytest.raises(StorageConfigurationError) as info:
        model_on(url)
    error = info.value
    assert_mapped(error, StorageConfigurationError, f"OptionCheckingBackend.{hook}(", kind)
    assert "user:***@" in str(error)
    assert ROLE_PASSWORD not in str(error)


class SilentRevisionsBackend(MemoryBackend):
    """A user's backend with revisions whose save_records forgets to return them."""

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        await super().save_records(records)
        return None  # type: ignore[return-value]


pydantic_toast.register_backend("silentrevisions", SilentRevisionsBackend)


def test_custom_backend_with_revisions_must_return_them() -> None:
    """A backend declaring revisions whose save_records answers None is a
    StorageOperationError saying what to return: the model remembered no revision, and its
    next save wrote regardless over whatever another writer had saved meanwhile."""
    ledger = model_on(f"silentrevisions://{uuid4().hex}")
    error = raised(lambda: ledger(text="x").model_dump())
    assert_mapped(
        error,
        StorageOperationError,
        "save_records wrote the records but answered None",
        "new revision of each record",
        driver=False,
    )


def test_a_refused_revisions_answer_keeps_the_written_payloads() -> None:
    """The records were written before their revisions answer was refused: the payloads they
    were offloaded to stay (they were deleted as a failed write's, leaving the written
    records pointing at nothing)."""
    from pydantic_toast._offload import payload_class

    offload = f"memory://{uuid4().hex}"
    ledger = model_on(f"silentrevisions://{uuid4().hex}", offload=offload, offload_above=1)
    error = raised(lambda: ledger(text="x" * 1000).model_dump())
    assert isinstance(error, StorageOperationError)
    name = payload_class(ledger.__toast_settings__.external_name)  # type: ignore[attr-defined]
    store = pydantic_toast.current_storage().memory_store(offload.split("://", 1)[1])
    assert len(store.records(name)) == 1


class PickyBackend(MemoryBackend):
    """A user's backend whose check_records hook fails with its own exception."""

    def check_records(self, records: Sequence[StoredRecord]) -> None:
        raise ValueError("no")


pydantic_toast.register_backend("picky", PickyBackend)


def test_a_check_records_hook_error_is_mapped_and_nothing_is_written(memory_url: str) -> None:
    """A tree over two stores runs each store's check_records before writing any: a hook of
    the user's that raises its own exception is a StorageOperationError naming the backend
    (it escaped unmapped, a 500 in FastAPI), and the other store is left unwritten."""
    child = model_on(f"picky://{uuid4().hex}", name="Leaf")
    parent = type(
        "Tree",
        (ExternalBaseModel,),
        {
            "__annotations__": {"leaf": child},
            "model_config": ExternalConfigDict(
                storage=memory_url, external_name=f"Tree{uuid4().hex[:10]}"
            ),
        },
    )
    error = raised(lambda: parent(leaf=child(text="x")).model_dump())
    assert_mapped(error, StorageOperationError, "Picky backend failed during save", "ValueError")
    assert pydantic_toast.count(parent) == 0


def test_malformed_reference_is_the_clients_fault_stored_damage_is_not(memory_url: str) -> None:
    """A bad id from the client is a StorageValidationError; stored data that no longer
    validates is a StoredDataError: two classes, two HTTP statuses."""
    ledger = model_on(memory_url, name="Account")
    name = ledger.__toast_settings__.external_name  # type: ignore[attr-defined]
    client_error = raised(lambda: ledger.model_validate({"class_name": name, "id": "not-an-id"}))
    assert isinstance(client_error, StorageValidationError)
    assert not isinstance(client_error, StoredDataError)
    assert "not a UUID" in str(client_error)

    reference = ledger(text="fine").model_dump()
    store = pydantic_toast.current_storage().memory_store(memory_url.split("://", 1)[1])
    (record,) = store.records(name)
    with store.lock:  # damaged, as by another writer
        store.put(dataclasses.replace(record, data=b'{"text": 42}'), None)
    stored_error = raised(lambda: ledger.model_validate(reference))
    assert type(stored_error) is StoredDataError
    assert str(record.id) in str(stored_error)


# -- retries: a delete sent is never repeated ---------------------------------------------------


class ReplyLostBackend(MemoryBackend):
    """Deletes on the store, then loses the connection before the reply (as a dying socket)."""

    deletes = 0

    async def delete(self, id: UUID, class_name: str) -> bool:
        type(self).deletes += 1
        await super().delete(id, class_name)
        raise ConnectionResetError(104, "Connection reset by peer")


pydantic_toast.register_backend("replylost", ReplyLostBackend)


def test_delete_whose_reply_is_lost_is_not_retried_nor_reported_missing() -> None:
    """The delete committed, the reply was lost: OutcomeUnknownError, one attempt only."""
    ledger = model_on(f"replylost://{uuid4().hex}")
    reference = ledger(text="x").model_dump()
    ReplyLostBackend.deletes = 0
    error = raised(lambda: pydantic_toast.delete(ledger, reference))
    assert_mapped(error, OutcomeUnknownError, "lost after the delete was sent", "load the record")
    assert not isinstance(error, RecordNotFoundError)
    assert ReplyLostBackend.deletes == 1


class SaveReplyLostBackend(MemoryBackend):
    """Every save loses its reply before writing anything (a dying socket)."""

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int] | None:
        raise ConnectionResetError(104, "Connection reset by peer")


class QuotaBackend(MemoryBackend):
    """Refuses every save with one library error of its own, made once."""

    refusal = StorageOperationError("the store's quota is full: raise quota_mb")

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int] | None:
        raise self.refusal


pydantic_toast.register_backend("savereplylost", SaveReplyLostBackend)
pydantic_toast.register_backend("quota", QuotaBackend)


def test_an_unsettled_save_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A save whose reply is lost twice (read back and written again in between) logs its
    OutcomeUnknownError once, with the driver summary: the second crossing logged it and the
    outer one logged it again with '(None)'."""
    ledger = model_on(f"savereplylost://{uuid4().hex}", concurrency="last-write-wins")
    with caplog.at_level(logging.WARNING, logger="pydantic_toast"):
        error = raised(lambda: ledger(text="x").model_dump())
    assert type(error) is OutcomeUnknownError
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith("(builtins.ConnectionResetError (104))")
    caplog.clear()
    quota = model_on(f"quota://{uuid4().hex}", concurrency="last-write-wins")
    with caplog.at_level(logging.WARNING, logger="pydantic_toast"):
        for _ in range(2):  # one error instance raised twice is two failures, logged twice
            assert raised(lambda: quota(text="x").model_dump()) is QuotaBackend.refusal
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


@pytest.mark.postgresql
def test_postgres_connection_killed_mid_delete_is_a_connection_error(
    postgres_database_url: str,
) -> None:
    """Our connection terminated while its DELETE waits on a lock: OutcomeUnknownError (a
    StorageConnectionError), never RecordNotFoundError, and the delete is not repeated
    behind the caller's back."""
    import asyncpg

    tag = f"kill{uuid4().hex[:10]}"
    ledger = model_on(f"{postgres_database_url}?application_name={tag}")
    name = ledger.__toast_settings__.external_name  # type: ignore[attr-defined]

    async def scenario() -> tuple[BaseException, int]:
        reference = await pydantic_toast.adump(ledger(text="x"))
        holder = await asyncpg.connect(postgres_database_url)
        try:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute(
                "SELECT 1 FROM external_records WHERE class_name = $1 FOR UPDATE", name
            )
            deleting = asyncio.ensure_future(pydantic_toast.adelete(ledger, reference))
            for _ in range(100):
                killed = await holder.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    tag,
                )
                if killed:
                    break
                await asyncio.sleep(0.02)
            with pytest.raises(ExternalStorageError) as info:
                await deleting
            await transaction.rollback()
            left = await holder.fetchval(
                "SELECT count(*) FROM external_records WHERE class_name = $1", name
            )
        finally:
            await holder.close()
        return info.value, left

    error, left = asyncio.run(scenario())
    assert_mapped(error, OutcomeUnknownError, "lost after the delete was sent", "load the record")
    assert isinstance(error, StorageConnectionError)
    assert left == 1, "a retried delete would have removed the record"


@pytest.mark.postgresql
@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("statement_timeout", "the server's statement_timeout ended a statement"),
        ("lock_timeout", "the server's lock_timeout ended a lock wait"),
    ],
)
def test_servers_own_timeout_is_named_with_its_fix(
    postgres_admin_url: str, setting: str, named: str
) -> None:
    """A save past the statement_timeout or lock_timeout a DBA set on the database names that
    setting and ALTER ROLE; it used to say 'raise command_timeout in the URL', which cannot
    lift the server's limit."""
    import asyncpg

    with throwaway_database(postgres_admin_url, "toast_st_") as url:
        assert toast_cli(["migrate", url]) == 0
        database = url.rsplit("/", 1)[1]
        ledger = model_on(url)
        item = ledger(text="x")
        item.model_dump()
        pydantic_toast.close_storage()
        _admin(url, f"ALTER DATABASE \"{database}\" SET {setting} = '300ms'")

        async def save_while_locked() -> ExternalStorageError:
            holder = await asyncpg.connect(url, server_settings={setting: "0"})
            try:
                async with holder.transaction():
                    await holder.execute("SELECT 1 FROM external_records FOR UPDATE")
                    with pytest.raises(ExternalStorageError) as info:
                        await pydantic_toast.adump(item, force=True)
            finally:
                await holder.close()
                await pydantic_toast.aclose_storage()
            return info.value

        error = asyncio.run(save_while_locked())
    assert isinstance(error, StorageTimeoutError)
    assert named in str(error)
    assert f"ALTER ROLE ... SET {setting}" in str(error)
    assert "raise command_timeout in the URL" not in str(error)
