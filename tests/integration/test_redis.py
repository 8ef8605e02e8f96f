"""Redis specifics: URLs and auth, TLS, key layout, expiry, pool pressure, damage, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import redis
import redis.asyncio as aioredis

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageConnectionError,
    StorageOperationError,
    StoredDataError,
)
from pydantic_toast._records import ClassKeys, PageCursor, RecordKey, StoredRecord
from pydantic_toast.backends import redis as redis_module
from pydantic_toast.backends.redis import RedisBackend, _Staging
from tests import servers
from tests.fault_proxy import FaultProxy

pytestmark = pytest.mark.redis


def model_on(
    url: str, name: str = "Session", field: str = "user", **config: object
) -> type[ExternalBaseModel]:
    """A model class ``name`` of one ``str`` field, stored at ``url`` under a class name of its
    own."""
    return type(
        name,
        (ExternalBaseModel,),
        {
            "__annotations__": {field: str},
            "model_config": ExternalConfigDict(
                storage=url,
                external_name=f"{name}{uuid4().hex[:8]}",
                **config,  # type: ignore[typeddict-item]
            ),
        },
    )


@pytest.fixture
def prefixed_url(redis_base_url: str) -> Iterator[tuple[str, redis.Redis]]:
    """A URL with a key prefix of this test's own, and a plain client; keys removed after."""
    prefix = f"toast_test_{uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_base_url)
    yield f"{redis_base_url}?prefix={prefix}", client
    pydantic_toast.close_storage()
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@dataclasses.dataclass(frozen=True)
class Keys:
    """A test's key prefix on the server, and a plain client to look at what is stored there."""

    url: str
    client: redis.Redis

    @property
    def prefix(self) -> str:
        return self.url.split("prefix=")[1]

    def of(self, class_name: str, suffix: object) -> str:
        """The key ``<prefix>:<class_name>:<suffix>`` (a record id, ``index``, ``expiry``)."""
        return f"{self.prefix}:{class_name}:{suffix}"

    def record(self, reference: Mapping[str, Any]) -> str:
        """The key of the record a saved model's reference names."""
        return self.of(reference["class_name"], reference["id"])

    def staged(self) -> list[bytes]:
        """The staged copies left under the prefix."""
        return list(self.client.scan_iter(match=f"{self.prefix}:*:staged:*"))


@pytest.fixture
def keys(prefixed_url: tuple[str, redis.Redis]) -> Keys:
    """This test's key prefix (removed after) and a plain client."""
    return Keys(*prefixed_url)


@pytest.fixture
async def backend(keys: Keys) -> AsyncIterator[RedisBackend]:
    """A RedisBackend connected on this test's key prefix, disconnected after."""
    connected = RedisBackend(keys.url)
    await connected.connect()
    yield connected
    await connected.disconnect()


@pytest.fixture
async def storage_closed_after() -> AsyncIterator[None]:
    """The storage an async test used, closed on that test's event loop when it ends."""
    yield
    await pydantic_toast.aclose_storage()


def test_key_layout_is_predictable_and_documented(keys: Keys) -> None:
    """Keys are <prefix>:<class_name>:<uuid>; the value is a JSON document with metadata."""
    session = model_on(keys.url)
    reference = session(user="ada").model_dump()
    raw = keys.client.get(keys.record(reference))
    assert raw is not None
    document = json.loads(raw)
    assert document["data"] == {"user": "ada"}
    assert document["schema_version"] == 1
    assert set(document) == {"created_at", "schema_version", "revision", "updated_at", "data"}
    assert document["revision"] == 1


def test_database_number_is_honoured(redis_base_url: str) -> None:
    """redis://host:port/3 writes into database 3 only."""
    base = redis_base_url.rsplit("/", 1)[0]
    prefix = f"toast_test_{uuid4().hex[:10]}"
    session = model_on(f"{base}/3?prefix={prefix}")
    reference = session(user="x").model_dump()
    key = f"{prefix}:{reference['class_name']}:{reference['id']}"
    db0, db3 = redis.Redis.from_url(f"{base}/0"), redis.Redis.from_url(f"{base}/3")
    try:
        assert db3.exists(key) == 1
        assert db0.exists(key) == 0
    finally:
        db3.delete(key, f"{prefix}:{reference['class_name']}:index")
        db0.close()
        db3.close()
        pydantic_toast.close_storage()


def test_ttl_expires_records_and_each_write_renews_it(keys: Keys) -> None:
    """With ttl, a record expires after its last write; a write sets the expiry afresh."""
    client = keys.client
    session = model_on(keys.url, ttl=1.0)
    item = session(user="short")
    reference = item.model_dump()
    key = keys.record(reference)
    assert 0 < client.pttl(key) <= 1000
    time.sleep(0.6)
    item.user = "renewed"  # an unchanged dump writes nothing, so it would not renew
    item.model_dump()
    assert client.pttl(key) > 600, "the update renewed the expiry"
    time.sleep(1.1)
    with pytest.raises(RecordNotFoundError):
        session.model_validate(reference)
    permanent = model_on(keys.url)
    assert client.pttl(f"{keys.prefix}:x") == -2
    kept = permanent(user="long").model_dump()
    assert client.pttl(keys.record(kept)) == -1


@pytest.mark.usefixtures("blocking_calls_allowed")
def test_concurrent_writers_keep_created_at(keys: Keys) -> None:
    """Many concurrent writes of one record keep the first created_at (atomic script)."""
    session = model_on(keys.url)
    item = session(user="a")
    reference = item.model_dump()
    key = keys.record(reference)
    created = json.loads(keys.client.get(key))["created_at"]  # type: ignore[arg-type]

    async def hammer() -> None:
        copies = [session.model_validate(reference) for _ in range(50)]
        for copy_ in copies:
            object.__setattr__(copy_, "_toast_identity", None)
            object.__setattr__(
                copy_,
                "_toast_identity",
                type(item._toast_identity)(item.external_id, time_now()),  # type: ignore[attr-defined]
            )
        await asyncio.gather(*(c.asave(force=True) for c in copies))

    asyncio.run(hammer())
    assert json.loads(keys.client.get(key))["created_at"] == created  # type: ignore[arg-type]


def time_now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_hundreds_of_concurrent_operations_wait_for_the_pool(
    prefixed_url: tuple[str, redis.Redis],
) -> None:
    """500 concurrent saves on a 4-connection pool wait instead of failing."""
    url, _ = prefixed_url
    session = model_on(f"{url}&max_connections=4")

    async def burst() -> int:
        items = [session(user=str(i)) for i in range(500)]
        references = await asyncio.gather(*(item.asave() for item in items))
        loaded = await asyncio.gather(*(session.aload(ref) for ref in references))
        return sum(1 for a, b in zip(items, loaded, strict=True) if a == b)

    assert asyncio.run(burst()) == 500


