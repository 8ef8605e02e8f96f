"""PostgreSQL specifics: Alembic ownership of the table, URLs, SSL, failures and recovery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import alembic as alembic_package
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import pydantic_toast
from pydantic_toast import (
    ConcurrencyError,
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageConfigurationError,
    StorageConnectionError,
    StorageSchemaError,
    StorageTimeoutError,
    StorageUsageError,
    StoredDataError,
)
from pydantic_toast._records import ClassKeys, StoredRecord
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.postgresql import (
    _PREPARED,
    _SQL,
    _WRITE_MANY,
    _WRITE_ONE_KIND,
    _write_statement,
)
from pydantic_toast.integrations.cli import main as toast_cli
from tests import servers

pytestmark = pytest.mark.postgresql
ROOT = Path(__file__).resolve().parents[2]


def model_on(url: str, name: str = "Note") -> type[ExternalBaseModel]:
    return type(
        name,
        (ExternalBaseModel,),
        {
            "__annotations__": {"text": str},
            "model_config": ExternalConfigDict(storage=url, external_name=f"{name}{uuid4().hex}"),
        },
    )


def alembic(*args: str, url: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=cwd,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_unmigrated_database_says_which_command_to_run(empty_database: str) -> None:
    """Without the migration, the first operation fails naming the command; nothing is created."""
    note = model_on(empty_database)
    with pytest.raises(StorageSchemaError, match="pydantic-toast migrate <url>` with") as info:
        note(text="x").model_dump()
    assert "does not exist in database" in str(info.value)
    # `alembic upgrade head` runs a user's own migrations, not the library's: not a fix to offer.
    assert "does not apply them" in str(info.value)
    with pytest.raises(StorageSchemaError):
        note(text="x").model_dump()  # still not created behind the user's back


def test_alembic_upgrade_check_downgrade(empty_database: str) -> None:
    """The repository's alembic.ini upgrades, finds no drift, and downgrades to base."""
    for spelling in (
        empty_database,
        empty_database.replace("postgresql://", "postgresql+asyncpg://"),
    ):
        upgrade = alembic("upgrade", "head", url=spelling)
        assert upgrade.returncode == 0, upgrade.stderr
        check = alembic("check", url=spelling)
        assert check.returncode == 0, check.stderr
        assert "No new upgrade operations detected" in check.stdout + check.stderr
        note = model_on(spelling)
        assert note.model_validate(note(text="hi").model_dump()).text == "hi"  # type: ignore[attr-defined]
        pydantic_toast.close_storage()
        downgrade = alembic("downgrade", "base", url=spelling)
        assert downgrade.returncode == 0, downgrade.stderr


def test_table_is_readable_by_a_dba(postgres_database_url: str) -> None:
    """The row is plain SQL: class_name, uuid id, jsonb data with field keys, timestamps."""
    import asyncpg

    note = model_on(postgres_database_url)
    reference = note(text="readable").model_dump()

    async def query() -> object:
        connection = await asyncpg.connect(postgres_database_url)
        try:
            return await connection.fetchrow(
                "SELECT class_name, id::text, schema_version, data->>'text' AS text, "
                "created_at <= updated_at AS ordered, "
                "obj_description('external_records'::regclass) AS comment "
                "FROM external_records WHERE id = $1::uuid",
                reference["id"],
            )
        finally:
            await connection.close()

    row = asyncio.run(query())
    assert row is not None
    assert row["class_name"] == reference["class_name"]  # type: ignore[index]
    assert row["id"] == reference["id"]  # type: ignore[index]
    assert row["text"] == "readable"  # type: ignore[index]
    assert row["ordered"] is True  # type: ignore[index]
    assert "pydantic-toast" in row["comment"]  # type: ignore[index]


def test_url_spellings_share_the_table(postgres_database_url: str) -> None:
    """postgresql://, postgres:// and postgresql+asyncpg:// all reach the same rows."""
    writer = model_on(postgres_database_url, "Spelled")
    reference = writer(text="same").model_dump()
    name = reference["class_name"]
    for scheme in ("postgres://", "postgresql+asyncpg://"):
        url = postgres_database_url.replace("postgresql://", scheme)
        reader = type(  # the same class, as another release defines it
            "Spelled",
            (ExternalBaseModel,),
            {
                "__module__": writer.__module__,
                "__annotations__": {"text": str},
                "model_config": ExternalConfigDict(storage=url, external_name=name),
            },
        )
        assert reader.model_validate(reference).text == "same"  # type: ignore[attr-defined]


