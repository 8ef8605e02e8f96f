"""Real servers for the integration tests, each behaviour run on every backend that claims it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast.integrations.cli import main as toast_cli
from tests import servers


def _admin(url: str, *statements: str) -> None:
    """Run statements on the server's maintenance database (autocommit)."""
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def _with_database(url: str, database: str) -> str:
    head, _, _ = url.rpartition("/")
    return f"{head}/{database}"


@contextmanager
def throwaway_database(admin_url: str, prefix: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database named ``prefix`` and random hex digits.

    On exit the library's storage is closed (its pools hold connections to the database) and
    the database dropped, connections and all.
    """
    database = f"{prefix}{uuid4().hex[:12]}"
    _admin(admin_url, f'CREATE DATABASE "{database}"')
    try:
        yield _with_database(admin_url, database)
    finally:
        pydantic_toast.close_storage()
        _admin(admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """An admin URL of the session's PostgreSQL server."""
    with servers.postgres_server() as url:
        yield url


@pytest.fixture
def empty_database(postgres_admin_url: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own, not migrated; dropped afterwards."""
    with throwaway_database(postgres_admin_url, "toast_empty_") as url:
        yield url


@pytest.fixture(scope="session")
def postgres_database_url(postgres_admin_url: str) -> Iterator[str]:
    """A throwaway database of this session, migrated with Alembic, dropped afterwards."""
    with throwaway_database(postgres_admin_url, "toast_test_") as url:
        assert toast_cli(["migrate", url]) == 0
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file to copy for each test."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    assert toast_cli(["migrate", f"sqlite:///{path}"]) == 0
    return path


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    """A Redis URL for the session (a local redis-server when none is given)."""
    url = servers.os.environ.get("TOAST_TEST_REDIS_URL")
    if url:
        yield url
        return
    try:
        server = servers.TempRedis()
    except FileNotFoundError:
        servers.missing_server("Redis", "TOAST_TEST_REDIS_URL")
        return
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[servers.TempSeaweedFS]:
    """A SeaweedFS server with an S3 gateway for the session."""
    try:
        server = servers.TempSeaweedFS()
    except FileNotFoundError:
        servers.missing_server("SeaweedFS", "(none: install the dev dependencies)")
        return
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bucket(seaweedfs: servers.TempSeaweedFS) -> str:
    """A bucket of this session."""
    name = f"toast-test-{uuid4().hex[:12]}"

    async def create() -> None:
        async with seaweedfs.admin_client() as client:
            await client.create_bucket(Bucket=name)

    asyncio.run(create())
    return name


@pytest.fixture
def s3_url(seaweedfs: servers.TempSeaweedFS, bucket: str) -> Iterator[str]:
    """An s3:// URL with a key prefix of this test's own."""
    yield seaweedfs.url(bucket, f"t{uuid4().hex[:12]}")
    pydantic_toast.close_storage()


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite", marks=pytest.mark.sqlite),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]
S3 = pytest.param("s3", id="s3", marks=pytest.mark.s3)


@pytest.fixture(params=[*BACKENDS, S3])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A storage URL of this test's own, on each backend in turn (S3: on SeaweedFS)."""
    kind = request.param
    tag = uuid4().hex[:12]
    if kind == "s3":
        yield request.getfixturevalue("s3_url")
        return
    if kind == "memory":
        url = f"memory://{tag}"
    elif kind == "sqlite":
        path = tmp_path / "toast.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    elif kind == "postgresql":
        base = request.getfixturevalue("postgres_database_url")
        url = f"{base}?application_name=t{tag}"
    else:
        base = request.getfixturevalue("redis_base_url")
        url = f"{base}?prefix=toast_test_{tag}"
    yield url
    pydantic_toast.close_storage()
    if kind == "redis":
        _delete_redis_prefix(url, f"toast_test_{tag}")


@pytest.fixture(params=[*BACKENDS, S3])
def own_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A storage URL, on each backend in turn, of a store that holds nothing but this test's
    records (PostgreSQL: a migrated database of its own, not the session's shared one), for
    checks over every class a store holds."""
    kind, tag = request.param, uuid4().hex[:12]
    if kind == "s3":
        yield request.getfixturevalue("s3_url")
        return
    if kind == "postgresql":
        admin = request.getfixturevalue("postgres_admin_url")
        with throwaway_database(admin, "toast_own_") as url:
            assert toast_cli(["migrate", url]) == 0
            yield url
        return
    if kind == "memory":
        yield f"memory://{tag}"
    elif kind == "sqlite":
        path = tmp_path / "own.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        url = f"{request.getfixturevalue('redis_base_url')}?prefix=toast_own_{tag}"
        yield url
        pydantic_toast.close_storage()
        _delete_redis_prefix(url, f"toast_own_{tag}")
        return
    pydantic_toast.close_storage()


def _delete_redis_prefix(url: str, prefix: str) -> None:
    _delete_redis_keys(url, f"{prefix}:*")


def _delete_redis_keys(url: str, pattern: str) -> None:
    """Delete the keys matching ``pattern`` (a SCAN MATCH pattern) on the server of ``url``."""
    import redis

    client = redis.Redis.from_url(url.split("?")[0])
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@dataclass(frozen=True)
class Served:
    """An app under a real uvicorn process, on its own migrated PostgreSQL database.

    Attributes:
        base: Its base URL (``http://127.0.0.1:<port>``).
        database_url: The database it stores to.
        log: The file holding the server's output (uvicorn's and the library's log lines).
    """

    base: str
    database_url: str
    log: Path

    def log_text(self) -> str:
        """What the server has logged so far."""
        return self.log.read_text(errors="replace")


def _serve(app: str, admin_url: str, directory: Path) -> Iterator[Served]:
    """``app`` under uvicorn (a subprocess on a free port) on a throwaway, migrated database."""
    with throwaway_database(admin_url, "toast_http_") as url:
        assert toast_cli(["migrate", url]) == 0
        port = servers.free_port()
        log = directory / "server.log"
        process = servers.start_todo_service(url, port, app=app, log=log)
        try:
            yield Served(f"http://127.0.0.1:{port}", url, log)
        finally:
            servers.stop_todo_service(process)


@pytest.fixture(scope="module")
def todo_http(
    postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The todo service (examples/todo_api) under real uvicorn and PostgreSQL."""
    yield from _serve(
        "examples.todo_api.app:app", postgres_admin_url, tmp_path_factory.mktemp("todo-http")
    )


@pytest.fixture(scope="module")
def shop_http(
    postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The test shop (tests/integration/fastapi_shop.py) under real uvicorn and PostgreSQL."""
    yield from _serve(
        "tests.integration.fastapi_shop:app", postgres_admin_url, tmp_path_factory.mktemp("shop")
    )
