"""count() on the SQL stores reads counter rows kept exact by triggers (migration 0004).

Upgrade with data in place, every way rows come and go (single and batch writes, upserts,
deletes, a rolled-back transaction, hand-written SQL, TRUNCATE), concurrent writers, the
partitioned table, downgrade; all on a database of the test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import io
import json
import sqlite3
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from pydantic_toast._records import StoredRecord
from pydantic_toast.backends.postgresql import PostgreSQLBackend
from pydantic_toast.integrations.cli import main as toast_cli
from pydantic_toast.integrations.partition import partition_table
from tests.integration.test_postgresql import alembic

pytestmark = pytest.mark.postgresql

MIGRATION = importlib.import_module("pydantic_toast.migrations.versions.0004_record_counts")


def _records(class_name: str, count: int) -> list[StoredRecord]:
    now = datetime.now(UTC)
    return [
        StoredRecord(
            class_name=class_name,
            id=uuid4(),
            data=json.dumps({"n": n}).encode(),
            schema_version=1,
            created_at=now,
            updated_at=now,
            revision=0,
        )
        for n in range(count)
    ]


async def _sql(url: str, statement: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(statement, *args)
    finally:
        await connection.close()


async def _exact(url: str, class_name: str) -> int:
    rows = await _sql(
        url, "SELECT count(*) FROM external_records WHERE class_name = $1", class_name
    )
    return int(rows[0][0])


async def _save_and_count(backend: Any, class_name: str, records: int) -> int:
    """Save ``records`` new records of ``class_name`` through ``backend``; its count after."""
    await backend.connect()
    try:
        await backend.save_records(_records(class_name, records))
        return int(await backend.count(class_name))
    finally:
        await backend.disconnect()


class _Undo(Exception):
    """Raised inside a transaction to roll it back."""


def test_migration_counts_existing_rows_and_triggers_keep_them_exact(empty_database: str) -> None:
    """Rows stored before 0004 are counted; then every kind of write keeps the count exact."""
    url = empty_database
    assert alembic("upgrade", MIGRATION.down_revision, url=url).returncode == 0
    asyncio.run(
        _sql(
            url,
            "INSERT INTO external_records (class_name, id, schema_version, data) "
            "SELECT CASE WHEN n % 3 = 0 THEN 'Old' ELSE 'Older' END, gen_random_uuid(), 1, '{}' "
            "FROM generate_series(1, 300) AS n",
        )
    )
    upgrade = alembic("upgrade", MIGRATION.revision, url=url)
    assert upgrade.returncode == 0, upgrade.stderr
    assert alembic("upgrade", "head", url=url).returncode == 0
    check = alembic("check", url=url)
    assert check.returncode == 0, check.stderr

    async def main() -> list[tuple[int, int]]:
        backend = PostgreSQLBackend(url)
        await backend.connect()
        seen: list[tuple[int, int]] = []

        async def note(class_name: str) -> None:
            seen.append((await backend.count(class_name), await _exact(url, class_name)))

        try:
            await note("Old")
            await note("Older")
            batch = _records("New", 50)
            await backend.save_records(batch)  # one statement for 50 rows
            await backend.save_records(_records("New", 1))  # one row
            await note("New")
            again = [dataclasses.replace(r, revision=None) for r in batch[:10]]
            await backend.save_records(again)  # upserts of existing rows: no new rows
            await note("New")
            for record in batch[:7]:
                assert await backend.delete(record.id, "New")
            assert not await backend.delete(batch[0].id, "New")
            await note("New")
            connection = await asyncpg.connect(url)
            try:
                async with connection.transaction():
                    await connection.execute(
                        "DELETE FROM external_records WHERE class_name = 'New'"
                    )
                    await connection.execute(
                        "UPDATE external_records SET class_name = 'Moved' WHERE class_name = 'Old'"
                    )
                    raise _Undo
            except _Undo:
                pass  # rolled back: nothing counted
            finally:
                await connection.close()
            await note("New")
            await _sql(
                url, "UPDATE external_records SET class_name = 'Moved' WHERE class_name = 'Old'"
            )
            await note("Old")
            await note("Moved")
            await _sql(url, "TRUNCATE external_records")
            await note("Older")
            await backend.save_records(_records("Older", 3))
            await note("Older")
        finally:
            await backend.disconnect()
        return seen

    seen = asyncio.run(main())
    assert seen == [
        (100, 100),
        (200, 200),
        (51, 51),
        (51, 51),
        (44, 44),
        (44, 44),
        (0, 0),
        (100, 100),
        (0, 0),
        (3, 3),
    ]
    downgrade = alembic("downgrade", MIGRATION.down_revision, url=url)
    assert downgrade.returncode == 0, downgrade.stderr
    left = asyncio.run(
        _sql(
            url,
            "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'external_records_count%'),"
            " to_regclass('external_record_counts') IS NULL",
        )
    )
    assert tuple(left[0]) == (0, True)
    assert asyncio.run(_exact(url, "Older")) == 3  # the records themselves stay


def test_concurrent_writers_keep_the_count_exact(postgres_database_url: str) -> None:
    """20 writers inserting and deleting one class at once: the count is the rows' number."""
    class_name = f"Busy{uuid4().hex[:8]}"

    async def main() -> tuple[int, int]:
        backend = PostgreSQLBackend(f"{postgres_database_url}?pool_size=20")
        await backend.connect()

        async def writer() -> None:
            for _ in range(10):
                records = _records(class_name, 3)
                await backend.save_records(records[:1])
                await backend.save_records(records[1:])
                await backend.delete(records[1].id, class_name)

        try:
            await asyncio.gather(*(writer() for _ in range(20)))
            return await backend.count(class_name), await _exact(postgres_database_url, class_name)
        finally:
            await _sql(
                postgres_database_url,
                "DELETE FROM external_records WHERE class_name = $1",
                class_name,
            )
            await backend.disconnect()

    assert asyncio.run(main()) == (400, 400)


