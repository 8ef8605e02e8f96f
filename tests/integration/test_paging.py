"""Keyset pages on the real servers: one round trip each, cursors that outlive their record.

The round trips are counted with thin subclasses of the real backends that count the calls
into their driver (one statement, one Redis command or script call each): no server is mocked.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
import redis.asyncio as aioredis

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, InvalidReferenceError, PageCursor
from pydantic_toast._records import StoredRecord
from pydantic_toast.backends.postgresql import _SQL, PostgreSQLBackend
from pydantic_toast.backends.redis import RedisBackend
from pydantic_toast.backends.sqlite import SQLiteBackend


class CountingPostgreSQL(PostgreSQLBackend):
    """PostgreSQL, counting the statements sent."""

    calls = 0

    async def _statement(self, kind: Any, name: str, *args: Any) -> Any:
        self.calls += 1
        return await super()._statement(kind, name, *args)


class CountingSQLite(SQLiteBackend):
    """SQLite, counting the statements run (one per ``_run``)."""

    calls = 0

    async def _run(self, operation: Any) -> Any:
        self.calls += 1
        return await super()._run(operation)


class CountingRedis(RedisBackend):
    """Redis, counting the commands and script calls sent."""

    calls = 0

    async def _call(self, command: Any) -> Any:
        self.calls += 1
        return await super()._call(command)


_COUNTING = {"sqlite": CountingSQLite, "postgresql": CountingPostgreSQL, "redis": CountingRedis}


def _records(class_name: str, count: int, *, ttl: float | None = None) -> list[StoredRecord]:
    base = datetime(2024, 5, 1, tzinfo=UTC)
    return [
        StoredRecord(
            class_name=class_name,
            id=uuid4(),
            data=json.dumps({"n": n}).encode(),
            schema_version=1,
            created_at=base + timedelta(seconds=n // 3),  # ties of three
            updated_at=base,
            ttl=ttl,
        )
        for n in range(count)
    ]


@pytest.mark.parametrize(
    "storage_url",
    [
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
    indirect=True,
)
def test_each_page_is_one_round_trip(storage_url: str) -> None:
    """Paging 40 records by 7: six pages, six statements or script calls, nothing else."""
    backend = _COUNTING[storage_url.split(":")[0]](storage_url)
    records = _records("Paged", 40)

    async def main() -> tuple[list[UUID], list[int]]:
        await backend.connect()
        try:
            await backend.save_records(records)
            seen: list[UUID] = []
            calls: list[int] = []
            after: PageCursor | None = None
            while True:
                backend.calls = 0
                page = await backend.list_records("Paged", limit=7, after=after)
                calls.append(backend.calls)
                seen += [record.id for record in page]
                if len(page) < 7:
                    return seen, calls
                after = PageCursor.of(page[-1])
        finally:
            await backend.disconnect()

    seen, calls = asyncio.run(main())
    newest_first = sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)
    assert seen == [record.id for record in newest_first]
    assert calls == [1] * 6


@pytest.mark.redis
@pytest.mark.parametrize("storage_url", ["redis"], indirect=True)
def test_redis_pages_skip_expired_records_without_writing(storage_url: str) -> None:
    """Expired entries are skipped by the page script and left in the index (reads never write)."""
    backend = CountingRedis(storage_url)
    lasting = _records("Expiring", 6)
    fleeting = _records("Expiring", 6, ttl=0.05)

    async def main() -> tuple[int, list[UUID], int, int]:
        await backend.connect()
        try:
            await backend.save_records([*lasting, *fleeting])
            await asyncio.sleep(0.2)
            client = aioredis.Redis.from_url(storage_url.split("?")[0])
            try:
                index = backend.index_key("Expiring")
                before = await client.zcard(index)
                page = await backend.list_records("Expiring", limit=5)
                page += await backend.list_records(
                    "Expiring", limit=5, after=PageCursor.of(page[-1])
                )
                after = await client.zcard(index)
            finally:
                await client.aclose()
            return before, [record.id for record in page], after, await backend.count("Expiring")
        finally:
            await backend.disconnect()

    before, seen, after, count = asyncio.run(main())
    assert before == after == 12
    assert sorted(seen) == sorted(record.id for record in lasting)
    assert count == 6


def _job_model(url: str) -> Any:
    class PagedJob(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=url, external_name="PagingJob")
        n: int

    return PagedJob


@pytest.mark.usefixtures("blocking_calls_allowed")
async def test_process_delete_next_page_visits_every_record(storage_url: str) -> None:
    """A worker that deletes each page before asking for the next sees every record once."""
    job = _job_model(storage_url)
    for n in range(23):
        await job(n=n).asave()
    seen: list[int] = []
    after: str | None = None
    while True:
        page = await pydantic_toast.apage(job, limit=5, after=after)
        seen += [item.n for item in page.items]
        for item in page.items:
            await pydantic_toast.adelete(job, item.external_id)  # type: ignore[arg-type]
        if page.next_after is None:
            break
        assert len(page.next_after) == 34
        after = page.next_after
    assert seen == list(range(22, -1, -1))
    assert await pydantic_toast.acount(job) == 0


async def test_a_page_iterates_over_its_items(storage_url: str) -> None:
    """for item in page, len(page) and truth follow page.items, on every backend."""
    job = _job_model(storage_url)
    for n in range(3):
        await job(n=n).asave()
    page = await pydantic_toast.apage(job, limit=2)
    assert [item.n for item in page] == [item.n for item in page.items]
    assert len(page) == 2
    assert page
    assert page.items[0] in page
    rest = await pydantic_toast.apage(job, limit=2, after=page.next_after)
    assert len(rest) == 1
    assert rest.next_after is None
    assert sorted(item.n for item in [*page, *rest]) == [0, 1, 2]
    for item in [*page, *rest]:
        await pydantic_toast.adelete(job, item)
    empty = await pydantic_toast.apage(job)
    assert not empty
    assert len(empty) == 0
    assert list(empty) == []


async def test_a_record_id_is_not_a_cursor(storage_url: str) -> None:
    """after=<uuid> (the old cursor) and garbage are refused with the fix, before any I/O."""
    job = _job_model(storage_url)
    with pytest.raises(InvalidReferenceError, match="is a record id, not a page cursor: pass"):
        await pydantic_toast.apage(job, after=str(uuid4()))
    with pytest.raises(InvalidReferenceError, match="not a page cursor: pass the next_after"):
        await pydantic_toast.apage(job, after="x" * 34)


@pytest.mark.postgresql
def test_postgresql_page_query_walks_the_index_backwards(postgres_database_url: str) -> None:
    """EXPLAIN: the page query is a backward scan of (class_name, created_at, id), no sort."""
    import asyncpg

    class_name = f"Explain{uuid4().hex[:8]}"

    async def main() -> tuple[dict[str, Any], float]:
        connection = await asyncpg.connect(postgres_database_url)
        try:
            await connection.execute(
                "INSERT INTO external_records (class_name, id, schema_version, data, created_at,"
                " updated_at, revision) SELECT $1, gen_random_uuid(), 1, '{}'::jsonb,"
                " timestamptz '2024-01-01' + n * interval '1 second', now(), 1"
                " FROM generate_series(1, 50000) AS n",
                class_name,
            )
            await connection.execute("ANALYZE external_records")
            cursor = datetime(2024, 1, 1, 5, tzinfo=UTC)
            # class name, now (expired rows are left out), the cursor (created_at, id), limit
            arguments = (class_name, datetime.now(UTC), cursor, uuid4(), 50)
            plan = await connection.fetchval(
                f"EXPLAIN (FORMAT JSON) {_SQL['page_after']}", *arguments
            )
            started = time.perf_counter()
            rows = await connection.fetch(_SQL["page_after"], *arguments)
            elapsed = time.perf_counter() - started
            assert len(rows) == 50
            return json.loads(plan)[0]["Plan"], elapsed
        finally:
            await connection.execute(
                "DELETE FROM external_records WHERE class_name = $1", class_name
            )
            await connection.close()

    plan, elapsed = asyncio.run(main())
    assert plan["Node Type"] == "Limit"
    (scan,) = plan["Plans"]
    assert scan["Node Type"] in ("Index Scan", "Index Only Scan")
    assert scan["Scan Direction"] == "Backward"
    assert scan["Index Name"] == "ix_external_records_class_name_created_at_id"
    assert elapsed < 1.0