def test_one_name_on_one_database_is_refused_whatever_the_spelling(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two classes sharing a stored name on one database are refused, even spelled apart."""
    first = model_on(postgres_database_url, "Owner")
    name = first.__toast_settings__.external_name  # type: ignore[union-attr]
    spellings = [
        postgres_database_url.replace("postgresql://", "postgres://"),
        f"{postgres_database_url}?application_name=other",
    ]
    for url in spellings:
        with pytest.raises(StorageConfigurationError, match="already stored under that name"):
            type(
                "Intruder",
                (ExternalBaseModel,),
                {
                    "__annotations__": {"text": str},
                    "model_config": ExternalConfigDict(storage=url, external_name=name),
                },
            )
    monkeypatch.setenv("TOAST_SPELLED_URL", f"{postgres_database_url}?application_name=env")
    late = type(
        "LateIntruder",
        (ExternalBaseModel,),
        {
            "__annotations__": {"text": str},
            "model_config": ExternalConfigDict(storage="env:TOAST_SPELLED_URL", external_name=name),
        },
    )
    with pytest.raises(StorageConfigurationError, match="already stored under that name"):
        late(text="x").model_dump()
    assert first is not None  # the first owner stays alive through the test


def test_models_on_one_url_share_one_pool(postgres_database_url: str) -> None:
    """Several classes on the same URL use one backend instance per loop."""
    first, second = model_on(postgres_database_url, "A"), model_on(postgres_database_url, "B")

    async def backends() -> tuple[object, object]:
        await first(text="1").asave()
        await second(text="2").asave()
        return await pydantic_toast.current_storage().connected(
            StorageURL.parse(postgres_database_url)
        ), await pydantic_toast.current_storage().connected(StorageURL.parse(postgres_database_url))

    one, other = asyncio.run(backends())
    assert one is other


def test_unreachable_server_names_host_and_port_never_the_password() -> None:
    """A closed port raises StorageConnectionError with host:port and no password."""
    port = servers.free_port()
    note = model_on(f"postgresql://app:hunter2@127.0.0.1:{port}/shop")
    with pytest.raises(StorageConnectionError) as info:
        note(text="x").model_dump()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(info.value.url)


def test_silent_host_times_out_within_connect_timeout() -> None:
    """A server that accepts but never answers fails after connect_timeout, not 60 s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        note = model_on(f"postgresql://app@127.0.0.1:{port}/shop?connect_timeout=1")
        timer = threading.Timer(20, listener.close)
        timer.start()
        import time

        started = time.monotonic()
        with pytest.raises(StorageConnectionError):
            note(text="x").model_dump()
        assert time.monotonic() - started < 10
        timer.cancel()
    finally:
        listener.close()


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sqlalchemy_libpq_driver_urls_reach_the_table(
    postgres_database_url: str, driver: str
) -> None:
    """A URL copied from a SQLAlchemy psycopg configuration (libpq options) works as it is."""
    writer = model_on(postgres_database_url, "Copied")
    reference = writer(text="copied").model_dump()
    url = postgres_database_url.replace("postgresql://", f"postgresql+{driver}://")
    reader = type(
        "Copied",
        (ExternalBaseModel,),
        {
            "__module__": writer.__module__,
            "__annotations__": {"text": str},
            "model_config": ExternalConfigDict(
                storage=f"{url}?sslmode=disable&connect_timeout=5",
                external_name=reference["class_name"],
            ),
        },
    )
    assert reader.model_validate(reference).text == "copied"  # type: ignore[attr-defined]
    assert toast_cli(["check", url]) == 0


def test_other_sqlalchemy_drivers_are_refused_with_the_scheme_to_write() -> None:
    """postgresql+pg8000:// (options not libpq's) says to write postgresql://, password hidden."""
    with pytest.raises(pydantic_toast.StorageConfigurationError) as info:
        model_on("postgresql+pg8000://app:s3cret@db:5432/shop")
    message = str(info.value)
    assert "a SQLAlchemy driver this library does not use" in message
    assert "write the URL with postgresql:// instead of postgresql+pg8000://" in message
    assert "s3cret" not in message


def test_bad_options_fail_at_class_definition() -> None:
    """Unknown options and bad sslmodes are refused when the class is defined."""
    with pytest.raises(pydantic_toast.StorageConfigurationError, match="unknown option"):
        model_on("postgresql://u@h/db?sslmod=require")
    with pytest.raises(pydantic_toast.StorageConfigurationError, match="sslmode must be one of"):
        model_on("postgresql://u@h/db?sslmode=sometimes")


@pytest.fixture(scope="module")
def cluster() -> Iterator[servers.TempPostgres]:
    """A throwaway local cluster (password auth, SSL available) for tests that disturb it."""
    with servers.temp_postgres(start=False) as temp:
        temp.enable_ssl()
        temp.start()
        assert toast_cli(["migrate", temp.url()]) == 0
        yield temp


def test_wrong_password_is_a_clear_authentication_error(cluster: servers.TempPostgres) -> None:
    """A wrong password says the credentials were rejected, without printing them."""
    note = model_on(cluster.url(password="not-the-password"))
    with pytest.raises(StorageConnectionError, match="rejected the credentials") as info:
        note(text="x").model_dump()
    assert "not-the-password" not in str(info.value)


def test_sslmode_require_and_verify_full_against_an_ssl_server(
    cluster: servers.TempPostgres,
) -> None:
    """sslmode=require and verify-full (with sslrootcert) connect over SSL."""
    cert = cluster.data / "server.crt"
    for query in ("sslmode=require", f"sslmode=verify-full&sslrootcert={cert}"):
        url = f"{cluster.url()}?{query}"
        note = model_on(url)
        reference = note(text="secure").model_dump()
        assert note.model_validate(reference).text == "secure"  # type: ignore[attr-defined]
        assert _uses_ssl(url)


def test_sslmode_require_with_sslrootcert_checks_the_server_certificate(
    cluster: servers.TempPostgres, tmp_path: Path
) -> None:
    """As in libpq, require with sslrootcert verifies the server's certificate against it (as
    verify-ca): another CA's certificate is refused, the server's own accepted."""
    other_ca = servers.self_signed_certificate(tmp_path)
    refused = model_on(f"{cluster.url()}?sslmode=require&sslrootcert={other_ca}")
    with pytest.raises(StorageConnectionError, match="SSLCertVerificationError"):
        refused(text="x").model_dump()
    url = f"{cluster.url()}?sslmode=require&sslrootcert={cluster.data / 'server.crt'}"
    accepted = model_on(url)
    assert accepted.model_validate(accepted(text="y").model_dump()).text == "y"  # type: ignore[attr-defined]
    assert _uses_ssl(url)


def _uses_ssl(url: str) -> bool:
    return _ssl_state(url)[0]


def _ssl_state(url: str) -> tuple[bool, str | None]:
    """Whether the backend's connections use SSL, and the client certificate's DN they sent."""

    async def check() -> tuple[bool, str | None]:
        backend = await pydantic_toast.current_storage().connected(StorageURL.parse(url))
        async with backend.backend.engine.connect() as connection:  # type: ignore[attr-defined]
            from sqlalchemy import text

            result = await connection.execute(
                text("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            )
            used, client_dn = result.one()
        await pydantic_toast.aclose_storage()
        return bool(used), client_dn

    return asyncio.run(check())


def test_sslmode_prefer_and_allow_with_a_client_certificate_connect_without_ssl(
    postgres_database_url: str, tmp_path: Path
) -> None:
    """As in libpq, prefer and allow with sslcert/sslkey connect to a server without SSL."""
    cert = servers.self_signed_certificate(tmp_path)
    files = f"sslcert={cert}&sslkey={tmp_path / 'server.key'}"
    for mode in ("prefer", "allow"):
        note = model_on(f"{postgres_database_url}?sslmode={mode}&{files}")
        reference = note(text=mode).model_dump()
        assert note.model_validate(reference).text == mode  # type: ignore[attr-defined]


def test_sslmode_prefer_presents_the_client_certificate_to_an_ssl_server(tmp_path: Path) -> None:
    """prefer with sslcert/sslkey connects over SSL and sends the certificate (client_dn)."""
    with servers.temp_postgres(start=False) as temp:
        temp.enable_ssl()
        client_cert = servers.self_signed_certificate(tmp_path)  # its own CA
        trusted = temp.data / "client_ca.crt"
        trusted.write_bytes(client_cert.read_bytes())
        temp.give(trusted)
        temp.configure("ssl_ca_file = 'client_ca.crt'")
        temp.start()
        assert toast_cli(["migrate", temp.url()]) == 0
        url = f"{temp.url()}?sslmode=prefer&sslcert={client_cert}&sslkey={tmp_path / 'server.key'}"
        note = model_on(url)
        assert note.model_validate(note(text="sent").model_dump()).text == "sent"  # type: ignore[attr-defined]
        assert _ssl_state(url) == (True, "/CN=localhost")


def test_unusable_certificate_files_fail_at_class_definition(tmp_path: Path) -> None:
    """A missing or malformed sslcert/sslkey/sslrootcert is a configuration error naming the
    option, for every sslmode that reads it, and the key's path stays hidden."""
    missing = tmp_path / "missing.crt"
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate")
    for query in (
        f"sslmode=prefer&sslcert={missing}&sslkey=/secret/place.key",
        f"sslmode=require&sslcert={not_pem}&sslkey=/secret/place.key",
        f"sslmode=verify-full&sslrootcert={not_pem}",
    ):
        with pytest.raises(
            pydantic_toast.StorageConfigurationError, match="cannot be used"
        ) as info:
            model_on(f"postgresql://app:s3cret@db:5432/shop?{query}")
        assert "file(s) cannot be used" in str(info.value)
        assert "s3cret" not in str(info.value)
        assert "/secret/place.key" not in str(info.value)


def test_restart_between_calls_reconnects_and_ssl_off_is_refused(
    cluster: servers.TempPostgres,
) -> None:
    """After a restart the next call works; sslmode=require on a non-SSL server fails clearly."""
    note = model_on(cluster.url())
    reference = note(text="before").model_dump()
    cluster.stop()
    cluster.start(ssl=False)
    try:
        assert note.model_validate(reference).text == "before"  # type: ignore[attr-defined]
        secure = model_on(f"{cluster.url()}?sslmode=require")
        with pytest.raises(StorageConnectionError, match="SSL"):
            secure(text="x").model_dump()
    finally:
        cluster.stop()
        cluster.start(ssl=True)


def test_packaged_migrations_work_from_an_installed_wheel(
    tmp_path: Path, empty_database: str
) -> None:
    """A wheel carries the migrations: pydantic-toast migrate works from a plain install."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheel_dir.glob("*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "pydantic_toast/migrations/env.py" in names
    assert "pydantic_toast/migrations/script.py.mako" in names
    assert "pydantic_toast/migrations/versions/0001_external_records.py" in names
    assert "pydantic_toast/py.typed" in names
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pydantic_toast.integrations.cli import main; raise SystemExit(main())",
            "migrate",
            empty_database,
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (
        str(target)
        in subprocess.run(
            [sys.executable, "-c", "import pydantic_toast; print(pydantic_toast.__file__)"],
            env={**os.environ, "PYTHONPATH": str(target)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    note = model_on(empty_database)
    assert note.model_validate(note(text="wheel").model_dump()).text == "wheel"  # type: ignore[attr-defined]


USER_ENV = """
import asyncio, os
from alembic import context
from sqlalchemy import Column, Integer, MetaData, Table, Text
from pydantic_toast.integrations.alembic import include_name, migration_engine
from pydantic_toast.integrations.alembic import metadata as toast_metadata

app_metadata = MetaData()
Table("customers", app_metadata, Column("id", Integer, primary_key=True), Column("name", Text))

def run(connection):
    context.configure(
        connection=connection,
        target_metadata=[app_metadata, toast_metadata],
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()

async def main():
    engine = migration_engine(os.environ["DATABASE_URL"])
    async with engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()
    await engine.dispose()

asyncio.run(main())
"""

USER_VERSION = """
revision = "app0001"
down_revision = None
branch_labels = None
depends_on = None
import sqlalchemy as sa
from alembic import op

def upgrade():
    op.create_table(
        "customers", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text)
    )

def downgrade():
    op.drop_table("customers")
"""


def test_users_own_alembic_project_keeps_our_table(tmp_path: Path, empty_database: str) -> None:
    """A user's project with our metadata and include_name passes alembic check."""
    project = tmp_path / "app"
    (project / "migrations" / "versions").mkdir(parents=True)
    (project / "migrations" / "env.py").write_text(USER_ENV)
    (project / "migrations" / "versions" / "app0001.py").write_text(USER_VERSION)
    (project / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    assert toast_cli(["migrate", empty_database]) == 0
    upgrade = alembic("upgrade", "head", url=empty_database, cwd=project)
    assert upgrade.returncode == 0, upgrade.stderr
    check = alembic("check", url=empty_database, cwd=project)
    assert check.returncode == 0, check.stdout + check.stderr


USER_ENV_INCLUDE_OBJECT = USER_ENV.replace(
    "target_metadata=[app_metadata, toast_metadata],\n        include_name=include_name,",
    "target_metadata=app_metadata,\n        include_object=include_object,",
).replace("import include_name,", "import include_name, include_object,")


def test_users_autogenerate_before_migrate_leaves_our_table_alone(
    tmp_path: Path, empty_database: str
) -> None:
    """With include_object, a revision autogenerated before `pydantic-toast migrate` ran holds
    only the user's tables, so both streams then upgrade and `alembic check` finds no drift.

    (With our metadata in target_metadata, that revision created external_records itself, and
    the user's `alembic upgrade` then failed on the table `pydantic-toast migrate` made.)
    """
    project = tmp_path / "app"
    (project / "migrations" / "versions").mkdir(parents=True)
    (project / "migrations" / "env.py").write_text(USER_ENV_INCLUDE_OBJECT)
    template = Path(alembic_package.__file__).parent / "templates" / "generic" / "script.py.mako"
    (project / "migrations" / "script.py.mako").write_text(template.read_text())
    (project / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    revision = alembic("revision", "--autogenerate", "-m", "app", url=empty_database, cwd=project)
    assert revision.returncode == 0, revision.stderr
    [generated] = (project / "migrations" / "versions").glob("*.py")
    assert "customers" in generated.read_text()
    assert "external_record" not in generated.read_text()
    assert toast_cli(["migrate", empty_database]) == 0
    upgrade = alembic("upgrade", "head", url=empty_database, cwd=project)
    assert upgrade.returncode == 0, upgrade.stderr
    check = alembic("check", url=empty_database, cwd=project)
    assert check.returncode == 0, check.stdout + check.stderr


def test_small_pool_serves_hundreds_of_concurrent_operations(postgres_database_url: str) -> None:
    """300 concurrent saves and loads share a 2-connection pool fairly: none waits forever."""
    note = model_on(f"{postgres_database_url}?pool_size=2&max_overflow=0&connect_timeout=10")

    async def burst() -> int:
        items = [note(text=str(i)) for i in range(300)]
        references = await asyncio.gather(*(item.asave() for item in items))
        loaded = await asyncio.gather(*(note.aload(r) for r in references))
        count = await pydantic_toast.acount(note)  # Core path still finds a connection
        return sum(a == b for a, b in zip(items, loaded, strict=True)) + count

    assert asyncio.run(burst()) == 600


def test_pool_serves_operations_in_the_order_they_asked(postgres_database_url: str) -> None:
    """A task that returns a connection and asks again queues behind the tasks already waiting.

    (It used to take the connection back before the woken waiter ran: a waiter could lose its
    turn again and again, which made a load test's p99 latency 15 times its median.)
    """
    note = model_on(f"{postgres_database_url}?pool_size=1&max_overflow=0")

    async def scenario() -> list[str]:
        reference = await note(text="shared").asave()
        order: list[str] = []

        async def greedy() -> None:
            for i in range(10):
                await note.aload(reference)
                order.append(f"greedy {i}")

        async def patient() -> None:
            await note.aload(reference)
            order.append("patient")

        first = asyncio.ensure_future(greedy())
        await asyncio.sleep(0)  # greedy holds the only connection
        await asyncio.gather(first, patient())
        return order

    order = asyncio.run(scenario())
    assert order.index("patient") <= 2, order


async def test_after_a_burst_sequential_operations_reuse_one_connection(
    postgres_database_url: str,
) -> None:
    """Once a burst opened several connections, one after another the operations use one.

    (The pool handed out its idle connections in turn: each sequential load went to another,
    cold server process, 1.8x slower than on one warm connection.)
    """
    import asyncpg

    name = f"lifo{uuid4().hex[:12]}"
    note = model_on(f"{postgres_database_url}?application_name={name}")
    references = await asyncio.gather(*(note(text=str(i)).asave() for i in range(8)))
    await asyncio.gather(*(note.aload(r) for r in references))  # several connections open
    watcher = await asyncpg.connect(postgres_database_url)
    try:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        assert await watcher.fetchval(query, name) > 1
        marker = await watcher.fetchval("SELECT clock_timestamp()")
        for reference in references:
            await note.aload(reference)
        used = await watcher.fetchval(f"{query} AND query_start > $2", name, marker)
    finally:
        await watcher.close()
    assert used == 1


async def test_waiting_for_a_connection_is_bounded_by_the_pool_timeout(
    postgres_database_url: str,
) -> None:
    """Queued behind a busy pool, an operation fails after pool_timeout with the pool's error."""
    import asyncpg

    note = model_on(f"{postgres_database_url}?pool_size=1&max_overflow=0&connect_timeout=1")
    locked, other = note(text="locked"), note(text="other")
    await asyncio.gather(locked.asave(), other.asave())
    locker = await asyncpg.connect(postgres_database_url)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute(
            "SELECT 1 FROM external_records WHERE id = $1 FOR UPDATE", locked.external_id
        )
        locked.text = "changed"  # type: ignore[attr-defined]
        holder = asyncio.ensure_future(locked.asave())  # holds the only connection, blocked
        await asyncio.sleep(0.2)
        waiting = asyncio.ensure_future(note.aload(other.external_id))  # admitted: in the pool
        queued = asyncio.ensure_future(note.aload(other.external_id))  # queued in the gate
        with pytest.raises(pydantic_toast.StoragePoolTimeoutError, match="pool_size"):
            await queued
        with pytest.raises(pydantic_toast.StoragePoolTimeoutError):
            await waiting
        await transaction.rollback()
        await holder
    finally:
        await locker.close()
    assert (await note.aload(locked.external_id)).text == "changed"  # type: ignore[attr-defined]


def test_cancelled_waiters_do_not_leak_connections(postgres_database_url: str) -> None:
    """Operations cancelled while waiting for a connection leave the pool usable."""
    note = model_on(f"{postgres_database_url}?pool_size=1&max_overflow=0")

    async def scenario() -> str:
        reference = await note(text="kept").asave()
        tasks = [asyncio.ensure_future(note.aload(reference)) for _ in range(50)]
        await asyncio.sleep(0)
        for task in tasks[10:]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return (await note.aload(reference)).text  # type: ignore[attr-defined, no-any-return]

    assert asyncio.run(scenario()) == "kept"


# -- one pool, the application's engine, joined transactions ------------------------------------


def _engine(url: str, **options: object) -> AsyncEngine:
    return create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"), **options)


@contextlib.asynccontextmanager
async def _app_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """The application's engine on ``url``; on leaving, it is disposed and the storages closed."""
    engine = _engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()
        await pydantic_toast.aclose_storage()


async def _app_table(engine: AsyncEngine) -> str:
    """An application table of this test's own."""
    name = f"invoices_{uuid4().hex[:10]}"
    async with engine.begin() as connection:
        await connection.exec_driver_sql(f"CREATE TABLE {name} (number integer PRIMARY KEY)")
    return name


async def _invoices(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as connection:
        return int((await connection.exec_driver_sql(f"SELECT count(*) FROM {table}")).scalar_one())


async def test_save_commits_with_the_callers_transaction(postgres_database_url: str) -> None:
    """A save inside transaction(connection) commits together with the application's own row."""
    note = model_on(postgres_database_url)
    async with _app_engine(postgres_database_url) as engine:
        table = await _app_table(engine)
        async with engine.begin() as connection:
            await connection.exec_driver_sql(f"INSERT INTO {table} VALUES (1)")
            async with pydantic_toast.transaction(connection):
                reference = await note(text="paid").asave()
                # Read back inside the transaction: the same connection sees its own write.
                assert (await note.aload(reference)).text == "paid"  # type: ignore[attr-defined]
        assert await _invoices(engine, table) == 1
        assert (await note.aload(reference)).text == "paid"  # type: ignore[attr-defined]


async def test_a_batch_in_an_autocommit_block_says_it_cannot_be_atomic(
    postgres_database_url: str,
) -> None:
    """transaction() given an AUTOCOMMIT connection: a batch save there cannot be all or
    nothing; it is refused naming the cause and the fix (it failed with SQLSTATE 25P01, no
    cause given), and nothing is written."""
    note = model_on(postgres_database_url)
    engine = _engine(postgres_database_url, isolation_level="AUTOCOMMIT")
    items = [note(text="a"), note(text="b")]
    try:
        async with engine.connect() as connection, pydantic_toast.transaction(connection):
            with pytest.raises(StorageUsageError, match=r"AUTOCOMMIT.*engine\.begin"):
                await pydantic_toast.adump(items)
    finally:
        await engine.dispose()
    assert await pydantic_toast.acount(note) == 0
    await pydantic_toast.aclose_storage()


async def test_a_savepoint_around_a_batch_rolls_back_what_came_before_it(
    postgres_database_url: str,
) -> None:
    """A save, then a batch, inside a savepoint of the caller's that rolls back: the model
    saved first forgets its save, so saving it again writes it. (A batch that opened two
    savepoints and released one left a stale one behind: the savepoint's rollback then forgot
    the wrong saves, and the first model, taken for stored, was never written.)"""
    note = model_on(postgres_database_url)
    first = note(text="first")
    async with _app_engine(postgres_database_url) as engine:
        async with engine.begin() as connection, pydantic_toast.transaction(connection):
            savepoint = await connection.begin_nested()
            await first.asave()
            await pydantic_toast.adump([note(text="a"), note(text="b")])
            await savepoint.rollback()
        assert await pydantic_toast.acount(note) == 0
        reference = await first.asave()
        assert (await note.aload(reference)).text == "first"  # type: ignore[attr-defined]


async def test_committed_transaction_blocks_let_their_connections_go(
    postgres_database_url: str,
) -> None:
    """What a transaction() block keeps of its connection (its saves' bookkeeping) is let go
    of once the connection is: a committed block kept it forever (one per request)."""
    import gc

    from pydantic_toast.runtime import rollbacks

    async with _app_engine(postgres_database_url) as engine:
        gc.collect()
        before = len(rollbacks._SAVES)
        for _ in range(20):
            async with engine.begin() as connection, pydantic_toast.transaction(connection):
                pass
        del connection
        await engine.dispose()
        gc.collect()
        assert len(rollbacks._SAVES) == before


async def test_rollback_leaves_neither_row(postgres_database_url: str) -> None:
    """When the caller's transaction rolls back, neither its row nor the record is stored."""
    note = model_on(postgres_database_url)
    async with _app_engine(postgres_database_url) as engine:
        table = await _app_table(engine)
        item = note(text="never")

        async def write_then_fail() -> None:
            async with engine.begin() as connection:
                await connection.exec_driver_sql(f"INSERT INTO {table} VALUES (1)")
                async with pydantic_toast.transaction(connection):
                    await item.asave()
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError, match="abort"):
            await write_then_fail()
        assert item.external_id is not None
        assert await _invoices(engine, table) == 0
        with pytest.raises(RecordNotFoundError):
            await note.aload(item.external_id)


async def test_a_model_saved_in_a_rolled_back_transaction_is_saved_again(
    postgres_database_url: str,
) -> None:
    """Rolled back, a save is forgotten by its model: saving it again writes the record
    (before: the model took itself for stored and unchanged, the retry wrote nothing and
    returned a reference to no record; changed, it raised ConcurrencyError "deleted")."""
    note = model_on(postgres_database_url)
    async with _app_engine(postgres_database_url) as engine:
        first, second = note(text="retried"), note(text="changed")
        async with AsyncSession(engine) as session:
            async with pydantic_toast.transaction(session):
                await first.asave()
                await second.asave()
                second.text = "changed twice"  # type: ignore[attr-defined]
                await second.asave()  # revision 2, inside the same transaction
            await session.rollback()
        assert (first.external_revision, second.external_revision) == (None, None)  # never stored
        async with AsyncSession(engine) as session:
            async with pydantic_toast.transaction(session):
                reference = await first.asave()  # the same instance, retried
            await session.commit()
        assert (await note.aload(reference)).text == "retried"  # type: ignore[attr-defined]
        assert first.external_revision == 1
        second.text = "changed thrice"  # type: ignore[attr-defined]
        loaded = await note.aload(await second.asave())  # outside any transaction
        assert (loaded.text, loaded.external_revision) == ("changed thrice", 1)  # type: ignore[attr-defined]
        async with AsyncSession(engine) as session:  # a commit keeps what it saved
            async with pydantic_toast.transaction(session):
                second.text = "committed"  # type: ignore[attr-defined]
                await second.asave()
            await session.commit()
        assert second.external_revision == 2
        assert (await note.aload(second.external_id)).text == "committed"  # type: ignore[attr-defined]


async def test_savepoints_forget_only_the_saves_made_inside_them(
    postgres_database_url: str,
) -> None:
    """A rollback to a savepoint forgets the saves made since it began, and only those: a
    save before it (or before the library's own savepoint around a conflicting batch) stays
    saved; each of several savepoints rolled back forgets its own; a commit keeps all."""
    note = model_on(postgres_database_url)

    class Holder(ExternalBaseModel):
        model_config = ExternalConfigDict(
            storage=postgres_database_url, external_name=f"Holder{uuid4().hex[:8]}"
        )
        notes: list[note]  # type: ignore[valid-type]

    async with _app_engine(postgres_database_url) as engine:
        stale = note(text="stale")
        reference = await stale.asave()
        rival = await note.aload(reference)
        rival.text = "rival"  # type: ignore[attr-defined]
        await rival.asave()
        before, inner, first, second = (note(text=t) for t in ("before", "in", "1", "2"))
        async with (
            engine.connect() as connection,
            connection.begin(),
            pydantic_toast.transaction(connection),
        ):
            await before.asave()
            stale.text = "mine"  # type: ignore[attr-defined]
            with pytest.raises(ConcurrencyError):  # the batch's own savepoint rolls back
                await Holder(notes=[note(text="new"), stale]).asave()
            async with connection.begin_nested() as savepoint:
                await inner.asave()
                await savepoint.rollback()
            for item in (first, second):
                async with connection.begin_nested() as savepoint:
                    await item.asave()
                    await savepoint.rollback()
        assert before.external_revision == 1
        assert (inner.external_revision, first.external_revision) == (None, None)
        assert second.external_revision is None
        before.text = "after"  # type: ignore[attr-defined]
        await before.asave()  # no false ConcurrencyError: it was committed at revision 1
        assert (await note.aload(before.external_id)).external_revision == 2  # type: ignore[attr-defined]
        for item in (inner, first, second):  # saved again: written, loadable
            assert (await note.aload(await item.asave())).external_revision == 1  # type: ignore[attr-defined]


async def test_one_connection_commits_then_rolls_back_and_keeps_one_set_of_listeners(
    postgres_database_url: str,
) -> None:
    """On a long-lived connection (commit as you go): a commit keeps the saves before it, a
    later rollback forgets only the saves since; many transaction() blocks add no listeners."""
    note = model_on(postgres_database_url)
    async with _app_engine(postgres_database_url) as engine:
        kept, dropped = note(text="kept"), note(text="dropped")
        async with engine.connect() as connection:
            async with pydantic_toast.transaction(connection):
                await kept.asave()
            await connection.commit()
            async with pydantic_toast.transaction(connection):
                await dropped.asave()
            await connection.rollback()
            for _ in range(50):
                async with pydantic_toast.transaction(connection):
                    pass
                await connection.commit()
            sync = connection.sync_connection
            assert sync is not None
            assert len(sync.dispatch.commit) == 1
            assert len(sync.dispatch.rollback) == 1
        assert (kept.external_revision, dropped.external_revision) == (1, None)
        kept.text = "again"  # type: ignore[attr-defined]
        await kept.asave()
        assert kept.external_revision == 2


async def test_session_transaction_commits_and_rolls_back(postgres_database_url: str) -> None:
    """transaction(session) joins an AsyncSession's transaction: commit keeps, rollback drops."""
    note = model_on(postgres_database_url)
    async with _app_engine(postgres_database_url) as engine:
        async with AsyncSession(engine) as session:
            async with pydantic_toast.transaction(session):
                kept = await note(text="kept").asave()
            await session.commit()
        async with AsyncSession(engine) as session:
            async with pydantic_toast.transaction(session):
                dropped = await note(text="dropped").asave()
            await session.rollback()
        assert (await note.aload(kept)).text == "kept"  # type: ignore[attr-defined]
        with pytest.raises(RecordNotFoundError):
            await note.aload(dropped)


async def test_a_session_savepoint_rolled_back_undoes_the_saves_made_in_it(
    postgres_database_url: str,
) -> None:
    """session.begin_nested() inside transaction(session), then a single save, a batch save
    and a delete, then the savepoint's rollback: none of them is stored, the models forget
    their saves, and what was saved before the savepoint commits. SQLAlchemy emits a
    session's SAVEPOINT only at its next use of the connection, so the library's statements
    ran before it: the rollback undid nothing, and all three were committed."""
    note = model_on(postgres_database_url)
    async with _app_engine(postgres_database_url) as engine:
        doomed = await note(text="doomed").asave()
        session = AsyncSession(engine)
        async with session, session.begin(), pydantic_toast.transaction(session):
            before = await note(text="before").asave()
            savepoint = await session.begin_nested()
            single = note(text="single")
            await single.asave()
            pair = [note(text="one"), note(text="two")]
            await pydantic_toast.adump(pair)
            await pydantic_toast.adelete(note, doomed)
            await savepoint.rollback()
            assert single.external_revision is None
            assert [model.external_revision for model in pair] == [None, None]
        assert (await note.aload(before)).text == "before"  # type: ignore[attr-defined]
        assert (await note.aload(doomed)).text == "doomed"  # type: ignore[attr-defined]
        assert await pydantic_toast.acount(note) == 2
        await single.asave()  # still new to the store: written, not taken for unchanged
        assert (await note.aload(single.external_id)).text == "single"  # type: ignore[attr-defined]


class _AppBase(DeclarativeBase):
    """An application's own ORM models."""


class _Invoice(_AppBase):
    """An application's own table, for a flush that fails."""

    __tablename__ = "invoices"
    number: Mapped[int] = mapped_column(primary_key=True)


async def test_a_joined_session_serves_concurrent_loads_and_names_a_pending_rollback(
    postgres_database_url: str,
) -> None:
    """Inside transaction(session) after session.begin_nested(): two loads gathered both load
    (the second asked the session while the first's SAVEPOINT was on its way, and the session
    refused: "concurrent operations are not permitted"). After a failed flush the session
    waits for a rollback: a save raises StorageUsageError saying to roll back, not a
    StorageOperationError "failed during connect"."""
    from sqlalchemy.exc import IntegrityError

    note = model_on(postgres_database_url)
    first, second = await note(text="a").asave(), await note(text="b").asave()
    async with _app_engine(postgres_database_url) as engine:
        session = AsyncSession(engine)
        async with session, session.begin(), pydantic_toast.transaction(session):
            await session.begin_nested()
            loaded = await asyncio.gather(note.aload(first), note.aload(second))
            assert [model.text for model in loaded] == ["a", "b"]  # type: ignore[attr-defined]
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE invoices (number int PRIMARY KEY)")
        session = AsyncSession(engine)
        async with session, pydantic_toast.transaction(session):
            session.add_all([_Invoice(number=1), _Invoice(number=1)])
            with pytest.raises(IntegrityError):
                await session.flush()
            with pytest.raises(StorageUsageError, match="roll the session back"):
                await note(text="late").asave()
            await session.rollback()
    assert await pydantic_toast.acount(note) == 2


async def test_a_save_after_the_session_committed_inside_the_block_names_the_fix(
    postgres_database_url: str,
) -> None:
    """session.commit() inside transaction(session) releases the connection the block joined:
    a later save there raises StorageUsageError saying to commit after the block (it raised
    StorageOperationError "the PostgreSQL backend failed during save with
    ResourceClosedError"), and what was committed stays."""
    note = model_on(postgres_database_url)
    engine = _engine(postgres_database_url)
    try:
        async with AsyncSession(engine) as session, pydantic_toast.transaction(session):
            kept = await note(text="kept").asave()
            await session.commit()
            with pytest.raises(StorageUsageError, match="commit or roll back after the block"):
                await note(text="late").asave()
        assert (await note.aload(kept)).text == "kept"  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
        await pydantic_toast.aclose_storage()


async def test_a_session_joined_with_create_savepoint_serves_the_test_fixture_pattern(
    postgres_database_url: str,
) -> None:
    """The pattern of test suites (SQLAlchemy's "joining a session into an external
    transaction"): a connection's outer transaction, a session on it joined with
    join_transaction_mode="create_savepoint", and transaction(session). session.commit()
    inside the block releases the session's savepoint and the next save runs in a new one;
    session.rollback() undoes only what came after that commit (the model forgets it); the
    outer rollback drops everything."""
    note = model_on(postgres_database_url)
    async with _app_engine(postgres_database_url) as engine, engine.connect() as connection:
        outer = await connection.begin()
        session = AsyncSession(bind=connection, join_transaction_mode="create_savepoint")
        async with session, pydantic_toast.transaction(session):
            first = note(text="first")
            await first.asave()
            await session.commit()
            second = note(text="second")
            await second.asave()
            await session.rollback()
            assert first.external_revision == 1
            assert second.external_revision is None
            third = await note(text="third").asave()
            assert (await note.aload(first.external_id)).text == "first"  # type: ignore[attr-defined]
            assert (await note.aload(third)).text == "third"  # type: ignore[attr-defined]
            assert await pydantic_toast.acount(note) == 2
        await outer.rollback()
    assert await pydantic_toast.acount(note) == 0


async def test_errors_inside_a_joined_transaction_are_mapped(postgres_database_url: str) -> None:
    """A failing statement on the caller's connection still leaves as a library error."""
    async with _app_engine(postgres_database_url) as engine, engine.connect() as connection:
        await connection.exec_driver_sql("SET search_path TO nowhere")
        note = model_on(postgres_database_url)
        async with pydantic_toast.transaction(connection):
            with pytest.raises(StorageSchemaError, match="does not exist in database"):
                await note(text="x").asave()
        await connection.rollback()


@pytest.mark.usefixtures("blocking_calls_allowed")
async def test_blocking_call_inside_a_transaction_is_refused(postgres_database_url: str) -> None:
    """model_dump() inside transaction() raises StorageUsageError instead of escaping it."""
    note = model_on(postgres_database_url)
    async with (
        _app_engine(postgres_database_url) as engine,
        engine.begin() as connection,
        pydantic_toast.transaction(connection),
    ):
        with pytest.raises(StorageUsageError, match="use the async API"):
            note(text="x").model_dump()


async def test_applications_own_engine_serves_the_models(postgres_database_url: str) -> None:
    """use_engine() makes the models use the application's pool, which stays open after close."""
    name = f"own_engine_{uuid4().hex[:8]}"
    engine = _engine(
        postgres_database_url, connect_args={"server_settings": {"application_name": name}}
    )
    try:
        async with pydantic_toast.Storage() as storage:
            storage.use_engine(postgres_database_url, engine)
            note = model_on(postgres_database_url)
            reference = await note(text="own").asave()
            assert (await note.aload(reference)).text == "own"  # type: ignore[attr-defined]
            assert engine.sync_engine.pool.checkedin() >= 1  # type: ignore[attr-defined]
            with pytest.raises(StorageUsageError, match="already connected"):
                storage.use_engine(postgres_database_url, engine)
        async with engine.connect() as connection:  # not disposed by the storage
            sessions = await connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", (name,)
            )
            assert sessions.scalar_one() >= 1
    finally:
        await engine.dispose()


async def test_an_engine_without_a_statement_cache_gets_no_named_statements(
    postgres_database_url: str,
) -> None:
    """Behind an engine whose asyncpg statement cache is off (statement_cache_size=0, as for
    PgBouncer in transaction mode), saves and loads prepare no named statement."""
    engine = _engine(postgres_database_url, pool_size=1, connect_args={"statement_cache_size": 0})
    try:
        async with pydantic_toast.Storage() as storage:
            storage.use_engine(postgres_database_url, engine)
            note = model_on(postgres_database_url)
            reference = await note(text="unnamed").asave()
            assert (await note.aload(reference)).text == "unnamed"  # type: ignore[attr-defined]
            async with engine.connect() as connection:  # the pool's only connection
                raw = await connection.get_raw_connection()
                kept = raw.info[_PREPARED]
            assert {"insert", "select_one"} <= set(kept)
            assert set(kept.values()) == {False}  # run unnamed, through the connection
    finally:
        await engine.dispose()


def test_use_engine_refuses_non_sql_urls() -> None:
    """use_engine() on a Redis URL says it takes SQL storage URLs."""
    with pydantic_toast.Storage() as storage, pytest.raises(StorageUsageError, match="SQL storage"):
        storage.use_engine("redis://127.0.0.1:6379/0", create_async_engine("sqlite+aiosqlite://"))


async def test_statement_timeout_keeps_the_other_connections(postgres_database_url: str) -> None:
    """A row lock held past command_timeout is a StorageTimeoutError; other connections survive."""
    import asyncpg

    name = f"timeout_{uuid4().hex[:8]}"
    url = f"{postgres_database_url}?command_timeout=1&application_name={name}&pool_size=4"
    note = model_on(url)

    async def pids(connection: asyncpg.Connection) -> set[int]:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", name
        )
        return {row[0] for row in rows}

    locker = await asyncpg.connect(postgres_database_url)
    try:
        items = [note(text=str(i)) for i in range(4)]
        await asyncio.gather(*(item.asave() for item in items))  # several pooled connections
        before = await pids(locker)
        assert len(before) >= 2
        locked = items[0]
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute(
            "SELECT 1 FROM external_records WHERE id = $1 FOR UPDATE", locked.external_id
        )
        with pytest.raises(StorageTimeoutError, match="timed out"):
            await locked.asave(force=True)  # forced: an unchanged save would write nothing
        await transaction.rollback()
        after = await pids(locker)
        assert len(before & after) >= len(before) - 1  # only the timed-out one was dropped
        await locked.asave()  # and the next call works
    finally:
        await locker.close()
        await pydantic_toast.aclose_storage()


async def test_a_blocked_statement_ends_at_command_timeout_and_a_cancel_stays_a_cancel(
    postgres_database_url: str,
) -> None:
    """A prepared statement blocked on a row lock ends command_timeout after it started.

    The backend's watchdog bounds it (one timer per backend, not asyncpg's timer per
    statement): a StorageTimeoutError at the deadline, not a check period later, and the
    connection serves the next save. A task cancelled while blocked gets its CancelledError,
    not a timeout.
    """
    import asyncpg

    # Checks come every second, and one at the deadline: without that one, the timeout would
    # come at the second check, 0.9 s late. The bound leaves a loaded machine 0.8 s.
    timeout = 1.1
    note = model_on(f"{postgres_database_url}?command_timeout={timeout}&pool_size=1")
    item = note(text="a")
    await item.asave()
    await item.asave(force=True)  # the upsert is prepared on the pool's only connection
    locker = await asyncpg.connect(postgres_database_url)
    try:
        for cancelled in (False, True):
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute(
                "SELECT 1 FROM external_records WHERE id = $1 FOR UPDATE", item.external_id
            )
            started = loop_time()
            save = asyncio.ensure_future(item.asave(force=True))
            if cancelled:
                await asyncio.sleep(0.3)
                save.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await save
            else:
                with pytest.raises(StorageTimeoutError, match="timed out"):
                    await save
                assert timeout <= loop_time() - started < timeout + 0.8
            await transaction.rollback()
            await item.asave(force=True)  # the same connection, once the server cancelled
    finally:
        await locker.close()
        await pydantic_toast.aclose_storage()


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def test_conditional_write_waiting_on_a_concurrent_writer_rechecks_the_revision(
    postgres_database_url: str,
) -> None:
    """A write blocked behind another transaction's update fails once that one commits.

    Under READ COMMITTED, PostgreSQL re-evaluates the revision test on the newest row version
    after the lock is released (the race Marten's issue #4324 lost writes in); one record and
    a batch alike.
    """
    import asyncpg

    note = model_on(postgres_database_url)
    pair = type(
        "Pair",
        (ExternalBaseModel,),
        {
            "__annotations__": {"a": note, "b": note},
            "model_config": ExternalConfigDict(
                storage=postgres_database_url, external_name=f"Pair{uuid4().hex}"
            ),
        },
    )

    async def race(target: ExternalBaseModel, locked_id: object) -> None:
        blocker = await asyncpg.connect(postgres_database_url)
        try:
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute(
                "UPDATE external_records SET revision = revision + 1 WHERE id = $1::uuid",
                str(locked_id),
            )
            write = asyncio.ensure_future(target.asave())
            await asyncio.sleep(0.3)
            assert not write.done()  # waiting for the row lock
            await transaction.commit()
            with pytest.raises(pydantic_toast.ConcurrencyError) as info:
                await write
            assert (info.value.expected, info.value.current) == (1, 2)
        finally:
            await blocker.close()
            await pydantic_toast.aclose_storage()

    single = note(text="one")
    single.model_dump()
    single.text = "changed"  # type: ignore[attr-defined]
    asyncio.run(race(single, single.external_id))

    tree = pair(a=note(text="a"), b=note(text="b"))
    tree.model_dump()
    tree.a.text = "a2"  # type: ignore[attr-defined]
    tree.b.text = "b2"  # type: ignore[attr-defined]
    asyncio.run(race(tree, tree.b.external_id))  # type: ignore[attr-defined]
    pydantic_toast.close_storage()
    unchanged = asyncio.run(_texts(postgres_database_url, tree))
    assert unchanged == {"a", "b"}  # the batch wrote neither child


async def _texts(url: str, tree: ExternalBaseModel) -> set[str]:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT data->>'text' AS text FROM external_records WHERE id = ANY($1::uuid[])",
            [str(tree.a.external_id), str(tree.b.external_id)],  # type: ignore[attr-defined]
        )
    finally:
        await connection.close()
    return {row["text"] for row in rows}


def test_revision_migration_upgrades_rows_in_place_and_downgrades(empty_database: str) -> None:
    """Rows written before the revision column get revision 1, load, and save as revision 2."""
    import importlib

    import asyncpg

    migration = importlib.import_module("pydantic_toast.migrations.versions.0003_record_revisions")
    previous = migration.down_revision
    assert alembic("upgrade", previous, url=empty_database).returncode == 0
    id = uuid4()
    name = f"Note{uuid4().hex}"

    async def run(statement: str, *args: object) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(empty_database)
        try:
            return await connection.fetch(statement, *args)
        finally:
            await connection.close()

    asyncio.run(
        run(
            "INSERT INTO external_records (class_name, id, schema_version, data) "
            'VALUES ($1, $2, 1, \'{"text": "old"}\')',
            name,
            id,
        )
    )
    upgrade = alembic("upgrade", migration.revision, url=empty_database)
    assert upgrade.returncode == 0, upgrade.stderr
    assert alembic("upgrade", "head", url=empty_database).returncode == 0
    check = alembic("check", url=empty_database)
    assert check.returncode == 0, check.stderr
    rows = asyncio.run(run("SELECT revision FROM external_records WHERE id = $1", id))
    assert [row["revision"] for row in rows] == [1]
    note = type(
        "Note",
        (ExternalBaseModel,),
        {
            "__annotations__": {"text": str},
            "model_config": ExternalConfigDict(storage=empty_database, external_name=name),
        },
    )
    loaded = note.model_validate({"class_name": name, "id": str(id)})
    assert (loaded.text, loaded.external_revision) == ("old", 1)  # type: ignore[attr-defined]
    loaded.text = "new"  # type: ignore[attr-defined]
    loaded.model_dump()
    assert loaded.external_revision == 2
    pydantic_toast.close_storage()
    downgrade = alembic("downgrade", previous, url=empty_database)
    assert downgrade.returncode == 0, downgrade.stderr
    columns = asyncio.run(
        run(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'external_records' AND column_name = 'revision'"
        )
    )
    assert columns == []
    rows = asyncio.run(run("SELECT data->>'text' AS text FROM external_records WHERE id = $1", id))
    assert [row["text"] for row in rows] == ["new"]


async def test_a_save_cancelled_while_streaming_a_large_record_writes_nothing(
    postgres_database_url: str,
) -> None:
    """Cancelled during the COPY that stages a large record, a save leaves the row as it was
    (its transaction rolls back, the staging table with it); the next save writes."""
    import asyncpg

    model = type(
        "Scan",
        (ExternalBaseModel,),
        {
            "__annotations__": {"body": str},
            "model_config": ExternalConfigDict(
                storage=postgres_database_url, external_name=f"Scan{uuid4().hex[:8]}"
            ),
        },
    )
    item = model(body="a" * 2_000_000)
    reference = await item.asave()
    item.body = "b" * 40_000_000  # type: ignore[attr-defined]
    admin = await asyncpg.connect(postgres_database_url)
    try:
        task = asyncio.create_task(item.asave())
        copying = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND query LIKE 'COPY %toast_stage%'"
        )
        while not await admin.fetchval(copying):
            assert not task.done(), "the save ended before it could be interrupted"
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        row = await admin.fetchrow(
            "SELECT revision, length(data->>'body') AS length FROM external_records WHERE id = $1",
            UUID(reference["id"]),
        )
        assert (row["revision"], row["length"]) == (1, 2_000_000)
        item.body = "c" * 3_000_000  # type: ignore[attr-defined]
        await item.asave()
        assert (await model.aload(reference)).body == "c" * 3_000_000  # type: ignore[attr-defined]
        staged = "SELECT count(*) FROM pg_class WHERE relname = 'toast_stage'"
        for _ in range(100):  # the cancelled connection's session ends on its own
            if await admin.fetchval(staged) == 0:
                break
            await asyncio.sleep(0.05)
        assert await admin.fetchval(staged) == 0, "no staging table is left behind"
    finally:
        await admin.close()
        await pydantic_toast.aclose_storage()


async def test_a_large_record_saved_in_the_callers_transaction_commits_and_rolls_back_with_it(
    postgres_database_url: str,
) -> None:
    """A record streamed through a staging table joins the caller's transaction: it commits
    with the application's row, and a rollback leaves neither."""
    note = model_on(postgres_database_url)
    async with _app_engine(postgres_database_url) as engine:
        text = "é" * 1_500_000  # 3 MB of JSON: staged
        table = await _app_table(engine)
        async with engine.begin() as connection:
            await connection.exec_driver_sql(f"INSERT INTO {table} VALUES (1)")
            async with pydantic_toast.transaction(connection):
                reference = await note(text=text).asave()
                assert (await note.aload(reference)).text == text  # type: ignore[attr-defined]
                second = await note(text=text + "2").asave()  # the same staging table again
        assert await _invoices(engine, table) == 1
        assert (await note.aload(second)).text == text + "2"  # type: ignore[attr-defined]
        assert (await note.aload(reference)).text == text  # type: ignore[attr-defined]
        item = note(text=text)

        async def write_then_fail() -> None:
            async with engine.begin() as connection:
                await connection.exec_driver_sql(f"INSERT INTO {table} VALUES (2)")
                async with pydantic_toast.transaction(connection):
                    await item.asave()
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError, match="abort"):
            await write_then_fail()
        assert await _invoices(engine, table) == 1
        assert item.external_id is not None
        with pytest.raises(RecordNotFoundError):
            await note.aload(item.external_id)