def _failed_check(url: str) -> str:
    """What ``pydantic-toast check URL`` prints, having exited 3 (count() is off)."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert toast_cli(["check", url]) == 3
    return out.getvalue()


def test_partitioning_keeps_the_counts(empty_database: str) -> None:
    """pydantic-toast partition copies the rows without counting them twice, and re-creates
    the triggers on the partitioned table."""
    url = empty_database
    assert alembic("upgrade", "head", url=url).returncode == 0

    async def main() -> list[int]:
        backend = PostgreSQLBackend(url)
        await backend.connect()
        try:
            await backend.save_records(_records("Part", 40))
            before = await backend.count("Part")
            await backend.disconnect()
            assert await partition_table(url, 4) == 40
            assert await asyncio.to_thread(toast_cli, ["check", url]) == 0  # triggers found
            await backend.connect()
            after = await backend.count("Part")
            records = _records("Part", 5)
            await backend.save_records(records)
            await backend.delete(records[0].id, "Part")
            return [before, after, await backend.count("Part"), await _exact(url, "Part")]
        finally:
            await backend.disconnect()

    assert asyncio.run(main()) == [40, 40, 44, 44]
    # The row trigger's clone on one partition, disabled alone: check names that partition.
    asyncio.run(
        _sql(url, "ALTER TABLE external_records_p1 DISABLE TRIGGER external_records_count_move")
    )
    report = _failed_check(url)
    assert "ALTER TABLE external_records_p1 ENABLE TRIGGER external_records_count_move" in report
    # Disabled on the partitioned table: one statement enables it and every clone below.
    asyncio.run(
        _sql(url, "ALTER TABLE external_records DISABLE TRIGGER external_records_count_move")
    )
    report = _failed_check(url)
    assert report.count("ENABLE TRIGGER") == 1, report
    assert "ALTER TABLE external_records ENABLE TRIGGER external_records_count_move" in report
    asyncio.run(
        _sql(url, "ALTER TABLE external_records ENABLE TRIGGER external_records_count_move")
    )
    assert toast_cli(["check", url]) == 0
    # A partition split into partitions of its own: the clone of a clone is checked too.
    for statement in (
        "ALTER TABLE external_records DETACH PARTITION external_records_p2",
        "CREATE TABLE external_records_split (LIKE external_records_p2) PARTITION BY HASH (id)",
        "CREATE TABLE external_records_split_0 PARTITION OF external_records_split "
        "FOR VALUES WITH (MODULUS 2, REMAINDER 0)",
        "CREATE TABLE external_records_split_1 PARTITION OF external_records_split "
        "FOR VALUES WITH (MODULUS 2, REMAINDER 1)",
        "INSERT INTO external_records_split SELECT * FROM external_records_p2",
        "DROP TABLE external_records_p2",
        "ALTER TABLE external_records ATTACH PARTITION external_records_split "
        "FOR VALUES WITH (MODULUS 4, REMAINDER 2)",
        "ALTER TABLE external_records_split_1 DISABLE TRIGGER external_records_count_move",
    ):
        asyncio.run(_sql(url, statement))
    report = _failed_check(url)
    assert report.count("ENABLE TRIGGER") == 1, report
    assert (
        "ALTER TABLE external_records_split_1 ENABLE TRIGGER external_records_count_move" in report
    )


@pytest.mark.sqlite
def test_sqlite_counts_with_triggers_too(sqlite_template: Path, tmp_path: Path) -> None:
    """The same counter table on SQLite, one row per class, kept by row triggers."""
    path = tmp_path / "counts.db"
    path.write_bytes(sqlite_template.read_bytes())
    from pydantic_toast.backends.sqlite import SQLiteBackend

    async def main() -> int:
        backend = SQLiteBackend(f"sqlite:///{path}")
        await backend.connect()
        try:
            records = _records("Lite", 12)
            await backend.save_records(records)
            await backend.save_records([dataclasses.replace(r, revision=None) for r in records[:4]])
            await backend.delete(records[0].id, "Lite")
            return await backend.count("Lite")
        finally:
            await backend.disconnect()

    assert asyncio.run(main()) == 11
    with contextlib.closing(sqlite3.connect(path)) as connection:  # 'with' alone never closes
        exact = connection.execute(
            "SELECT count(*) FROM external_records WHERE class_name = 'Lite'"
        ).fetchone()
        rows = connection.execute("SELECT shard, records FROM external_record_counts").fetchall()
    assert exact == (11,)
    assert rows == [(0, 11)]


def test_check_names_a_disabled_count_trigger_and_recount_repairs_the_counts(
    empty_database: str,
) -> None:
    """Rows written while a count trigger is disabled are not counted; check says which
    trigger and how to fix it (exit 3); once enabled again, recount makes count() exact."""
    url = empty_database
    assert toast_cli(["migrate", url]) == 0
    assert toast_cli(["check", url]) == 0

    def write(records: int) -> int:
        return asyncio.run(_save_and_count(PostgreSQLBackend(url), "Off", records))

    assert write(3) == 3
    asyncio.run(
        _sql(url, "ALTER TABLE external_records DISABLE TRIGGER external_records_count_insert")
    )
    assert write(4) == 3  # the 4 rows are not counted

    report = _failed_check(url)
    assert "count() is off" in report
    assert "trigger external_records_count_insert is disabled" in report
    assert "ENABLE TRIGGER" in report
    assert "pydantic-toast recount" in report
    assert "external_records_count_delete" not in report

    asyncio.run(
        _sql(url, "ALTER TABLE external_records ENABLE TRIGGER external_records_count_insert")
    )
    assert toast_cli(["check", url]) == 0  # check cannot see the rows missed meanwhile
    assert write(0) == 3
    with redirect_stdout(io.StringIO()):
        assert toast_cli(["recount", url]) == 0
    assert write(1) == 8 == asyncio.run(_exact(url, "Off"))


@pytest.mark.sqlite
def test_check_names_a_missing_count_trigger_on_sqlite(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """A SQLite file whose count trigger was dropped: check exits 3 naming it as missing, and
    recount counts the rows written without it."""
    from pydantic_toast.backends.sqlite import SQLiteBackend

    path = tmp_path / "missing.db"
    path.write_bytes(sqlite_template.read_bytes())
    url = f"sqlite:///{path}"
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("DROP TRIGGER external_records_count_insert")

    def write(records: int) -> int:
        return asyncio.run(_save_and_count(SQLiteBackend(url), "Gone", records))

    assert write(5) == 0
    assert "trigger external_records_count_insert is missing" in _failed_check(url)
    with redirect_stdout(io.StringIO()):
        assert toast_cli(["recount", url]) == 0
    assert write(0) == 5


@pytest.mark.parametrize("operation", ["recount", "partition"])
def test_a_repeatable_read_default_does_not_hide_the_writes_waited_for(
    empty_database: str, operation: str
) -> None:
    """With the database's default_transaction_isolation at 'repeatable read', recount and
    partition took their snapshot at their first statement, before the table lock they then
    waited for: a write committed meanwhile was missing from the copy (partition lost the row)
    or made the recount fail ('could not serialize access'). They run READ COMMITTED now."""
    url = empty_database
    assert toast_cli(["migrate", url]) == 0
    database = url.rsplit("/", 1)[1].split("?")[0]
    asyncio.run(
        _sql(
            url,
            f"ALTER DATABASE \"{database}\" SET default_transaction_isolation = 'repeatable read'",
        )
    )
    insert = "INSERT INTO external_records (class_name, id, data) VALUES ('Waited', $1, '{}')"

    async def main() -> tuple[int, int]:
        writer, watcher = await asyncpg.connect(url), await asyncpg.connect(url)
        try:
            await writer.execute(insert, uuid4())  # its counter row exists
            held = writer.transaction()
            await held.start()
            await writer.execute(insert, uuid4())  # holds a lock the operation waits for
            if operation == "recount":
                running = asyncio.create_task(asyncio.to_thread(toast_cli, ["recount", url]))
            else:
                running = asyncio.create_task(partition_table(url, 2))
            for _ in range(200):  # until the operation waits for the table's lock
                waiting = await watcher.fetchval(  # (a transaction sees one snapshot of it)
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                    "AND wait_event_type = 'Lock'",
                    database,
                )
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting, "the operation never waited for the writer"
            await held.commit()
            result = await running
            if operation == "recount":
                assert result == 0
        finally:
            await writer.close()
            await watcher.close()
        backend = PostgreSQLBackend(url)
        await backend.connect()
        try:
            return await backend.count("Waited"), await _exact(url, "Waited")
        finally:
            await backend.disconnect()

    assert asyncio.run(main()) == (2, 2)
