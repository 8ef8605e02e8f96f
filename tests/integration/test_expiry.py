"""ttl on PostgreSQL and SQLite: the expires_at migration, invisible expired rows, the purge."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import (
    ConcurrencyError,
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageValidationError,
    StoredRecord,
    current_storage,
)
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.base import Capability
from pydantic_toast.integrations.cli import main as toast_cli
from pydantic_toast.testing import isolated_storage
from tests.integration.conftest import BACKENDS, throwaway_database
from tests.integration.test_postgresql import alembic

_MIGRATION = importlib.import_module("pydantic_toast.migrations.versions.0005_record_expiry")


def _note(url: str, *, ttl: float | None = None) -> type[ExternalBaseModel]:
    config = ExternalConfigDict(storage=url, external_name=f"Note{uuid4().hex}")
    if ttl is not None:
        config["ttl"] = ttl
    return type(
        "Note", (ExternalBaseModel,), {"__annotations__": {"text": str}, "model_config": config}
    )


def _rows(url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one SQL statement on the database behind ``url`` with its own driver."""
    if url.startswith("sqlite"):
        # closing(): a sqlite3 connection's own 'with' commits but never closes (3.13 warns).
        path = url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as connection, connection:
            return [tuple(row) for row in connection.execute(statement.replace("$1", "?"), args)]
    import asyncpg

    async def run() -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await connection.fetch(statement, *args)]
        finally:
            await connection.close()

    return asyncio.run(run())


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
    ]
)
def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own, not migrated (PostgreSQL, or a SQLite file)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'expiry.db'}"
        pydantic_toast.close_storage()
        return
    admin: str = request.getfixturevalue("postgres_admin_url")
    with throwaway_database(admin, "toast_expiry_") as url:
        yield url


@pytest.fixture
def migrated_url(blank_url: str) -> str:
    """The test's own database, migrated to head."""
    assert toast_cli(["migrate", blank_url]) == 0
    return blank_url


def test_expiry_migration_upgrades_rows_in_place_and_downgrades(blank_url: str) -> None:
    """Rows from before expires_at stay permanent and load; alembic check is clean; down works."""
    assert alembic("upgrade", _MIGRATION.down_revision, url=blank_url).returncode == 0
    note = _note(blank_url)
    id = uuid4()
    id_text = str(id) if blank_url.startswith("postgresql") else id.hex  # SQLite: Uuid as hex
    _rows(
        blank_url,
        "INSERT INTO external_records (class_name, id, schema_version, data) "
        f"VALUES ('{note.model_config['external_name']}', '{id_text}', 1, '{{\"text\": \"old\"}}')",
    )
    upgrade = alembic("upgrade", _MIGRATION.revision, url=blank_url)
    assert upgrade.returncode == 0, upgrade.stderr
    assert alembic("upgrade", "head", url=blank_url).returncode == 0  # check compares to head
    check = alembic("check", url=blank_url)
    assert check.returncode == 0, check.stderr
    assert _rows(blank_url, "SELECT expires_at FROM external_records") == [(None,)]
    reference = {"class_name": note.model_config["external_name"], "id": str(id)}
    loaded = note.model_validate(reference)
    assert loaded.text == "old"  # type: ignore[attr-defined]
    expiring = _note(blank_url, ttl=60)
    expiring(text="soon").model_dump()
    expiries = _rows(
        blank_url, "SELECT expires_at FROM external_records WHERE expires_at IS NOT NULL"
    )
    assert len(expiries) == 1
    pydantic_toast.close_storage()
    downgrade = alembic("downgrade", _MIGRATION.down_revision, url=blank_url)
    assert downgrade.returncode == 0, downgrade.stderr
    assert _rows(blank_url, "SELECT count(*) FROM external_records") == [(2,)]
    with pytest.raises(Exception, match="expires_at"):
        _rows(blank_url, "SELECT expires_at FROM external_records")