async def test_large_records_saved_one_after_another_on_one_connection(
    postgres_database_url: str,
) -> None:
    """Five large saves on a pool of one connection: each stages through the same temporary
    table (dropped after each write) and reads back exactly."""
    note = model_on(postgres_database_url + "?pool_size=1")
    try:
        texts = [str(n) * 1_200_000 for n in range(5)]
        references = [await note(text=text).asave() for text in texts]
        loaded = [await note.aload(reference) for reference in references]
        assert [item.text for item in loaded] == texts  # type: ignore[attr-defined]
    finally:
        await pydantic_toast.aclose_storage()


async def test_a_column_type_changed_under_prepared_statements_is_prepared_again(
    empty_database: str,
) -> None:
    """A migration that changes a column the load returns does not break the pooled
    connection's prepared statement: it is prepared again and the load answers."""
    import asyncpg

    assert await asyncio.to_thread(toast_cli, ["migrate", empty_database]) == 0
    note = model_on(empty_database + "?pool_size=1")
    try:
        reference = await note(text="kept").asave()
        await note.aload(reference)  # prepared on the pool's only connection
        admin = await asyncpg.connect(empty_database)
        try:
            await admin.execute(
                "ALTER TABLE external_records ALTER COLUMN schema_version TYPE bigint"
            )
        finally:
            await admin.close()
        loaded = await note.aload(reference)
        assert loaded.text == "kept"  # type: ignore[attr-defined]
        assert loaded.external_revision == 1
    finally:
        await pydantic_toast.aclose_storage()