async def test_an_idle_connection_is_taken_without_redis_pys_checkout(
    keys: Keys, backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saves and loads made while nobody waits for a connection (the pool's connection opened
    by connect()) take an idle one at once and give it back at once: redis-py's checkout and
    release (its lock, timeout, metrics and retry wrapper) run only for a connection that has
    to be opened or waited for."""
    calls: list[str] = []
    pool_class = aioredis.BlockingConnectionPool
    checkout, release = pool_class.get_connection, pool_class.release

    async def counted_checkout(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("checkout")
        return await checkout(self, *args, **kwargs)

    async def counted_release(self: Any, connection: Any) -> None:
        calls.append("release")
        await release(self, connection)

    monkeypatch.setattr(pool_class, "get_connection", counted_checkout)
    monkeypatch.setattr(pool_class, "release", counted_release)
    records = [_stored(b'{"n":%d}' % n, 0) for n in range(1, 4)]
    for record in records:
        assert await backend.save_records([record]) == [1]
    loaded = await backend.load_records([record.key for record in records])
    assert [record.data for record in loaded if record is not None] == [
        record.data for record in records
    ]
    assert calls == []
    assert backend.pool_connections() == (0, 1)


async def test_waiting_for_a_connection_is_first_come_first_served(keys: Keys) -> None:
    """On a one-connection pool, saves that wait get the connection in the order they came,
    a save arriving later waits behind them, and the connection is back when all are done."""
    backend = RedisBackend(f"{keys.url}&max_connections=1")
    await backend.connect()
    try:
        pool = backend._connected().connection_pool
        order: list[int] = []
        held = await pool.get_connection()

        async def save(n: int) -> None:
            await backend.save_records([_stored(b'{"n":%d}' % n, 0)])
            order.append(n)

        waiting = [asyncio.create_task(save(n)) for n in range(3)]
        await asyncio.sleep(0.01)  # all three wait for the held connection
        await pool.release(held)
        late = asyncio.create_task(save(3))
        await asyncio.wait_for(asyncio.gather(*waiting, late), 10)
        assert order == [0, 1, 2, 3]
        assert backend.pool_connections() == (0, 1)
    finally:
        await backend.disconnect()


def test_corrupted_value_names_the_key(keys: Keys) -> None:
    """A value that is not our document is refused with a clear error naming the key."""
    session = model_on(keys.url)
    reference = session(user="x").model_dump()
    key = keys.record(reference)
    for garbage in (b"not json at all", b'{"unexpected": true}'):
        keys.client.set(key, garbage)
        with pytest.raises(StoredDataError, match=key):
            session.model_validate(reference)
    assert keys.client.get(key) == b'{"unexpected": true}', "left untouched"


async def test_revisions_and_schema_versions_load_exactly_at_any_size(
    keys: Keys, backend: RedisBackend
) -> None:
    """A document's revision and schema version are read as written, small or large (with
    the space padding of a staged document), alone and in a batch."""
    stamp = "2026-01-02T03:04:05.000006+00:00"
    expected = {}
    for revision, version in ((1, 1), (999, 2), (1000, 1000), (123456789, 7)):
        id = uuid4()
        keys.client.set(
            keys.of("Numbers", id),
            f'{{"created_at":"{stamp}","revision":{revision}   ,"schema_version":{version},'
            f'"updated_at":"{stamp}","data":{{}}}}',
        )
        expected[id] = (revision, version)
    wanted = [("Numbers", id) for id in expected]
    loaded = [*await backend.load_records(wanted), *await backend.load_records(wanted[-1:])]
    assert [(r.revision, r.schema_version) for r in loaded if r] == [
        *expected.values(),
        expected[wanted[-1][1]],
    ]


def test_unreachable_server(redis_base_url: str) -> None:
    """A closed port is a StorageConnectionError naming host:port, never the password."""
    port = servers.free_port()
    session = model_on(f"redis://:sekrit@127.0.0.1:{port}/0?socket_connect_timeout=1")
    with pytest.raises(StorageConnectionError) as info:
        session(user="x").model_dump()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "sekrit" not in str(info.value)


@pytest.fixture(scope="module")
def secured_redis(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[servers.TempRedis, Path]]:
    """A throwaway redis-server with a password, an ACL user and a TLS port."""
    certs = tmp_path_factory.mktemp("redis-tls")
    servers.self_signed_certificate(certs)
    try:
        server = servers.TempRedis("--requirepass", "s3cret", tls_dir=certs)
    except FileNotFoundError:
        if servers.IN_CI:
            pytest.fail("no redis-server binary for the auth and TLS tests")
        pytest.skip("no redis-server binary")
    admin = redis.Redis(port=server.port, password="s3cret")
    admin.execute_command("ACL", "SETUSER", "app", "on", ">apppass", "~*", "+@all")
    admin.close()
    try:
        yield server, certs / "server.crt"
    finally:
        pydantic_toast.close_storage()
        server.stop()


def test_password_and_acl_user_authenticate(secured_redis: tuple[servers.TempRedis, Path]) -> None:
    """Password-only and user+password URLs work; a wrong password is a clear auth error."""
    server, _ = secured_redis
    for credentials in (":s3cret", "app:apppass"):
        session = model_on(f"redis://{credentials}@127.0.0.1:{server.port}/0")
        assert session.model_validate(session(user="ok").model_dump()).user == "ok"  # type: ignore[attr-defined]
    for credentials in (":wrong-pass", "app:wrong-pass"):
        session = model_on(f"redis://{credentials}@127.0.0.1:{server.port}/0")
        with pytest.raises(StorageConnectionError, match="rejected") as info:
            session(user="x").model_dump()
        assert "wrong-pass" not in str(info.value)


def test_tls_with_a_ca_certificate(secured_redis: tuple[servers.TempRedis, Path]) -> None:
    """rediss:// with ssl_ca_certs verifies the server and round-trips."""
    server, ca = secured_redis
    session = model_on(f"rediss://:s3cret@localhost:{server.tls_port}/0?ssl_ca_certs={ca}")
    assert session.model_validate(session(user="tls").model_dump()).user == "tls"  # type: ignore[attr-defined]


def test_restart_between_calls_reconnects(tmp_path: Path) -> None:
    """After redis-server restarts, the next call reconnects by itself."""
    server = servers.TempRedis()
    try:
        session = model_on(f"redis://127.0.0.1:{server.port}/0")
        first = session(user="before")
        first.model_dump()
        server.stop()
        server.start()
        # The data went with the restart: write it again (force: its revision is gone too).
        reference = pydantic_toast.dump(first, force=True)
        assert session.model_validate(reference).user == "before"  # type: ignore[attr-defined]
    finally:
        pydantic_toast.close_storage()
        server.stop()


def test_count_is_an_index_lookup_that_leaves_expired_records_out(keys: Keys) -> None:
    """count() is the index size less expired entries: exact, with no record read or written."""
    client = keys.client
    lasting = model_on(keys.url)
    brief = model_on(keys.url, ttl=0.3)
    for n in range(5):
        lasting(user=f"u{n}").model_dump()
    for n in range(3):
        brief(user=f"b{n}").model_dump()
    assert pydantic_toast.count(lasting) == 5
    assert pydantic_toast.count(brief) == 3
    time.sleep(0.5)
    index = keys.of(model_name(brief), "index")
    assert client.zcard(index) == 3, "expired entries are still in the index"
    assert pydantic_toast.count(brief) == 0
    assert pydantic_toast.page(brief, limit=10).items == []
    assert client.zcard(index) == 3, "reads never write: count and page left the index alone"
    brief(user="fresh").model_dump()  # a write sweeps the expired entries
    assert client.zcard(index) == 1
    assert client.zcard(keys.of(model_name(brief), "expiry")) == 1
    assert pydantic_toast.count(brief) == 1


def test_a_write_without_ttl_makes_a_record_count_for_good(keys: Keys) -> None:
    """A record rewritten without ttl leaves the expiry set; a deleted one leaves both sets."""
    brief = model_on(keys.url, ttl=60)
    item = brief(user="x")
    reference = item.model_dump()
    expiry = keys.of(model_name(brief), "expiry")
    assert keys.client.zcard(expiry) == 1
    pydantic_toast.delete(brief, reference)
    assert keys.client.zcard(expiry) == 0
    assert pydantic_toast.count(brief) == 0