def test_expired_rows_stay_invisible_until_purged_in_batches(
    migrated_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Loads of expired rows write nothing; purge deletes them in batches, permanent rows stay."""
    short = _note(migrated_url, ttl=0.3)
    lasting = _note(migrated_url)
    references = [short(text=f"s{i}").model_dump() for i in range(25)]
    kept = lasting(text="kept").model_dump()
    time.sleep(0.5)
    with pytest.raises(RecordNotFoundError):
        short.model_validate(references[0])
    assert pydantic_toast.count(short) == 0
    assert pydantic_toast.page(short).items == []
    # Reading never writes: the expired rows are all still there.
    assert _rows(migrated_url, "SELECT count(*) FROM external_records") == [(26,)]
    batches: list[int] = []
    assert pydantic_toast.purge_expired(migrated_url, batch_size=10, progress=batches.append) == 25
    assert batches == [10, 20, 25]
    assert _rows(migrated_url, "SELECT count(*) FROM external_records") == [(1,)]
    assert lasting.model_validate(kept).text == "kept"  # type: ignore[attr-defined]
    short(text="again").model_dump()
    time.sleep(0.5)
    pydantic_toast.close_storage()
    assert toast_cli(["purge", migrated_url, "--batch-size", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.endswith(": purged 1 expired records\n")
    assert captured.err == ""  # printed once: no progress line outside a terminal
    assert _rows(migrated_url, "SELECT count(*) FROM external_records") == [(1,)]


@pytest.mark.postgresql
async def test_a_purge_keeps_a_record_a_concurrent_write_renewed(
    postgres_database_url: str,
) -> None:
    """A purge that picked an expired row, then waited for its lock while a forced write
    renewed the record, leaves the record: it deleted the renewed record, after the write had
    committed and reported success."""
    from sqlalchemy.ext.asyncio import create_async_engine

    beat = _note(postgres_database_url, ttl=1)
    engine = create_async_engine(
        postgres_database_url.replace("postgresql:", "postgresql+asyncpg:")
    )
    try:
        instance = beat(text="first")
        reference = await instance.asave()
        await asyncio.sleep(1.2)  # expired; the row stays until purged
        async with engine.begin() as connection:
            async with pydantic_toast.transaction(connection):
                instance.text = "renewed"  # type: ignore[attr-defined]
                await instance.asave(force=True)  # its row locked until the commit
            purge = asyncio.create_task(
                asyncio.to_thread(pydantic_toast.purge_expired, postgres_database_url)
            )
            await asyncio.sleep(0.3)  # the purge found the expired row and waits for its lock
            assert not purge.done()
        await purge  # (the session's database may hold other tests' expired rows)
        assert (await beat.aload(reference)).text == "renewed"  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
        await pydantic_toast.aclose_storage()


@pytest.mark.parametrize("storage_url", BACKENDS, indirect=True)
def test_saving_an_expired_record_says_it_may_have_expired(storage_url: str) -> None:
    """A revision-checked save of a record whose ttl ran out: a conflict that names the ttl,
    not one that says another writer deleted it."""
    note = _note(storage_url, ttl=0.3)
    instance = note(text="first")
    instance.model_dump()
    time.sleep(0.6)
    instance.text = "second"  # type: ignore[attr-defined]
    with pytest.raises(ConcurrencyError) as info:
        instance.model_dump()
    message = str(info.value)
    assert "was deleted or expired (a ttl of 0.3 s may have passed)" in message
    assert "expected revision 1" in message
    assert "save it with force=True to store it again" in message
    assert "another writer" not in message
    assert info.value.current is None
    assert info.value.ttl == 0.3


@pytest.mark.parametrize("storage_url", BACKENDS, indirect=True)
def test_a_ttl_under_a_millisecond_still_expires(storage_url: str) -> None:
    """A ttl below Redis' millisecond (0.0004 s) expires like any other; Redis rounded it to 0
    ms, which its save script reads as "never expires", and the record stayed for good."""
    note = _note(storage_url, ttl=0.0004)
    reference = note(text="brief").model_dump()
    time.sleep(0.05)
    with pytest.raises(RecordNotFoundError):
        note.model_validate(reference)


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_purge_progress_on_a_terminal_is_erased_once_done(
    migrated_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the running total is shown, then erased: the result shows once, on stdout
    (it was left on stderr, so the purge printed its result twice)."""
    short = _note(migrated_url, ttl=0.1)
    for i in range(3):
        short(text=f"s{i}").model_dump()
    time.sleep(0.3)
    pydantic_toast.close_storage()
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert toast_cli(["purge", migrated_url, "--batch-size", "2"]) == 0
    assert capsys.readouterr().out.endswith(": purged 3 expired records\n")
    shown = terminal.getvalue()
    assert "\rpurged 2 expired records\rpurged 3 expired records\r" in shown
    # what the terminal keeps: the text after the last carriage return, over a blanked line
    assert shown.rsplit("\r", 2)[1:] == [" " * len("purged 3 expired records"), ""]


def test_purge_refuses_bad_batch_sizes_and_redis(capsys: pytest.CaptureFixture[str]) -> None:
    """A batch size out of range, or a store that expires by itself, is a usage error (2)."""
    assert toast_cli(["purge", "sqlite:///x.db", "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert toast_cli(["purge", "redis://127.0.0.1:6379/0"]) == 2
    with pytest.raises(pydantic_toast.StorageConfigurationError, match="batch_size"):
        pydantic_toast.purge_expired("memory://", batch_size=0)
    assert pydantic_toast.purge_expired("memory://") == 0  # memory:// expires records itself


@pytest.mark.parametrize("storage_url", BACKENDS, indirect=True)
def test_an_expiry_past_the_last_storable_time_is_refused_before_writing(
    storage_url: str,
) -> None:
    """A record whose updated_at plus ttl falls past 9999-12-31 23:59:59.999998 UTC is refused
    with StorageValidationError on every store, nothing written (the SQL stores failed with a
    bare OverflowError, Redis kept it); one whose expiry fits is stored."""
    end = datetime.max.replace(tzinfo=UTC) - timedelta(microseconds=1)
    day = 86400.0

    def record(updated: datetime, ttl: float) -> StoredRecord:
        return StoredRecord(f"Late{uuid4().hex}", uuid4(), b"{}", 1, updated, updated, ttl=ttl)

    late, fits = record(end - timedelta(days=1), 2 * day), record(end - timedelta(days=2), day)

    async def main() -> tuple[list[StoredRecord | None], list[StoredRecord | None]]:
        with isolated_storage() as storage:
            backend = await storage.connected(StorageURL.parse(storage_url))
            try:
                with pytest.raises(StorageValidationError, match="its expiry"):
                    await backend.save_records([late])
                await backend.save_records([fits])
                return await backend.load_records([late.key]), await backend.load_records(
                    [fits.key]
                )
            finally:
                await storage.aclose()

    _skip_unless_expiring(storage_url)
    refused, stored = asyncio.run(main())
    assert refused == [None]
    assert stored[0] is not None
    assert stored[0].updated_at == fits.updated_at


@pytest.mark.parametrize("storage_url", BACKENDS, indirect=True)
@pytest.mark.parametrize("ttl", [0.0, -1.0, -1e12])
def test_a_ttl_not_above_zero_is_refused_before_writing(storage_url: str, ttl: float) -> None:
    """A hand-built record with a ttl of 0 or less is refused on every expiring store, nothing
    written: the SQL stores and memory:// took it as expired at once (or failed with a bare
    OverflowError), Redis kept it for ever (ttl 0) or loaded it (ttl below 0)."""
    now = datetime.now(UTC)
    record = StoredRecord(f"Gone{uuid4().hex}", uuid4(), b"{}", 1, now, now, ttl=ttl)

    async def main() -> list[StoredRecord | None]:
        with isolated_storage() as storage:
            backend = await storage.connected(StorageURL.parse(storage_url))
            try:
                with pytest.raises(StorageValidationError, match="is not above 0"):
                    await backend.save_records([record])
                return await backend.load_records([record.key])
            finally:
                await storage.aclose()

    _skip_unless_expiring(storage_url)
    assert asyncio.run(main()) == [None]


def _skip_unless_expiring(storage_url: str) -> None:
    """Skip the test on a backend that does not expire records (no Capability.TTL)."""
    scheme = storage_url.split(":")[0]
    if Capability.TTL not in current_storage().registry.class_for(scheme).capabilities:
        pytest.skip("the backend does not expire records")