async def test_batch_reads_keep_both_timestamps_to_the_microsecond(
    postgres_database_url: str,
) -> None:
    """A batch read (one class or several) gives each record's created_at and updated_at exactly."""
    name, other = f"stamps{uuid4().hex}", f"stamps{uuid4().hex}"
    created = datetime(2024, 2, 29, 23, 59, 58, 999999, tzinfo=timezone(timedelta(hours=-7)))
    records = [
        StoredRecord(
            class_name,
            uuid4(),
            b'{"n":%d}' % n,
            1,
            created + timedelta(microseconds=n),
            created + timedelta(days=400, microseconds=7 * n + 1),
        )
        for n, class_name in enumerate([name, name, name, other])
    ]
    try:
        url = StorageURL.parse(postgres_database_url)
        backend = await pydantic_toast.current_storage().connected(url)
        await backend.save_records(records)
        for keys in (ClassKeys(name, [r.id for r in records[:3]]), [r.key for r in records]):
            loaded = await backend.load_records(keys)
            expected = records[: len(loaded)]
            assert [(r.created_at, r.updated_at) for r in loaded if r is not None] == [
                (r.created_at, r.updated_at) for r in expected
            ]
            assert all(r is not None and r.created_at.utcoffset() == timedelta(0) for r in loaded)
    finally:
        await pydantic_toast.aclose_storage()