def model_name(model: type[ExternalBaseModel]) -> str:
    settings = model.__toast_settings__
    assert settings is not None
    return settings.external_name


def large_model_on(url: str, **config: object) -> type[ExternalBaseModel]:
    return model_on(url, "Scan", "body", **config)


def test_large_documents_are_staged_and_moved_into_place(keys: Keys) -> None:
    """A document above 8 KB keeps created_at, counts revisions, leaves no staged key behind."""
    client = keys.client
    scan = large_model_on(keys.url)
    item = scan(body="x" * 100_000)
    reference = item.model_dump()
    key = keys.record(reference)
    first = json.loads(client.get(key))  # type: ignore[arg-type]
    assert first["revision"] == 1
    assert first["data"] == {"body": "x" * 100_000}
    assert client.pttl(key) == -1, "the staged key's short expiry is not kept"
    item.body = "y" * 100_000
    item.model_dump()
    second = json.loads(client.get(key))  # type: ignore[arg-type]
    assert (second["revision"], second["created_at"]) == (2, first["created_at"])
    assert scan.model_validate(reference).body == "y" * 100_000
    stale = scan.model_validate(reference)
    item.body = "z" * 100_000
    item.model_dump()
    stale.body = "w" * 100_000
    with pytest.raises(pydantic_toast.ConcurrencyError):
        stale.model_dump()
    assert json.loads(client.get(key))["data"]["body"] == "z" * 100_000  # type: ignore[arg-type]
    assert keys.staged() == [], "conflict cleaned up"


def test_large_documents_keep_their_ttl_and_batch_with_small_ones(keys: Keys) -> None:
    """Staged writes set the model's expiry; a mixed batch writes both kinds in one call."""
    scan = large_model_on(keys.url, ttl=30.0)
    big, small = scan(body="b" * 20_000), scan(body="s")
    references = pydantic_toast.dump([big, small])
    for reference in references:
        assert 0 < keys.client.pttl(keys.record(reference)) <= 30_000
    loaded = pydantic_toast.validate(list[scan], references)  # type: ignore[valid-type]
    assert [m.body for m in loaded] == ["b" * 20_000, "s"]  # type: ignore[attr-defined]
    assert pydantic_toast.count(scan) == 2


def test_documents_written_before_staging_are_updated_in_place(keys: Keys) -> None:
    """An unpadded document (the earlier layout) keeps its created_at when overwritten large."""
    client = keys.client
    scan = large_model_on(keys.url)
    item = scan(body="small")
    reference = item.model_dump()
    key = keys.record(reference)
    old = client.get(key)
    assert old is not None
    assert b'"revision":1,' in old, "small documents are not padded"
    item.body = "L" * 50_000
    item.model_dump()
    new = json.loads(client.get(key))  # type: ignore[arg-type]
    assert new["created_at"] == json.loads(old)["created_at"]
    assert new["revision"] == 2
    assert scan.model_validate(reference).body == "L" * 50_000


def _multibyte(megabytes: float, mark: str = "") -> str:
    """Text of about ``megabytes`` of UTF-8 whose 1 MiB piece boundaries fall mid-character."""
    line = f'ligne ∑ €é 😀 {mark} \\ "quoted"\n'
    return line * int(megabytes * 1_000_000 / len(line.encode()) + 1)


@pytest.mark.usefixtures("storage_closed_after")
async def test_a_large_record_is_written_and_read_in_pieces_exactly(keys: Keys) -> None:
    """A 3 MB record of multi-byte text (staged in 1 MiB pieces, read back in pieces) is stored
    as one permanent JSON document, loads exactly, counts revisions and keeps created_at; no
    staged copy is left behind."""
    client = keys.client
    scan = large_model_on(keys.url)
    text = _multibyte(3)
    item = scan(body=text)
    reference = await item.asave()
    key = keys.record(reference)
    first = json.loads(client.get(key))  # type: ignore[arg-type]
    assert (first["revision"], first["data"]) == (1, {"body": text})
    assert client.pttl(key) == -1, "the staged copy's expiry is not kept"
    loaded = await scan.aload(reference)
    assert loaded.body == text  # type: ignore[attr-defined]
    assert loaded.external_revision == 1
    item.body = text[::-1]  # type: ignore[attr-defined]
    await item.asave()
    second = json.loads(client.get(key))  # type: ignore[arg-type]
    assert (second["revision"], second["created_at"]) == (2, first["created_at"])
    assert (await scan.aload(reference)).body == text[::-1]  # type: ignore[attr-defined]
    assert keys.staged() == []


async def test_documents_around_the_piece_size_load_exactly(
    keys: Keys, backend: RedisBackend
) -> None:
    """Documents one byte short of, exactly at and one byte past 1 MiB (the first piece a load
    reads) load exactly, as do larger records in a batch (one MGET)."""
    # A staged document: its header padded to 96 bytes, then the rest, the data and "}".
    overhead = 96 + len(b',"schema_version":1,"updated_at":"","data":}')
    sizes = [(1 << 20) - 1, 1 << 20, (1 << 20) + 1]
    records = []
    for size in sizes:
        now = datetime.now(UTC)
        padding = size - overhead - len(now.isoformat()) - len(b'{"b":""}')
        data = b'{"b":"%b"}' % (b"x" * padding)
        records.append(StoredRecord("Edge", uuid4(), data, 1, now, now, None, None))
    assert await backend.save_records(records) == [1, 1, 1]
    stored = [keys.client.strlen(backend.key(r.class_name, r.id)) for r in records]
    assert stored == sizes
    for record in records:
        (loaded,) = await backend.load_records([record.key])
        assert loaded is not None
        assert (loaded.data, loaded.revision) == (record.data, 1)
    batch = await backend.load_records([record.key for record in records])
    assert [loaded.data for loaded in batch if loaded] == [r.data for r in records]


@pytest.mark.parametrize("first", [1, 100_000])
async def test_a_batch_load_reads_strings_that_straddle_its_reads_exactly(
    keys: Keys, backend: RedisBackend, first: int
) -> None:
    """A batch load of documents whose sizes fall around the 64 KiB its reply is read by,
    between missing keys, a damaged timestamp and a value of another writer, returns each
    document exactly or names the key of the value it refuses. With hiredis, the first
    document's size picks the reader: hiredis below 16 KiB, the Python one above."""
    now = datetime.now(UTC)
    sizes = [first, 300, (1 << 16) - 70, 1 << 16, (1 << 16) + 1, 100_000, 200_003, 5]
    records = [
        StoredRecord("Wide", uuid4(), b'{"b":"%b"}' % (b"y" * size), 1, now, now)
        for size in sizes * 3
    ]
    await backend.save_records(records)
    wanted = [key for record in records for key in (record.key, ("Wide", uuid4()))]
    loaded = await backend.load_records(wanted)
    assert [r.data if r else None for r in loaded] == [
        data for record in records for data in (record.data, None)
    ]
    assert {r.created_at for r in loaded if r} == {now}
    assert {r.revision for r in loaded if r} == {1}
    damaged = backend.key(*records[1].key)
    document = keys.client.get(damaged)
    assert document is not None
    keys.client.set(damaged, document.replace(now.isoformat().encode(), b"yesterday", 1))
    with pytest.raises(StoredDataError, match=f"{damaged} has unreadable timestamps"):
        await backend.load_records(wanted)
    foreign = backend.key(*records[4].key)
    keys.client.set(foreign, b'{"b":"' + b"z" * 70_000 + b'"}')
    keys.client.set(damaged, document)
    with pytest.raises(StoredDataError, match=f"{foreign} is not a pydantic-toast record"):
        await backend.load_records(wanted)
    (again,) = await backend.load_records([records[2].key])
    assert again is not None
    assert again.data == records[2].data


