"""Batches larger than a store's batch_size: split into several server calls, revisions kept.

PostgreSQL runs the chunks in one transaction (all or nothing). Redis checks the whole batch
first, then writes chunk by chunk (each one script): a conflict found by the check writes
nothing; one that appears between the check and a later chunk leaves the earlier chunks
written, and their models know it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
import redis

import pydantic_toast
from pydantic_toast import (
    ConcurrencyError,
    ExternalBaseModel,
    ExternalConfigDict,
    StorageConfigurationError,
    StorageValidationError,
    StoredDataError,
)
from pydantic_toast._records import StoredRecord
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.base import batch_spans
from pydantic_toast.backends.postgresql import _CHUNK_BYTES, _RUN_BYTES, _runs
from pydantic_toast.backends.postgresql_staging import STAGE_ABOVE
from pydantic_toast.runtime.storage import current_storage
from pydantic_toast.testing import isolated_storage


def model_on(url: str) -> Any:
    return type(
        "Item",
        (ExternalBaseModel,),
        {
            "__annotations__": {"n": int},
            "model_config": ExternalConfigDict(storage=url, external_name=f"Item{uuid4().hex[:8]}"),
        },
    )


@pytest.fixture
def redis_url(redis_base_url: str) -> Iterator[str]:
    prefix = f"toast_test_{uuid4().hex[:10]}"
    yield f"{redis_base_url}?prefix={prefix}&batch_size=3"
    pydantic_toast.close_storage()
    client = redis.Redis.from_url(redis_base_url)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def chunked_url(request: pytest.FixtureRequest) -> str:
    """A URL whose batches split every 3 records."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_database_url")
        return f"{url}?batch_size=3"
    return str(request.getfixturevalue("redis_url"))


def test_a_batch_of_many_chunks_round_trips_in_order(chunked_url: str) -> None:
    """10 records at batch_size=3: written, read back in order, revisions counted."""
    item = model_on(chunked_url)
    items = [item(n=i) for i in range(10)]
    references = pydantic_toast.dump(items)
    loaded = pydantic_toast.validate(list[item], list(reversed(references)))
    assert [m.n for m in loaded] == list(reversed(range(10)))
    assert {m.external_revision for m in items} == {1}
    for m in items:
        m.n += 100
    pydantic_toast.dump(items)
    assert {m.external_revision for m in items} == {2}
    assert [m.n for m in pydantic_toast.validate(list[item], references)] == [
        i + 100 for i in range(10)
    ]


def test_a_stale_record_in_a_late_chunk_writes_nothing(chunked_url: str) -> None:
    """The conflict is in the last chunk: no record of the batch changes."""
    item = model_on(chunked_url)
    items = [item(n=i) for i in range(10)]
    references = pydantic_toast.dump(items)
    other = item.model_validate(references[9])
    other.n = -1
    other.model_dump()  # another writer moves record 9 to revision 2
    for m in items:
        m.n += 100
    with pytest.raises(ConcurrencyError) as caught:
        pydantic_toast.dump(items)
    assert caught.value.id == items[9].external_id
    assert caught.value.written == {}
    stored = pydantic_toast.validate(list[item], references)
    assert [m.n for m in stored] == [*range(9), -1]
    assert [m.external_revision for m in stored] == [1] * 9 + [2]


def test_a_stale_instance_of_a_re_created_record_in_a_late_chunk_writes_nothing(
    chunked_url: str,
) -> None:
    """Record 9 deleted and written back by a forced save (revision 1 again, a new
    created_at): a batch holding the instance loaded before conflicts on it, and no record of
    the batch changes (Redis: its whole-batch check sees the created_at too)."""
    item = model_on(chunked_url)
    items = [item(n=i) for i in range(10)]
    references = pydantic_toast.dump(items)
    stale = pydantic_toast.validate(list[item], references)
    pydantic_toast.delete(item, references[9])
    items[9].n = -1
    pydantic_toast.dump(items[9], force=True)
    for m in stale:
        m.n += 100
    with pytest.raises(ConcurrencyError) as caught:
        pydantic_toast.dump(stale)
    assert (caught.value.id, caught.value.expected, caught.value.current) == (
        items[9].external_id,
        1,
        1,
    )
    assert caught.value.written == {}
    stored = pydantic_toast.validate(list[item], references)
    assert [m.n for m in stored] == [*range(9), -1]
    assert [m.external_revision for m in stored] == [1] * 10