async def test_a_read_parses_one_timestamp_of_a_record_written_once(
    postgres_database_url: str,
) -> None:
    """A read hands a record whose updated_at is its created_at one datetime for both (one
    timestamp decoded and parsed, not two), and an updated record its own updated_at: for a
    single key and for batches of one class (as ids or texts) and of several, under any
    DateStyle, on a pooled connection and inside a transaction()."""
    name = f"once{uuid4().hex}"
    created = datetime(2024, 2, 29, 23, 59, 58, 999999, tzinfo=UTC)
    records = [
        StoredRecord(name, uuid4(), b'{"n":0}', 1, created, created),
        StoredRecord(name, uuid4(), b'{"n":1}', 1, created, created + timedelta(microseconds=1)),
    ]
    ids = [r.id for r in records]
    engine = _engine(postgres_database_url, pool_size=1)
    try:
        async with pydantic_toast.Storage() as storage:
            storage.use_engine(postgres_database_url, engine)
            backend = await storage.connected(StorageURL.parse(postgres_database_url))
            await backend.save_records(records)
            for style in ("ISO", "SQL"):
                async with engine.connect() as connection:  # the pool's one connection
                    await connection.exec_driver_sql(f"SET DateStyle = '{style}'")
                for keys in (
                    ClassKeys(name, ids),
                    ClassKeys(name, ids, [str(id) for id in ids], canonical=True),
                    [r.key for r in records],
                ):
                    once, updated = await backend.load_records(keys)
                    assert once is not None
                    assert updated is not None
                    assert once.updated_at is once.created_at == created
                    assert (updated.created_at, updated.updated_at) == (
                        created,
                        records[1].updated_at,
                    )
                (once,), (updated,) = [await backend.load_records([r.key]) for r in records]
                assert once is not None
                assert updated is not None
                assert once.updated_at is once.created_at == created
                assert (updated.created_at, updated.updated_at) == (created, records[1].updated_at)
            async with engine.begin() as connection, pydantic_toast.transaction(connection):
                (once,), (updated,) = [await backend.load_records([r.key]) for r in records]
            assert once is not None
            assert updated is not None
            assert once.updated_at is once.created_at == created
            assert (updated.created_at, updated.updated_at) == (created, records[1].updated_at)
    finally:
        await engine.dispose()