async def traced_peak(call: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
    """What ``call`` returns, and the peak of Python's allocations while it ran, in bytes
    above what was allocated when it started (tracemalloc: exact, whatever the machine's
    load)."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        result = await call()
        return result, tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


async def test_a_batch_load_takes_a_large_document_off_the_socket_in_pieces(
    keys: Keys, backend: RedisBackend
) -> None:
    """A batch load (MGET) of a 20 MB record among small and missing ones returns each
    exactly, holding the large document about twice at most (its pieces, then the joined
    data), not three times (redis-py's parser: the stream's buffer, its copy, the reply);
    the connection stays in step for the next command."""
    now = datetime.now(UTC)
    text = _multibyte(20, "batch")
    large = StoredRecord("Scan", uuid4(), json.dumps({"b": text}).encode(), 1, now, now)
    small = [StoredRecord("Scan", uuid4(), b'{"b":"s%d"}' % i, 1, now, now) for i in range(3)]
    await backend.save_records([small[0], large, small[1]])
    await backend.save_records([small[2]])
    wanted = [small[0].key, large.key, ("Scan", uuid4()), small[1].key, small[2].key]
    loaded, peak = await traced_peak(lambda: backend.load_records(wanted))
    assert [r.data if r else None for r in loaded] == [
        small[0].data,
        large.data,
        None,
        small[1].data,
        small[2].data,
    ]
    assert peak < 2.3 * len(large.data), f"peak {peak / len(large.data):.2f}x the document"
    again = await backend.load_records([small[2].key, small[0].key])
    assert [r.data if r else None for r in again] == [small[2].data, small[0].data]


async def test_a_large_value_not_written_by_the_library_in_a_batch_is_named(
    keys: Keys, backend: RedisBackend
) -> None:
    """A 3 MB value under a record's key that is not a pydantic-toast document, read in
    pieces by a batch load, is a StoredDataError naming its key; the next load works."""
    now = datetime.now(UTC)
    small = StoredRecord("Scan", uuid4(), b'{"b":"s"}', 1, now, now)
    await backend.save_records([small])
    foreign = uuid4()
    keys.client.set(backend.key("Scan", foreign), b'{"b":"' + b"x" * 3_000_000 + b'"}')
    with pytest.raises(StoredDataError, match=backend.key("Scan", foreign)):
        await backend.load_records([small.key, ("Scan", foreign)])
    (loaded,) = await backend.load_records([small.key])
    assert loaded is not None
    assert loaded.data == small.data


@pytest.mark.usefixtures("storage_closed_after")
async def test_a_stale_writer_of_a_large_record_changes_nothing(keys: Keys) -> None:
    """A writer of a large record that read an older revision gets ConcurrencyError, alone or
    in a batch with small records: nothing is written and no staged copy is left behind."""
    client = keys.client
    scan = large_model_on(keys.url)
    item = scan(body=_multibyte(2, "one"))
    reference = await item.asave()
    stale = await scan.aload(reference)
    item.body = _multibyte(2, "two")  # type: ignore[attr-defined]
    await item.asave()
    key = keys.record(reference)
    before = client.get(key)
    stale.body = _multibyte(3, "lost")  # type: ignore[attr-defined]
    with pytest.raises(pydantic_toast.ConcurrencyError):
        await stale.asave()
    small = scan(body="small")
    with pytest.raises(pydantic_toast.ConcurrencyError):
        await pydantic_toast.adump([small, stale])
    assert client.get(key) == before
    assert await pydantic_toast.acount(scan) == 1, "the batch wrote nothing"
    assert keys.staged() == []


@pytest.mark.usefixtures("storage_closed_after")
async def test_a_batch_mixes_large_and_small_records(keys: Keys) -> None:
    """One batch of large records (staged in pieces) and small ones (in the script's
    arguments) writes them all, with the model's expiry; each loads exactly."""
    client = keys.client
    scan = large_model_on(keys.url, ttl=60.0)
    items = [scan(body=_multibyte(1.5, "a")), scan(body="s"), scan(body=_multibyte(2, "b"))]
    references = await pydantic_toast.adump(items)
    for reference in references:
        key = keys.record(reference)
        assert 0 < client.pttl(key) <= 60_000
    assert [await scan.aload(r) for r in references] == items
    assert await pydantic_toast.acount(scan) == 3
    assert keys.staged() == []


@pytest.mark.usefixtures("storage_closed_after")
async def test_a_save_cancelled_while_staging_leaves_the_record_and_no_staged_copy(
    keys: Keys,
) -> None:
    """Cancelled while its pieces are being written, a save of a large record leaves the
    record as it was and deletes its staged copy; the next save writes. (A cancellation that
    lands once the script moving the staged copy in was sent ends a save that is whole: then
    once more, on a record of its own.)"""
    client = keys.client
    scan = large_model_on(keys.url)
    for _ in range(5):
        item = scan(body="a" * 2_000_000)
        reference = await item.asave()
        key = keys.record(reference)
        item.body = "b" * 60_000_000  # type: ignore[attr-defined]
        task = asyncio.create_task(item.asave())
        while not keys.staged():
            assert not task.done(), "the save ended before it could be interrupted"
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert keys.staged() == [], "staged copy left"
        stored = json.loads(client.get(key))  # type: ignore[arg-type]
        body = stored["data"]["body"]
        if stored["revision"] == 1:
            break
        assert (stored["revision"], len(body), set(body)) == (2, 60_000_000, {"b"}), "mixed"
    else:
        pytest.fail("five cancellations landed after their save's last script was sent")
    assert (len(body), set(body)) == (2_000_000, {"a"}), "the record changed"
    item.body = "c" * 3_000_000  # type: ignore[attr-defined]
    await item.asave()
    assert (await scan.aload(reference)).body == "c" * 3_000_000  # type: ignore[attr-defined]


async def test_a_large_save_cancelled_while_waiting_for_a_connection_ends_at_once(
    keys: Keys,
) -> None:
    """A save of a large record cancelled while every pooled connection is busy (nothing of
    it sent yet) ends at once, not after the pool's timeout, and writes nothing."""
    backend = RedisBackend(f"{keys.url}&max_connections=1&pool_timeout=5")
    await backend.connect()
    pool = backend._connected().connection_pool
    now = datetime.now(UTC)
    record = StoredRecord("Waiting", uuid4(), b'{"b":"%b"}' % (b"x" * 3_000_000), 1, now, now)
    held = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        task = asyncio.create_task(backend.save_records([record]))
        await asyncio.sleep(0.2)
        assert not task.done(), "the save did not wait for the connection"
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 1
    finally:
        await pool.release(held)
    try:
        assert await backend.load_records([record.key]) == [None]
        assert list(keys.client.scan_iter(match=f"{keys.prefix}:*")) == []
    finally:
        await backend.disconnect()


def test_a_staged_copy_that_expired_while_written_is_refused() -> None:
    """The replies of a staging in pieces are checked: a SETRANGE that answers another length
    than the copy's (a copy that expired and was created again, shorter, by a later piece)
    or an error reply fails the save before its script runs."""
    staging = _Staging(b"k:staged:1", b"head", b"x" * (2 << 20))
    commands = list(staging.commands())
    assert len(commands) == 4  # SET, SETRANGE sizing the copy, two pieces
    length = staging.length
    staging.check(iter([b"OK", length, length, length]))
    with pytest.raises(StorageOperationError, match="expired or was changed"):
        staging.check(iter([b"OK", length, length, (1 << 20) + 4]))
    with pytest.raises(redis.ResponseError, match="OOM"):
        staging.check(iter([b"OK", redis.ResponseError("OOM"), length, length]))


async def loads_while_rewritten(
    backend: RedisBackend,
    record: StoredRecord,
    versions: list[bytes],
    loads: int = 30,
    *,
    alongside: Sequence[RecordKey] = (),
) -> list[StoredRecord]:
    """``loads`` loads of ``record`` (saved first as ``versions[0]``, without a revision
    check), alone or in a batch with the records of ``alongside``, while a task keeps
    rewriting it with each of ``versions`` in turn; the rewriter wrote at least once."""
    await backend.save_records([dataclasses.replace(record, data=versions[0])])
    stop = asyncio.Event()

    async def rewrite() -> int:
        writes = 0
        while not stop.is_set():
            data = versions[writes % 2]
            await backend.save_records([dataclasses.replace(record, data=data)])
            writes += 1
        return writes

    writer = asyncio.create_task(rewrite())
    found = []
    try:
        for _ in range(loads):
            loaded = (await backend.load_records([record.key, *alongside]))[0]
            assert loaded is not None
            found.append(loaded)
    finally:
        stop.set()
        writes = await writer
    assert writes > 0
    return found


async def test_a_large_record_rewritten_while_it_is_read_loads_one_whole_version(
    keys: Keys, backend: RedisBackend
) -> None:
    """Loads in pieces racing a writer that keeps replacing the record each return one
    version whole (a load that saw the record change reads it again), never a mix; so do
    batch loads (one MGET reply, its large document taken off the socket in pieces)."""
    versions = [b'{"b":"%b"}' % (letter * 3_000_000) for letter in (b"x", b"y")]
    now = datetime.now(UTC)
    record = StoredRecord("Race", uuid4(), versions[0], 1, now, now, None, None)
    loads = await loads_while_rewritten(backend, record, versions)
    assert all(loaded.data in versions for loaded in loads)
    small = StoredRecord("Race", uuid4(), b'{"b":"s"}', 1, now, now)
    await backend.save_records([small])
    batched = await loads_while_rewritten(backend, record, versions, alongside=[small.key])
    assert all(loaded.data in versions for loaded in batched)


@pytest.mark.usefixtures("storage_closed_after")
async def test_a_large_value_of_another_writer_names_the_key(keys: Keys) -> None:
    """A value over 1 MiB that is not our document is refused as one, naming the key."""
    client = keys.client
    scan = large_model_on(keys.url)
    reference = await scan(body="x").asave()
    key = keys.record(reference)
    client.set(key, b"z" * 3_000_000)
    with pytest.raises(StoredDataError, match=key):
        await scan.aload(reference)


def _stored(
    data: bytes, revision: int | None, *, ttl: float | None = None, id: UUID | None = None
) -> StoredRecord:
    now = datetime.now(UTC)
    return StoredRecord("Flushed", id or uuid4(), data, 1, now, now, ttl, revision)


def test_scripts_flushed_on_the_server_are_loaded_again() -> None:
    """After SCRIPT FLUSH, small and staged saves load the script on their connection and are
    written once, with their revisions and created_at."""
    server = servers.TempRedis()

    async def main() -> None:
        backend = RedisBackend(f"redis://127.0.0.1:{server.port}/0")
        await backend.connect()
        client = redis.Redis(port=server.port)
        try:
            small, large = _stored(b'{"n":1}', 0), _stored(b'{"b":"%b"}' % (b"x" * 20_000), 0)
            assert await backend.save_records([small]) == [1]
            client.script_flush()
            assert await backend.save_records([large]) == [1]  # staged: SET, then EVALSHA
            client.script_flush()
            again = _stored(b'{"n":2}', None, id=small.id)  # regardless: the save script
            assert await backend.save_records([again]) == [2]
            loaded, staged = await backend.load_records([small.key, large.key])
            assert loaded is not None
            assert staged is not None
            assert (loaded.data, loaded.revision, loaded.created_at) == (
                b'{"n":2}',
                2,
                small.created_at,
            )
            assert (staged.data, staged.revision) == (large.data, 1)
            assert list(client.scan_iter(match="*:staged:*")) == []
        finally:
            client.close()
            await backend.disconnect()

    try:
        asyncio.run(main())
    finally:
        server.stop()


async def test_a_write_without_ttl_sweeps_expired_entries_of_its_class(
    keys: Keys, backend: RedisBackend
) -> None:
    """Once a class has an expiry set, writes without a ttl still sweep its expired entries
    (and leave it themselves); a class that never had one gets no expiry set."""
    client = keys.client
    brief = [_stored(b"{}", 0, ttl=0.2) for _ in range(3)]
    assert await backend.save_records(brief) == [1, 1, 1]
    assert client.zcard(keys.of("Flushed", "expiry")) == 3
    await asyncio.sleep(0.4)
    renewed = _stored(b"{}", None, id=brief[0].id)  # expired: written anew, no ttl
    assert await backend.save_records([renewed, _stored(b"{}", 0)]) == [1, 1]
    assert client.zcard(keys.of("Flushed", "expiry")) == 0
    assert client.zcard(keys.of("Flushed", "index")) == 2
    assert await backend.count("Flushed") == 2
    assert not client.exists(keys.of("Other", "expiry"))
    other = _stored(b"{}", 0)
    await backend.save_records([dataclasses.replace(other, class_name="Other")])
    assert not client.exists(keys.of("Other", "expiry"))
    assert await backend.count("Other") == 1


async def test_a_first_save_refuses_an_id_that_exists_and_changes_nothing(
    keys: Keys, backend: RedisBackend
) -> None:
    """A first save (revision 0, no ttl) writes the document at revision 1 and its index entry
    (a large one unstaged); another first save of that id is a conflict that leaves the
    stored document and its index entry as they were."""
    client, index = keys.client, keys.of("Flushed", "index")
    small, large = _stored(b'{"n":1}', 0), _stored(b'{"b":"%b"}' % (b"x" * 20_000), 0)
    assert await backend.save_records([small]) == [1]
    assert await backend.save_records([large]) == [1]
    key = keys.of("Flushed", small.id)
    stored = client.get(key)
    assert stored is not None
    assert json.loads(stored) == {
        "created_at": small.created_at.isoformat(),
        "revision": 1,
        "schema_version": 1,
        "updated_at": small.updated_at.isoformat(),
        "data": {"n": 1},
    }
    assert client.zscore(index, str(small.id)) == small.created_at.timestamp()
    assert client.pttl(key) == -1
    assert not client.exists(keys.of("Flushed", "expiry"))
    assert keys.staged() == []
    (loaded,) = await backend.load_records([large.key])
    assert loaded is not None
    assert (loaded.data, loaded.revision) == (large.data, 1)
    await asyncio.sleep(0.002)  # another creation time
    rival = _stored(b'{"n":2}', 0, id=small.id)
    with pytest.raises(pydantic_toast.ConcurrencyError) as info:
        await backend.save_records([rival])
    assert info.value.current == 1
    assert client.get(key) == stored
    assert client.zscore(index, str(small.id)) == small.created_at.timestamp()
    assert await backend.count("Flushed") == 2


async def test_a_first_save_over_an_expired_records_entries_puts_them_right(
    keys: Keys, backend: RedisBackend
) -> None:
    """A first save without ttl of an id whose earlier record expired, its entries not yet
    swept: the index entry gets the new creation time, the id leaves the expiry set, and the
    class's other expired entries are swept, as any write does."""
    client = keys.client
    index, expiry = keys.of("Flushed", "index"), keys.of("Flushed", "expiry")
    brief = [_stored(b"{}", 0, ttl=0.2) for _ in range(3)]
    assert await backend.save_records(brief) == [1, 1, 1]
    await asyncio.sleep(0.4)
    assert client.zcard(index) == 3, "expired, not swept yet"
    again = _stored(b'{"n":1}', 0, id=brief[0].id)
    assert await backend.save_records([again]) == [1]
    assert client.zrange(index, 0, -1, withscores=True) == [
        (str(again.id).encode(), again.created_at.timestamp())
    ]
    assert not client.exists(expiry)
    assert await backend.count("Flushed") == 1
    (listed,) = await backend.list_records("Flushed", limit=10)
    assert (listed.id, listed.created_at, listed.data) == (
        again.id,
        again.created_at,
        b'{"n":1}',
    )


async def test_a_first_save_whose_reply_is_lost_over_an_expired_id_keeps_the_record_listed(
    keys: Keys, backend: RedisBackend
) -> None:
    """A first save without ttl over an expired record's unswept entries lands, its reply lost
    (so its second step, which takes the id out of the expiry set, never runs): the class's
    next write sweeps expired entries but keeps the live record in the index, so it is still
    listed and counted."""
    client = keys.client
    index, expiry = keys.of("Flushed", "index"), keys.of("Flushed", "expiry")
    port = client.connection_pool.connection_kwargs["port"]
    brief = [_stored(b"{}", 0, ttl=0.2) for _ in range(2)]
    assert await backend.save_records(brief) == [1, 1]
    await asyncio.sleep(0.4)
    assert client.zcard(expiry) == 2, "expired, not swept yet"
    with FaultProxy("127.0.0.1", port) as proxy:
        proxied = RedisBackend(keys.url.replace(f":{port}/", f":{proxy.port}/"))
        await proxied.connect()
        try:
            proxy.lose_reply_to(b"EXEC")
            again = _stored(b'{"n":1}', 0, id=brief[0].id)
            with pytest.raises(redis.ConnectionError):
                await proxied.save_records([again])
            assert proxy.replies_lost == 1
        finally:
            await proxied.disconnect()
    (landed,) = await backend.load_records([again.key])
    assert landed is not None
    assert landed.data == b'{"n":1}'
    other = _stored(b'{"n":2}', 0)
    assert await backend.save_records([other]) == [1]  # sweeps the expired entries
    assert client.zscore(index, str(again.id)) is not None
    assert await backend.count("Flushed") == 2
    listed = await backend.list_records("Flushed", limit=10)
    assert {record.id for record in listed} == {again.id, other.id}


async def test_a_single_update_keeps_what_the_store_holds(
    keys: Keys, backend: RedisBackend
) -> None:
    """A revision-checked update of one record writes the next revision and keeps the stored
    created_at; one holding another created_at (of a record deleted and created again since)
    conflicts, writing nothing; in a class with an expiry set, an update without ttl takes
    the record out of it."""
    client, expiry = keys.client, keys.of("Flushed", "expiry")
    first = _stored(b'{"n":1}', 0)
    assert await backend.save_records([first]) == [1]
    update = dataclasses.replace(first, data=b'{"n":2}', revision=1)
    assert await backend.save_records([update]) == [2]
    skewed = _stored(b'{"n":3}', 2, id=first.id)  # created_at: now, not first's
    assert skewed.created_at != first.created_at
    with pytest.raises(pydantic_toast.ConcurrencyError) as info:
        await backend.save_records([skewed])
    assert (info.value.expected, info.value.current) == (2, 2)
    current = dataclasses.replace(skewed, created_at=first.created_at)
    assert await backend.save_records([current]) == [3]
    (loaded,) = await backend.load_records([first.key])
    assert loaded is not None
    assert (loaded.data, loaded.revision, loaded.created_at) == (
        b'{"n":3}',
        3,
        first.created_at,
    )
    with pytest.raises(pydantic_toast.ConcurrencyError) as info:
        await backend.save_records([update])
    assert info.value.current == 3
    brief = _stored(b"{}", 0, ttl=60)
    assert await backend.save_records([brief]) == [1]
    assert client.zscore(expiry, str(brief.id)) is not None
    lasting = dataclasses.replace(brief, data=b'{"kept":true}', revision=1, ttl=None)
    assert await backend.save_records([lasting]) == [2]
    assert client.pttl(keys.of("Flushed", brief.id)) == -1
    assert not client.exists(expiry)
    assert await backend.count("Flushed") == 2


class _DeletingBeforePieces(RedisBackend):
    """Deletes the record a page is about to read the rest of (another writer's delete landing
    between the page script and the pieces)."""

    async def _load_large(self, record_key: Any, name: str, first: bytes) -> Any:
        await self._connected().delete(name)
        return await super()._load_large(record_key, name, first)


async def test_a_page_reads_large_documents_in_pieces_exactly(
    keys: Keys, backend: RedisBackend
) -> None:
    """A page holding records above 1 MiB (multi-byte text) and small ones lists them all,
    newest first, each exactly, across page boundaries too; a large record deleted between the
    page and its pieces has the page read again whole, without it (never short of the limit)."""
    deleting = _DeletingBeforePieces(keys.url)
    await deleting.connect()
    try:
        start = datetime.now(UTC)
        texts = [_multibyte(3, "a"), "small", _multibyte(2, "b"), "tiny", _multibyte(1.2, "c")]
        records = []
        for offset, text in enumerate(texts):
            created = start + timedelta(seconds=offset)
            data = json.dumps({"b": text}, ensure_ascii=False).encode()
            records.append(StoredRecord("Paged", uuid4(), data, 1, created, created))
        await backend.save_records(records)
        newest = list(reversed(records))
        page = await backend.list_records("Paged", limit=10)
        assert [(r.id, r.data, r.revision) for r in page] == [(r.id, r.data, 1) for r in newest]
        first = await backend.list_records("Paged", limit=2)
        second = await backend.list_records("Paged", limit=2, after=PageCursor.of(first[-1]))
        assert [r.data for r in first + second] == [r.data for r in newest[:4]]
        page = await deleting.list_records("Paged", limit=3)
        survivors = [r for r in newest if r.id != newest[0].id]
        assert [r.data for r in page] == [r.data for r in survivors[:3]]
    finally:
        await deleting.disconnect()


def _commands(client: redis.Redis) -> dict[str, int]:
    """Calls of each command the server ran so far (INFO commandstats)."""
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in client.info("commandstats").items()
    }