@pytest.mark.parametrize("expected", [None, 0, 1])
@pytest.mark.parametrize("second", [1, 7], ids=["same-chunk", "later-chunk"])
def test_a_record_twice_in_a_batch_is_refused_in_any_chunk(
    chunked_url: str, second: int, expected: int | None
) -> None:
    """A batch naming one record twice is refused before anything is written, whether a chunk
    boundary falls between the two or not (PostgreSQL wrote both, as revisions 1 and 2, when
    one did, and refused them with a bare SQLSTATE 21000 when none did)."""
    class_name = f"Twice{uuid4().hex[:8]}"
    now = datetime.now(UTC)

    def record(id: UUID, n: int, revision: int | None) -> StoredRecord:
        data = f'{{"n":{n}}}'.encode()
        return StoredRecord(class_name, id, data, 1, now, now, revision=revision)

    async def main() -> tuple[str, list[StoredRecord | None]]:
        with isolated_storage() as storage:
            backend = await storage.connected(StorageURL.parse(chunked_url))
            try:
                twice = uuid4()
                if expected == 1:
                    await backend.save_records([record(twice, 0, 0)])
                batch = [record(uuid4(), n, expected and 0) for n in range(10)]
                batch[0] = batch[second] = record(twice, 1, expected)
                with pytest.raises(StorageValidationError) as caught:
                    await backend.save_records(batch)
                return str(caught.value), await backend.load_records([r.key for r in batch])
            finally:
                await storage.aclose()

    message, stored = asyncio.run(main())
    assert f"twice (at positions 0 and {second})" in message
    assert "pass each record once per batch" in message
    assert [None if r is None else r.data.replace(b" ", b"") for r in stored] == [
        b'{"n":0}' if expected == 1 and n in (0, second) else None for n in range(10)
    ]


@pytest.mark.postgresql
def test_postgresql_batches_split_by_size_stay_all_or_nothing(postgres_database_url: str) -> None:
    """12 records of 300 KB are several statements (2 MiB each at most): a stale record in the
    last one rolls back the first ones too."""
    doc = type(
        "Doc",
        (ExternalBaseModel,),
        {
            "__annotations__": {"n": int, "body": str},
            "model_config": ExternalConfigDict(
                storage=postgres_database_url, external_name=f"Doc{uuid4().hex[:8]}"
            ),
        },
    )
    body = "x" * 300_000
    docs = [doc(n=i, body=body) for i in range(12)]
    references = pydantic_toast.dump(docs)
    assert [m.n for m in pydantic_toast.validate(list[doc], references)] == list(range(12))
    other = doc.model_validate(references[11])
    other.n = -1
    other.model_dump()
    for m in docs:
        m.n += 100
    with pytest.raises(ConcurrencyError) as caught:
        pydantic_toast.dump(docs)
    assert caught.value.id == docs[11].external_id
    stored = pydantic_toast.validate(list[doc], references)
    assert [m.n for m in stored] == [*range(11), -1]
    assert all(m.body == body for m in stored)


def test_postgresql_batch_chunks_are_bounded_by_records_and_bytes() -> None:
    """batch_size records or _CHUNK_BYTES of JSON per statement, whichever comes first; a
    staged record (streamed, not a parameter) weighs nothing."""

    def shape(size: int, *sizes: int) -> list[int]:
        now = datetime.now(UTC)
        records = [StoredRecord("C", uuid4(), b"x" * n, 1, now, now) for n in sizes]
        spans = batch_spans(records, size, most_bytes=_CHUNK_BYTES, carried_up_to=STAGE_ABOVE)
        assert [start for start, _ in spans[1:]] == [end for _, end in spans[:-1]]
        return [end - start for start, end in spans]

    assert shape(3, *[10] * 7) == [3, 3, 1]
    third = _CHUNK_BYTES // 3
    assert shape(1000, *[third] * 5) == [3, 2]
    assert shape(1000, _CHUNK_BYTES + 1, 10, 10) == [1, 2]
    assert shape(1000, third, STAGE_ABOVE + 1, third, third, third) == [4, 1]
    assert shape(5) == []