async def _write_every_kind(backend: Any) -> None:
    """Batches of new, checked and forced records, alone and mixed, conflicts and expired rows
    among them: each writes what it should, or nothing."""
    name = f"kinds{uuid4().hex}"
    now = datetime.now(UTC)

    def record(id: UUID, n: int, revision: int | None, ttl: float | None = None) -> StoredRecord:
        at = now - timedelta(hours=1) if ttl else now  # with a ttl: expired an hour ago
        return StoredRecord(name, id, b'{"n":%d}' % n, 1, at, at, ttl=ttl, revision=revision)

    async def stored_n() -> list[int | None]:
        loaded = await backend.load_records([(name, id) for id in ids])
        return [None if r is None else json.loads(r.data)["n"] for r in loaded]

    ids = [uuid4() for _ in range(6)]
    assert await backend.save_records([record(ids[5], 0, 0, ttl=1)]) == [1]  # expired at once
    added = [record(id, 1, 0) for id in ids[:3]] + [record(ids[5], 1, 0)]
    assert _write_statement(added) is _WRITE_ONE_KIND["added"]
    assert await backend.save_records(added) == [1, 1, 1, 1]  # the last over an expired row
    checked = [record(ids[0], 2, 1), record(ids[1], 2, 1)]
    assert _write_statement(checked) is _WRITE_ONE_KIND["changed"]
    assert await backend.save_records(checked) == [2, 2]
    forced = [record(ids[0], 3, None), record(ids[2], 3, None), record(ids[3], 3, None)]
    assert _write_statement(forced) is _WRITE_ONE_KIND["forced"]
    assert await backend.save_records(forced) == [3, 2, 1]
    mixed = [record(ids[0], 4, 3), record(ids[4], 4, 0), record(ids[2], 4, None)]
    assert _write_statement(mixed) is _WRITE_MANY
    assert await backend.save_records(mixed) == [4, 1, 3]
    assert await stored_n() == [4, 2, 4, 3, 4, 1]
    for stale, current in (
        ([record(ids[1], 5, 2), record(ids[0], 5, 3)], 4),  # checked, one stale
        ([record(uuid4(), 5, 0), record(ids[1], 5, 0)], 2),  # new, one already there
        ([record(ids[1], 5, 2), record(ids[3], 5, 0)], 1),  # mixed, the new one there
    ):
        with pytest.raises(ConcurrencyError) as caught:
            await backend.save_records(stale)
        assert (caught.value.id, caught.value.current) == (stale[1].id, current)
        assert await stored_n() == [4, 2, 4, 3, 4, 1]  # nothing written