async def test_a_batch_load_reads_its_records_with_the_collector_paused(
    backend: RedisBackend,
) -> None:
    """A batch load of 5,000 records starts no garbage collection while it reads them (else
    one per 700 records, each moving the batch towards the oldest generation), and reads
    created_at and updated_at exactly, the same or not."""
    now = datetime.now(UTC)
    records = [
        StoredRecord("Paused", uuid4(), b'{"n":%d}' % i, 1, now, now, None, 0) for i in range(5000)
    ]
    await backend.save_records(records)
    later = dataclasses.replace(records[1], updated_at=now + timedelta(seconds=1), revision=1)
    await backend.save_records([later])
    started: list[int] = []

    def collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.collect()
    gc.callbacks.append(collection)
    try:
        loaded = await backend.load_records(ClassKeys("Paused", [r.id for r in records]))
    finally:
        gc.callbacks.remove(collection)
    assert len(started) <= 2, started  # the reads' own few objects (replies, futures)
    assert [record.data for record in loaded if record] == [r.data for r in records]
    first, second = loaded[0], loaded[1]
    assert first is not None
    assert second is not None
    assert (first.created_at, first.updated_at) == (now, now)
    assert (second.created_at, second.updated_at) == (now, later.updated_at)


async def test_a_batch_of_first_saves_is_one_transaction_per_chunk() -> None:
    """A batch of new records without ttl, two classes, 250 records at batch_size=100: one
    round of EXISTS, then three MULTI/EXEC (no script), every document at revision 1 with its
    created_at, each class's index holding its ids at their creation times, no expiry set;
    each class's count is exact."""
    server = servers.TempRedis()
    backend = RedisBackend(f"redis://127.0.0.1:{server.port}/0?prefix=p&batch_size=100")
    client = redis.Redis(port=server.port)
    try:
        await backend.connect()
        now = datetime.now(UTC)
        records = [
            StoredRecord("A" if i % 3 else "B", uuid4(), b'{"n":%d}' % i, 1, now, now, None, 0)
            for i in range(250)
        ]
        before = _commands(client)
        assert await backend.save_records(records) == [1] * 250
        ran = {name: calls - before.get(name, 0) for name, calls in _commands(client).items()}
        assert ran.get("evalsha", 0) == 0
        assert (ran["multi"], ran["exec"], ran["set"]) == (3, 3, 250)
        loaded = await backend.load_records([record.key for record in records])
        for record, found in zip(records, loaded, strict=True):
            assert found is not None
            assert (found.data, found.revision, found.created_at) == (
                record.data,
                1,
                record.created_at,
            )
            assert client.pttl(f"p:{record.class_name}:{record.id}") == -1
        for name in ("A", "B"):
            ids = {str(r.id).encode() for r in records if r.class_name == name}
            entries = dict(client.zrange(f"p:{name}:index", 0, -1, withscores=True))
            assert set(entries) == ids
            assert set(entries.values()) == {now.timestamp()}
            assert not client.exists(f"p:{name}:expiry")
            assert await backend.count(name) == len(ids)
    finally:
        await backend.disconnect()
        client.close()
        server.stop()