def test_postgresql_runs_of_chunks_sent_together_are_bounded() -> None:
    """Consecutive chunks written by one statement are sent as one pipeline, up to batch_size
    records and _RUN_BYTES of JSON a run; a chunk holding a staged record goes alone, and
    another statement starts another run."""

    def shape(size: int, *records: tuple[int, int | None]) -> list[list[int]]:
        now = datetime.now(UTC)
        made = [
            StoredRecord("C", uuid4(), b"x" * n, 1, now, now, revision=revision)
            for n, revision in records
        ]
        spans = batch_spans(made, size, most_bytes=_CHUNK_BYTES, carried_up_to=STAGE_ABOVE)
        runs = _runs(made, spans, size)
        assert [span for _, run in runs for span in run] == spans
        return [[end - start for start, end in run] for _, run in runs]

    half = _CHUNK_BYTES // 2
    new = (half, 0)  # two new records fill a chunk
    assert shape(1000, *[new] * 8) == [[2, 2, 2, 2]]
    assert shape(5, *[new] * 8) == [[2, 2], [2, 2]]  # 5 records a run at most
    many = _RUN_BYTES // half + 4
    assert shape(1000, *[new] * many) == [[2] * (_RUN_BYTES // _CHUNK_BYTES), [2, 2]]
    assert shape(1000, new, new, (half, None), (half, None), new, new) == [[2], [2], [2]]
    staged = (STAGE_ABOVE + 1, 0)  # weighs nothing: its chunk holds two more, and goes alone
    assert shape(1000, new, new, staged, new, new, new) == [[3], [2, 1]]
    assert shape(3, *[(10, 0)] * 7) == [[3], [3], [1]]  # small records: a chunk a run
    assert shape(5) == []


@pytest.mark.postgresql
def test_postgresql_a_batch_of_large_records_waits_for_the_server_once(
    postgres_database_url: str,
) -> None:
    """30 records of 100 KB are 15 statements of two (see _CHUNK_BYTES), sent together: the
    save waits for the server's replies once (its transaction's BEGIN and COMMIT aside), not
    once per statement, and the records round-trip."""
    url = f"{postgres_database_url}?pool_size=1"
    doc = type(
        "Doc",
        (ExternalBaseModel,),
        {
            "__annotations__": {"n": int, "body": str},
            "model_config": ExternalConfigDict(storage=url, external_name=f"Doc{uuid4().hex[:8]}"),
        },
    )
    body = "lorem ipsum " * 8_500

    async def save() -> tuple[int, list[Any]]:
        await pydantic_toast.adump([doc(n=-1, body=body), doc(n=-2, body=body)])  # prepared
        backend = (await current_storage().connected(doc._toast_settings().url())).backend
        async with backend.engine.connect() as connection:  # type: ignore[attr-defined]
            protocol = (await connection.get_raw_connection()).driver_connection._protocol
        before = protocol.queries_count
        references = await pydantic_toast.adump([doc(n=i, body=body) for i in range(30)])
        waits = protocol.queries_count - before
        loaded = await pydantic_toast.avalidate(list[doc], references)
        await pydantic_toast.aclose_storage()
        return waits, loaded

    waits, loaded = asyncio.run(save())
    assert waits <= 3  # BEGIN, the statements, COMMIT (one per statement before: 17)
    assert [m.n for m in loaded] == list(range(30))
    assert all(m.body == body for m in loaded)


@pytest.mark.redis
def test_redis_a_race_after_the_check_keeps_the_written_chunks_known(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer between the check and the last chunk: earlier chunks stay written and known."""
    item = model_on(redis_url)
    items = [item(n=i) for i in range(7)]  # chunks of 3, 3, 1
    references = pydantic_toast.dump(items)

    async def race() -> None:
        backend = (await current_storage().connected(item._toast_settings().url())).backend
        write_chunk = backend._save_chunk
        calls = 0
        victims: list[Any] = []

        async def then_interfere(records: Any) -> list[int]:
            nonlocal calls
            calls += 1
            if calls == 3:  # before the last chunk: another writer updates its record
                victims.append(records[0].id)
                other = await item.aload(records[0].id)
                other.n = -1
                await other.asave()
            return await write_chunk(records)  # type: ignore[no-any-return]

        monkeypatch.setattr(backend, "_save_chunk", then_interfere)
        for m in items:
            m.n += 100
        with pytest.raises(ConcurrencyError) as caught:
            await pydantic_toast.adump(items)
        monkeypatch.undo()
        (victim,) = victims
        rest = [m for m in items if m.external_id != victim]
        (stale,) = [m for m in items if m.external_id == victim]
        assert caught.value.id == victim
        assert set(caught.value.written) == {
            (m._toast_settings().external_name, m.external_id) for m in rest
        }
        assert [m.external_revision for m in rest] == [2] * 6
        assert stale.external_revision == 1
        stored = {m.external_id: m for m in await pydantic_toast.avalidate(list[item], references)}
        assert [stored[m.external_id].n for m in rest] == [m.n for m in rest]
        assert stored[victim].n == -1
        with pytest.raises(ConcurrencyError) as again:  # the victim itself is still stale
            await pydantic_toast.adump(items)
        assert again.value.id == victim
        assert again.value.written == {}
        await stale.asave(force=True)
        await pydantic_toast.adump(items)  # nothing left to write
        assert [m.external_revision for m in rest] == [2] * 6
        assert stale.external_revision == 3

    asyncio.run(race())


@pytest.mark.parametrize("value", ["0", "-1", "ten"])
def test_batch_size_must_be_a_positive_number(value: str) -> None:
    """A bad batch_size is refused when the class is defined, naming the option."""
    for url in (
        f"postgresql://app@db:5432/shop?batch_size={value}",
        f"redis://localhost:6379/0?batch_size={value}",
    ):
        with pytest.raises(StorageConfigurationError, match="batch_size"):
            model_on(url)


def _sized_model(url: str) -> Any:
    return type(
        "Sized",
        (ExternalBaseModel,),
        {
            "__annotations__": {"n": int, "text": str},
            "model_config": ExternalConfigDict(storage=url, external_name=f"Sz{uuid4().hex[:8]}"),
        },
    )


@pytest.mark.redis
@pytest.mark.parametrize("api", ["sync", "async"])
def test_redis_a_batch_read_in_many_pipelined_chunks_of_mixed_sizes_comes_back_exactly(
    redis_url: str, api: str
) -> None:
    """Chunks of 3 (MGETs sent ahead of their replies) of small, 200 KB and missing records,
    in any order, load each record exactly, in list order; the connection then serves the
    next batch with its own replies."""
    sized = _sized_model(redis_url)
    sizes = [10, 20, 200_000, 30, 40, 50, 60, 250_000, 70, 80, 90, 100, 110, 120, 300_000]
    items = [sized(n=i, text=chr(97 + i % 26) * size) for i, size in enumerate(sizes)]
    references = pydantic_toast.dump(items)
    missing = {"class_name": references[0]["class_name"], "id": str(uuid4())}
    asked = [*references[:5], missing, *references[5:], missing]

    def load(value: list[Any]) -> list[Any]:
        if api == "sync":
            return pydantic_toast.validate(list[sized], value)
        return asyncio.run(_in_a_loop(lambda: pydantic_toast.avalidate(list[sized], value)))

    with pytest.raises(pydantic_toast.RecordNotFoundError):
        load(asked)
    for order in (references, list(reversed(references))):
        loaded = load(order)
        assert [(m.n, m.text) for m in loaded] == [(m.n, m.text) for m in _by_ref(items, order)]
    assert [m.n for m in load(references[:4])] == [0, 1, 2, 3]


async def _in_a_loop(make: Any) -> Any:
    try:
        return await make()
    finally:
        await pydantic_toast.aclose_storage()


def _by_ref(items: list[Any], references: list[Any]) -> list[Any]:
    by_id = {str(item.external_id): item for item in items}
    return [by_id[reference["id"]] for reference in references]


@pytest.mark.redis
async def test_redis_an_error_reply_among_pipelined_reads_is_raised_after_every_reply(
    redis_base_url: str,
) -> None:
    """An error reply to one of several pipelined commands is raised once the replies to the
    commands sent are read: the connection, back in the pool, answers the next command with
    its own reply."""
    import redis.asyncio as aioredis
    from redis.exceptions import ResponseError

    from pydantic_toast.backends import _resp

    prefix = f"toast_test_{uuid4().hex[:10]}"
    client = aioredis.Redis.from_url(redis_base_url, max_connections=1)
    try:
        await client.set(f"{prefix}:a", b"A")
        mget = _resp.command(b"MGET", f"{prefix}:a".encode(), f"{prefix}:none".encode())
        wrong = _resp.command(b"NOSUCHCOMMAND", b"x")
        pool = client.connection_pool
        with pytest.raises(ResponseError, match=r"(?i)unknown command"):
            await _resp.read_many_values(pool, [mget, wrong, mget], piece=1 << 20)
        assert await _resp.read_many_values(pool, [mget, mget], piece=1 << 20) == [
            b"A",
            None,
            b"A",
            None,
        ]
        assert await client.get(f"{prefix}:a") == b"A"
    finally:
        await client.delete(f"{prefix}:a")
        await client.aclose()


@pytest.mark.postgresql
async def test_postgresql_a_chunked_load_in_a_transaction_sees_its_uncommitted_records(
    postgres_database_url: str,
) -> None:
    """Inside transaction(connection), every chunk of a batch load runs on the caller's
    connection (none on another pooled one): records written in the transaction, not yet
    committed, are all found."""
    from sqlalchemy.ext.asyncio import create_async_engine

    url = f"{postgres_database_url}?batch_size=3"
    item = model_on(url)
    engine = create_async_engine(
        postgres_database_url.replace("postgresql://", "postgresql+asyncpg://")
    )
    try:
        async with engine.connect() as connection:
            transaction = await connection.begin()
            async with pydantic_toast.transaction(connection):
                references = await pydantic_toast.adump([item(n=i) for i in range(10)])
                loaded = await pydantic_toast.avalidate(list[item], references)
                assert [m.n for m in loaded] == list(range(10))
            await transaction.rollback()
        with pytest.raises(pydantic_toast.RecordNotFoundError):
            await pydantic_toast.avalidate(list[item], references)
    finally:
        await engine.dispose()
        await pydantic_toast.aclose_storage()


@pytest.mark.postgresql
async def test_postgresql_a_refused_chunk_of_a_batch_load_returns_every_connection(
    postgres_database_url: str,
) -> None:
    """A record of the first chunk with a timestamp Python cannot hold is refused, naming it;
    no connection stays checked out, and the next load of the batch's other chunks works."""
    import asyncpg

    url = f"{postgres_database_url}?batch_size=3"
    item = model_on(url)
    try:
        references = await pydantic_toast.adump([item(n=i) for i in range(12)])
        connection = await asyncpg.connect(postgres_database_url)
        try:
            await connection.execute(
                "UPDATE external_records SET created_at = 'infinity' WHERE id = $1",
                UUID(references[1]["id"]),
            )
        finally:
            await connection.close()
        for _ in range(3):
            with pytest.raises(StoredDataError) as info:
                await pydantic_toast.avalidate(list[item], references)
            assert str(info.value.id) == references[1]["id"]
            connected = await current_storage().connected(item._toast_settings().url())
            assert connected.backend.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        loaded = await pydantic_toast.avalidate(list[item], references[3:])
        assert [m.n for m in loaded] == list(range(3, 12))
    finally:
        await pydantic_toast.aclose_storage()


@pytest.mark.postgresql
async def test_postgresql_a_chunked_load_cancelled_midway_returns_every_connection(
    postgres_database_url: str,
) -> None:
    """A batch load of many chunks cancelled midway leaves no connection checked out, and the
    next load works."""
    url = f"{postgres_database_url}?batch_size=3"
    item = model_on(url)
    try:
        references = await pydantic_toast.adump([item(n=i) for i in range(600)])
        connected = await current_storage().connected(item._toast_settings().url())
        pool = connected.backend.engine.pool  # type: ignore[attr-defined]
        for delay in (0.0, 0.005, 0.02):
            load = asyncio.ensure_future(pydantic_toast.avalidate(list[item], references))
            await asyncio.sleep(delay)
            load.cancel()
            with pytest.raises(asyncio.CancelledError):
                await load
            assert pool.checkedout() == 0
        loaded = await pydantic_toast.avalidate(list[item], references)
        assert [m.n for m in loaded] == list(range(600))
    finally:
        await pydantic_toast.aclose_storage()


@pytest.mark.postgresql
def test_postgresql_batch_write_holds_one_chunks_rows_at_a_time(
    postgres_database_url: str,
) -> None:
    """A batch write of many chunks keeps each record's revision, not its returned row: the
    memory it allocates beyond its result stays far below a (class name, id) key per record."""
    import tracemalloc

    from pydantic_toast._records import new_record

    count = 10_000
    url = f"{postgres_database_url}?batch_size=100"
    now = datetime.now(UTC)
    records = [
        new_record("Held", uuid4(), b'{"n":1}', 1, now, now, None, 0, True) for _ in range(count)
    ]

    async def write() -> tuple[list[int], int]:
        backend = (await current_storage().connected(model_on(url)._toast_settings().url())).backend
        await backend.save_records(records[:2])  # statements prepared outside the measure
        tracemalloc.start()
        try:
            revisions = await backend.save_records(records[2:])
            return revisions, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    revisions, peak = asyncio.run(write())
    assert revisions == [1] * (count - 2)
    assert peak < 100 * count  # a key per record for the whole batch: 300 bytes each