async def test_batches_of_one_kind_or_mixed_check_every_revision(
    postgres_database_url: str,
) -> None:
    """A chunk of one kind (new, checked or forced records) is that kind's write alone, a mixed
    one the statement writing every kind: the same outcome either way, pooled or joined."""
    async with _app_engine(postgres_database_url) as engine:
        url = StorageURL.parse(postgres_database_url)
        backend = await pydantic_toast.current_storage().connected(url)
        await _write_every_kind(backend)
        async with engine.begin() as connection, pydantic_toast.transaction(connection):
            await _write_every_kind(backend)


async def test_a_stored_timestamp_python_cannot_hold_is_refused_naming_the_record(
    postgres_database_url: str,
) -> None:
    """A load of a record whose updated_at Python cannot hold names its class and id.

    A single load and a batch refuse it alike (a single load once gave datetime.max for
    infinity, where a batch refused it).
    """
    note = model_on(postgres_database_url)
    first, second = await pydantic_toast.adump([note(text="a"), note(text="b")])
    async with _app_engine(postgres_database_url) as engine:
        for stamp in ("infinity", "0044-03-15 00:00:00+00 BC"):
            async with engine.begin() as connection:
                await connection.exec_driver_sql(
                    f"UPDATE external_records SET updated_at = '{stamp}' WHERE id = $1",
                    (UUID(second["id"]),),
                )
            for load in (
                lambda: pydantic_toast.avalidate(list[note], [first, second]),  # type: ignore[valid-type]
                lambda: note.aload(second),
            ):
                with pytest.raises(StoredDataError) as info:
                    await load()
                assert (info.value.class_name, str(info.value.id)) == (
                    note._toast_settings().external_name,
                    second["id"],
                )
                assert "updated_at" in str(info.value)


async def test_a_batch_load_sends_its_ids_as_one_text_and_reads_timestamps_as_iso_text(
    postgres_database_url: str,
) -> None:
    """A batch load of references to one class sends their ids as one comma-joined text (no
    uuid[] parameter, which asyncpg encodes element by element), and on a session whose
    DateStyle is ISO reads the timestamps as the server's own text, without to_char."""
    import asyncpg

    name = f"texts{uuid4().hex[:12]}"
    note = model_on(f"{postgres_database_url}?application_name={name}")
    saved = [note(text=str(n)) for n in range(3)]
    try:
        references = await pydantic_toast.adump(saved)
        loaded = await pydantic_toast.avalidate(list[note], references)  # type: ignore[valid-type]
        watcher = await asyncpg.connect(postgres_database_url)
        try:
            query = "SELECT query FROM pg_stat_activity WHERE application_name = $1"
            last = await watcher.fetchval(query, name)
        finally:
            await watcher.close()
    finally:
        await pydantic_toast.aclose_storage()
    assert "string_to_array" in last
    assert "to_char" not in last
    assert [n.text for n in loaded] == ["0", "1", "2"]  # type: ignore[attr-defined]
    assert [n.external_id for n in loaded] == [n.external_id for n in saved]


async def test_a_single_load_reads_timestamps_without_to_char(postgres_database_url: str) -> None:
    """A single load reads the timestamps as JSON's text of them, without to_char (1.3 µs of
    server time a timestamp)."""
    import asyncpg

    name = f"one{uuid4().hex[:12]}"
    note = model_on(f"{postgres_database_url}?application_name={name}")
    try:
        saved = note(text="one")
        loaded = await note.aload(await saved.asave())
        watcher = await asyncpg.connect(postgres_database_url)
        try:
            query = "SELECT query FROM pg_stat_activity WHERE application_name = $1"
            last = await watcher.fetchval(query, name)
        finally:
            await watcher.close()
    finally:
        await pydantic_toast.aclose_storage()
    assert "convert_to" in last  # the load's statement
    assert "to_char" not in last
    assert loaded.text == "one"  # type: ignore[attr-defined]
    assert loaded.external_id == saved.external_id


async def test_a_batch_of_saved_references_reuses_their_ids(postgres_database_url: str) -> None:
    """A batch load of the references asave() returned reuses the UUID each was made with (no
    id parsed from its text); a reference whose text was replaced is parsed as before."""
    note = model_on(postgres_database_url)
    try:
        saved = [note(text=str(n)) for n in range(3)]
        references = [await n.asave() for n in saved]
        loaded = await pydantic_toast.avalidate(list[note], references)  # type: ignore[valid-type]
        assert all(
            n.external_id is r._toast_made_id for n, r in zip(loaded, references, strict=True)
        )
        assert [n.text for n in loaded] == ["0", "1", "2"]  # type: ignore[attr-defined]
        references[1]["id"] = str(references[1]["id"]).upper()  # another text of the same id
        again = await pydantic_toast.avalidate(list[note], references)  # type: ignore[valid-type]
        assert [n.external_id for n in again] == [n.external_id for n in saved]
        assert again[1].external_id is not references[1]._toast_made_id
    finally:
        await pydantic_toast.aclose_storage()