async def test_a_batch_of_first_saves_with_an_existing_id_writes_nothing(
    keys: Keys, backend: RedisBackend
) -> None:
    """One record of a batch of new records exists already: ConcurrencyError naming it, no
    record of the batch written, the existing one and its index entry left as they were."""
    client = keys.client
    existing = _stored(b'{"n":0}', 0)
    assert await backend.save_records([existing]) == [1]
    stored = client.get(keys.of("Flushed", existing.id))
    await asyncio.sleep(0.002)  # another creation time
    batch = [_stored(b'{"n":%d}' % i, 0) for i in range(1, 5)]
    batch.insert(2, _stored(b'{"n":9}', 0, id=existing.id))
    with pytest.raises(pydantic_toast.ConcurrencyError) as info:
        await backend.save_records(batch)
    assert (info.value.id, info.value.current, info.value.written) == (existing.id, 1, {})
    assert client.get(keys.of("Flushed", existing.id)) == stored
    assert client.zrange(keys.of("Flushed", "index"), 0, -1, withscores=True) == [
        (str(existing.id).encode(), existing.created_at.timestamp())
    ]
    loaded = await backend.load_records([r.key for r in batch])
    assert [None if found is None else found.data for found in loaded] == [
        None,
        None,
        b'{"n":0}',
        None,
        None,
    ]


async def test_a_batch_of_first_saves_keeps_only_its_transactions_replies(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of new records written as transactions holds one reply per transaction (the
    list of its commands' replies), not also an OK or QUEUED per command of the batch."""
    chunked = RedisBackend(f"{keys.url}&batch_size=2")
    await chunked.connect()
    try:
        batch = [_stored(b'{"n":%d}' % i, 0) for i in range(5)]
        pipeline = redis_module._resp.pipeline
        held: list[list[Any]] = []

        async def watched(*args: Any, **kwargs: Any) -> Any:
            replies = await pipeline(*args, **kwargs)
            held.append(replies)
            return replies

        monkeypatch.setattr(redis_module._resp, "pipeline", watched)
        assert await chunked.save_records(batch) == [1] * 5
        checks, transactions = held
        assert checks == [0] * 4  # EXISTS of each chunk, then of the class's expiry set
        assert [type(reply) for reply in transactions] == [list] * 3  # chunks of 2, 2 and 1
    finally:
        await chunked.disconnect()


async def test_a_batch_of_first_saves_packs_its_existence_checks_chunk_by_chunk(
    keys: Keys,
) -> None:
    """The check that no record of a batch of new records exists packs each chunk's EXISTS
    as it is sent: the save allocates far less than a copy of every key on top of the keys
    themselves (which it keeps for the transactions)."""
    chunked = RedisBackend(f"{keys.url}&batch_size=100")
    await chunked.connect()
    try:
        count = 10_000
        batch = [_stored(b'{"n":1}', 0) for _ in range(count)]
        assert await chunked.save_records(batch[:2]) == [1, 1]  # connected outside the measure
        gc.collect()
        tracemalloc.start()
        try:
            revisions = await chunked.save_records(batch[2:])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert revisions == [1] * (count - 2)
        key = len(keys.of("Flushed", batch[0].id)) + 33  # one key as a bytes object
        assert peak < (key + 100) * count  # all packed at once: 2 more copies of each key
    finally:
        await chunked.disconnect()


async def test_a_batch_of_first_saves_raced_by_another_writer_keeps_the_rest_known(
    keys: Keys, backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer creates one record of a batch of new records between the check and its
    transaction: ConcurrencyError naming it, with the other records written at revision 1 and
    listed in ``written``; the rival's document and index entry are left as they were."""
    chunked = RedisBackend(f"{keys.url}&batch_size=2")
    await chunked.connect()
    try:
        batch = [_stored(b'{"n":%d}' % i, 0) for i in range(5)]
        rival = _stored(b'{"rival":1}', 0, id=batch[3].id)
        pipeline = redis_module._resp.pipeline
        calls: list[object] = []

        async def raced(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            if len(calls) == 2:  # the transactions (the first call checks that none exists)
                assert await backend.save_records([rival]) == [1]
            return await pipeline(*args, **kwargs)

        monkeypatch.setattr(redis_module._resp, "pipeline", raced)
        with pytest.raises(pydantic_toast.ConcurrencyError) as info:
            await chunked.save_records(batch)
        monkeypatch.undo()
        assert (info.value.id, info.value.current) == (rival.id, 1)
        assert info.value.written == {r.key: 1 for r in batch if r.id != rival.id}
        loaded = await chunked.load_records([r.key for r in batch])
        assert [None if found is None else found.data for found in loaded] == [
            rival.data if r.id == rival.id else r.data for r in batch
        ]
        index = dict(keys.client.zrange(keys.of("Flushed", "index"), 0, -1, withscores=True))
        assert index[str(rival.id).encode()] == rival.created_at.timestamp()
        assert len(index) == 5
        assert await chunked.count("Flushed") == 5
    finally:
        await chunked.disconnect()


async def test_a_batch_of_first_saves_in_a_class_with_an_expiry_set_sweeps_it(
    keys: Keys, backend: RedisBackend
) -> None:
    """New records without ttl in a class whose expired records are not swept yet: the save
    script writes them and sweeps the expired entries; an id reused from an expired record
    gets its new creation time in the index."""
    client = keys.client
    brief = [_stored(b"{}", 0, ttl=0.2) for _ in range(3)]
    assert await backend.save_records(brief) == [1, 1, 1]
    await asyncio.sleep(0.4)
    batch = [_stored(b'{"n":1}', 0, id=brief[0].id), _stored(b'{"n":2}', 0)]
    assert await backend.save_records(batch) == [1, 1]
    assert dict(client.zrange(keys.of("Flushed", "index"), 0, -1, withscores=True)) == {
        str(r.id).encode(): r.created_at.timestamp() for r in batch
    }
    assert not client.exists(keys.of("Flushed", "expiry"))
    assert await backend.count("Flushed") == 2


async def test_a_batch_of_first_saves_over_a_left_index_entry_puts_its_score_right(
    keys: Keys, backend: RedisBackend
) -> None:
    """An index entry left without its record (an evicted record's) for an id a batch of new
    records writes: the entry gets the new record's creation time, the others are added."""
    index = keys.of("Flushed", "index")
    batch = [_stored(b'{"n":%d}' % i, 0) for i in range(3)]
    keys.client.zadd(index, {str(batch[1].id): 12.5})
    assert await backend.save_records(batch) == [1, 1, 1]
    assert dict(keys.client.zrange(index, 0, -1, withscores=True)) == {
        str(r.id).encode(): r.created_at.timestamp() for r in batch
    }
    assert await backend.count("Flushed") == 3


@pytest.mark.usefixtures("storage_closed_after")
@pytest.mark.parametrize("count", [35, 8], ids=["chunked", "one-chunk"])
async def test_a_batch_cancelled_after_its_first_chunks_says_so_when_saved_again(
    keys: Keys, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """A batch of new records cancelled after its first chunks reached the server, saved
    again, is refused (its own landed records cannot be told from another writer's with the
    same data: a second increment would be lost) with a message naming the cancelled save as
    a possible cause; the landed records load as the models hold them."""
    session = model_on(f"{keys.url}&batch_size=10")
    models = [session(user=f"u{i}") for i in range(count)]
    pipeline = redis_module._resp.pipeline
    calls: list[object] = []

    async def cancelled_after_two_chunks(pool: Any, blocks: Any, **options: Any) -> Any:
        calls.append(blocks)
        if len(calls) == 1:  # the check that no record exists: the transactions come next
            return await pipeline(pool, blocks, **options)

        def two_then_cancel() -> Iterator[Any]:
            for number, block in enumerate(blocks):
                if number == 2:  # two chunks written, as a cancellation between writes leaves
                    raise asyncio.CancelledError
                yield block
            raise asyncio.CancelledError  # one chunk only: cancelled after its write

        return await pipeline(pool, two_then_cancel(), **options)

    monkeypatch.setattr(redis_module._resp, "pipeline", cancelled_after_two_chunks)
    with pytest.raises(asyncio.CancelledError):
        await pydantic_toast.adump(models)
    monkeypatch.undo()
    landed = min(count, 20)
    assert await pydantic_toast.acount(session) == landed
    with pytest.raises(pydantic_toast.ConcurrencyError) as info:
        await pydantic_toast.adump(models)
    assert (info.value.expected, info.value.current) == (0, 1)
    assert "an earlier save of this instance landed although it was cancelled" in str(info.value)
    (model,) = [m for m in models if m.external_id == info.value.id]
    assert (await session.aload(info.value.id)).user == model.user
    assert await pydantic_toast.acount(session) == landed
    two_ahead = pydantic_toast.ConcurrencyError("A", info.value.id, expected=1, current=3)
    assert "cancelled" not in str(two_ahead)


# created_at 2026-01-02T03:04:05.600000+00:00 as another tool may spell it.
_SPELLINGS = (
    "2026-01-02T03:04:05.600000Z",
    "2026-01-02T03:04:05.6+00:00",
    "2026-01-02 05:04:05.600000+02:00",
    "2026-01-01T23:04:05.6000000-0400",
)


def _foreign_document(created_at: str, revision: int, user: str) -> str:
    """A record as another tool writes it: created_at spelt ``created_at``."""
    return (
        f'{{"created_at":"{created_at}","revision":{revision},"schema_version":1,'
        f'"updated_at":"{created_at}","data":{{"user":"{user}"}}}}'
    )


@pytest.mark.parametrize("spelling", _SPELLINGS)
def test_another_spelling_of_created_at_saves_and_deletes_with_checks(
    keys: Keys, spelling: str
) -> None:
    """A document another tool wrote, spelling its created_at otherwise than the library
    (``Z``, fewer or more fraction digits, another offset, a space), loads and saves with
    revision checks (the scripts compare the instant, not the text) keeping that spelling,
    and a checked delete of it deletes; a document at the same revision whose created_at is
    another instant (created again) still conflicts on both."""
    session = model_on(keys.url)
    name = model_name(session)
    id = uuid4()
    key = keys.of(name, id)
    keys.client.set(key, _foreign_document(spelling, 3, "ada"))
    loaded = session.model_validate({"class_name": name, "id": str(id)})
    loaded.user = "bob"  # type: ignore[attr-defined]
    loaded.model_dump()
    assert loaded.external_revision == 4
    stored = json.loads(keys.client.get(key))  # type: ignore[arg-type]
    assert (stored["created_at"], stored["revision"], stored["data"]) == (
        spelling,
        4,
        {"user": "bob"},
    )

    stale = session.model_validate({"class_name": name, "id": str(id)})
    other = spelling.replace(":05.6", ":05.7", 1)  # a tenth of a second later: another record
    keys.client.set(key, _foreign_document(other, 4, "eve"))
    stale.user = "mallory"  # type: ignore[attr-defined]
    with pytest.raises(pydantic_toast.ConcurrencyError) as info:
        stale.model_dump()
    assert (info.value.expected, info.value.current) == (4, 4)
    with pytest.raises(pydantic_toast.ConcurrencyError):
        pydantic_toast.delete(session, stale, revision=4)
    assert json.loads(keys.client.get(key))["data"] == {"user": "eve"}  # type: ignore[arg-type]

    keys.client.set(key, _foreign_document(spelling, 4, "ada"))
    pydantic_toast.delete(session, stale, revision=4)
    assert keys.client.get(key) is None


async def test_another_spelling_of_created_at_passes_a_chunked_batchs_check(
    keys: Keys,
) -> None:
    """A batch larger than batch_size (checked whole by the check script first) writes
    records whose stored created_at is spelt otherwise, and refuses, writing nothing, when one
    record's created_at is another instant."""
    backend = RedisBackend(f"{keys.url}&batch_size=2")
    await backend.connect()
    try:
        created = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
        records = [
            StoredRecord("Spelt", uuid4(), b'{"user":"x"}', 1, created, created, None, 2)
            for _ in _SPELLINGS
        ]
        for record, spelling in zip(records, _SPELLINGS, strict=True):
            keys.client.set(keys.of("Spelt", record.id), _foreign_document(spelling, 2, "a"))
        assert await backend.save_records(records) == [3, 3, 3, 3]
        later = created + timedelta(microseconds=1)
        stale = [dataclasses.replace(r, revision=3) for r in records]
        stale[2] = dataclasses.replace(stale[2], created_at=later)
        with pytest.raises(pydantic_toast.ConcurrencyError) as info:
            await backend.save_records(stale)
        assert (info.value.id, info.value.expected, info.value.current) == (records[2].id, 3, 3)
        assert [r.revision for r in await backend.load_records([r.key for r in records]) if r] == [
            3,
            3,
            3,
            3,
        ]
    finally:
        await backend.disconnect()