async def test_batch_reads_keep_their_timestamps_under_any_datestyle(
    postgres_database_url: str,
) -> None:
    """A read (batch or single) on a connection whose DateStyle is not ISO (set for the
    session, or set on a pooled connection after it was first used) reads each timestamp
    exactly."""
    name = f"styles{uuid4().hex}"
    created = datetime(2024, 2, 29, 23, 59, 58, 999999, tzinfo=UTC)
    records = [
        StoredRecord(name, uuid4(), b'{"n":%d}' % n, 1, created, created + timedelta(seconds=n))
        for n in range(3)
    ]
    keys = ClassKeys(name, [r.id for r in records], [str(r.id) for r in records])
    expected = [(r.created_at, r.updated_at) for r in records]

    async def each_alone() -> list[tuple[datetime, datetime]]:
        loaded = [(await backend.load_records([r.key]))[0] for r in records]
        return [(r.created_at, r.updated_at) for r in loaded if r is not None]

    engine = _engine(
        postgres_database_url, pool_size=1, connect_args={"server_settings": {"DateStyle": "SQL"}}
    )
    try:
        async with pydantic_toast.Storage() as storage:
            storage.use_engine(postgres_database_url, engine)
            backend = await storage.connected(StorageURL.parse(postgres_database_url))
            await backend.save_records(records)
            loaded = await backend.load_records(keys)
            assert [(r.created_at, r.updated_at) for r in loaded if r is not None] == expected
            assert await each_alone() == expected
            async with engine.connect() as connection:  # the pool's one connection, reset
                await connection.exec_driver_sql("SET DateStyle = 'ISO'")
            loaded = await backend.load_records(keys)  # statements of the ISO form prepared
            assert [(r.created_at, r.updated_at) for r in loaded if r is not None] == expected
            assert await each_alone() == expected
            async with engine.connect() as connection:
                await connection.exec_driver_sql("SET DateStyle = 'German'")
            loaded = await backend.load_records(keys)
            assert [(r.created_at, r.updated_at) for r in loaded if r is not None] == expected
            assert await each_alone() == expected
            for style in ("ISO", "Postgres"):  # the statement for keys of several classes
                async with engine.connect() as connection:
                    await connection.exec_driver_sql(f"SET DateStyle = '{style}'")
                loaded = await backend.load_records(list(keys))
                assert [(r.created_at, r.updated_at) for r in loaded if r is not None] == expected
    finally:
        await engine.dispose()


def test_batch_reads_probe_the_primary_key_whatever_the_class_size(
    postgres_database_url: str,
) -> None:
    """A batch read is one index probe per key, in the plan made for the chunk's own values.

    A plain join of the keys and the table let the planner hash every row of the class for
    each chunk once the class held some tens of thousands of rows (asyncpg's first five runs
    of a prepared statement on a connection are planned with its values; an unnamed statement,
    as here, always is): a batch load's server time grew with the class.
    """
    import asyncpg

    class_name = f"Plan{uuid4().hex[:8]}"

    async def plans() -> list[str]:
        connection = await asyncpg.connect(postgres_database_url)
        try:
            await connection.execute(
                "INSERT INTO external_records (class_name, id, schema_version, data, created_at,"
                " updated_at, revision) SELECT $1, gen_random_uuid(), 1,"
                " jsonb_build_object('n', n), now(), now(), 1"
                " FROM generate_series(1, 40000) AS n",
                class_name,
            )
            await connection.execute("ANALYZE external_records")
            ids = [
                row["id"]
                for row in await connection.fetch(
                    "SELECT id FROM external_records WHERE class_name = $1 LIMIT 1000", class_name
                )
            ]
            found = []
            texts = ",".join(map(str, ids))
            for statement, arguments in (
                ("select_class", (ids, class_name, 0.0)),
                ("select_many", ([class_name] * len(ids), ids, 0.0)),
                ("select_texts", (texts, class_name, 0.0)),
                ("select_class_iso", (ids, class_name, 0.0)),
                ("select_many_iso", ([class_name] * len(ids), ids, 0.0)),
                ("select_texts_iso", (texts, class_name, 0.0)),
            ):
                plan = await connection.fetchval(
                    f"EXPLAIN (FORMAT JSON) {_SQL[statement]}", *arguments
                )
                found.append(json.dumps(json.loads(plan)[0]["Plan"]))
                assert len(await connection.fetch(_SQL[statement], *arguments)) == len(ids)
            return found
        finally:
            await connection.execute(
                "DELETE FROM external_records WHERE class_name = $1", class_name
            )
            await connection.close()

    for plan in asyncio.run(plans()):
        assert '"Node Type": "Nested Loop"' in plan
        assert '"Index Name": "pk_external_records"' in plan
        assert "Hash" not in plan
        assert "Seq Scan" not in plan


async def test_a_single_load_is_one_statement_sent_straight_to_the_protocol(
    postgres_database_url: str,
) -> None:
    """A single load outside a transaction sends one statement on the pooled connection and
    runs no Python layer of asyncpg's (PreparedStatement, Connection) nor the coroutine that
    looks for a caller's transaction: their calls cost more than the rest of the backend's work.
    """
    name = f"direct{uuid4().hex[:12]}"
    url = f"{postgres_database_url}?pool_size=1"
    note = model_on(url, name="Direct")
    reference = await note(text=name).asave()
    await note.aload(reference)  # prepared on the pool's only connection
    backend = await pydantic_toast.current_storage().connected(StorageURL.parse(url))
    try:
        async with backend.backend.engine.connect() as connection:  # type: ignore[attr-defined]
            protocol = (await connection.get_raw_connection()).driver_connection._protocol
        sent = protocol.queries_count
        called: set[tuple[str, str]] = set()

        def record(frame: Any, event: str, _: Any) -> None:
            if event == "call":
                called.add((Path(frame.f_code.co_filename).name, frame.f_code.co_name))

        sys.setprofile(record)
        try:
            loaded = await note.aload(reference)
        finally:
            sys.setprofile(None)
        assert loaded.text == name  # type: ignore[attr-defined]
        assert protocol.queries_count == sent + 1
        modules = {module for module, _ in called}
        assert not modules & {"prepared_stmt.py", "connection.py", "connresource.py"}
        assert ("transaction.py", "statement_connection") not in called
    finally:
        await pydantic_toast.aclose_storage()


async def test_a_load_blocked_past_command_timeout_times_out_and_keeps_its_connection(
    postgres_database_url: str,
) -> None:
    """A single load blocked behind a lock on the table ends at command_timeout with a
    StorageTimeoutError, a cancelled one stays a CancelledError, and the same connection then
    serves the next load (asyncpg cancelled the statement on the server)."""
    import asyncpg

    timeout = 1.1
    name = f"blocked{uuid4().hex[:12]}"
    note = model_on(
        f"{postgres_database_url}?command_timeout={timeout}&pool_size=1&application_name={name}"
    )
    reference = await note(text="a").asave()
    await note.aload(reference)  # prepared on the pool's only connection
    locker = await asyncpg.connect(postgres_database_url)
    query = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
    try:
        pids = {row[0] for row in await locker.fetch(query, name)}
        for cancelled in (False, True):
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE external_records IN ACCESS EXCLUSIVE MODE")
            started = loop_time()
            load = asyncio.ensure_future(note.aload(reference))
            if cancelled:
                await asyncio.sleep(0.3)
                load.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await load
            else:
                with pytest.raises(StorageTimeoutError, match="timed out"):
                    await load
                assert timeout <= loop_time() - started < timeout + 0.8
            await transaction.rollback()
            assert (await note.aload(reference)).text == "a"  # type: ignore[attr-defined]
            assert {row[0] for row in await locker.fetch(query, name)} == pids
    finally:
        await locker.close()
        await pydantic_toast.aclose_storage()


async def test_a_load_whose_prepared_statement_was_closed_answers_on_a_fresh_connection(
    postgres_database_url: str,
) -> None:
    """A pooled connection whose prepared load statement asyncpg has closed is dropped, as
    asyncpg's PreparedStatement refuses it, and the load answers on a new connection."""
    url = f"{postgres_database_url}?pool_size=1"
    note = model_on(url)
    reference = await note(text="kept").asave()
    await note.aload(reference)  # prepared on the pool's only connection
    backend = await pydantic_toast.current_storage().connected(StorageURL.parse(url))
    try:
        async with backend.backend.engine.connect() as connection:  # type: ignore[attr-defined]
            raw = await connection.get_raw_connection()
            raw.info[_PREPARED]["select_one"]._state.mark_closed()
        assert (await note.aload(reference)).text == "kept"  # type: ignore[attr-defined]
        async with backend.backend.engine.connect() as connection:  # type: ignore[attr-defined]
            raw = await connection.get_raw_connection()
            assert not raw.info[_PREPARED]["select_one"]._state.closed
    finally:
        await pydantic_toast.aclose_storage()
