"""redis+cluster:// on a real local cluster: 6 redis-server processes, 3 primaries, 3 replicas."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import re
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio as redis
from redis.exceptions import ClusterError, ResponseError

import pydantic_toast
from pydantic_toast import (
    ConcurrencyError,
    ExternalBaseModel,
    ExternalConfigDict,
    OutcomeUnknownError,
    RecordNotFoundError,
    StorageBusyError,
    StorageConnectionError,
    StorageOperationError,
)
from pydantic_toast._records import PageCursor, RecordKey, StoredRecord
from pydantic_toast._url import StorageURL
from pydantic_toast.backends import redis as single
from pydantic_toast.backends import redis_cluster as cluster_backend
from pydantic_toast.backends.redis_cluster import RedisClusterBackend
from pydantic_toast.runtime.errors import Failure, translate
from pydantic_toast.runtime.storage import Storage
from pydantic_toast.testing.conformance import BackendConformance
from tests import servers
from tests.failover import run_with
from tests.integration.test_redis import (
    _SPELLINGS,
    _foreign_document,
    _multibyte,
    loads_while_rewritten,
    traced_peak,
)

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture(scope="module")
def cluster() -> Iterator[servers.TempRedisCluster]:
    """A 3-primary, 3-replica cluster for this module, torn down afterwards."""
    try:
        cluster = servers.TempRedisCluster()
    except FileNotFoundError:
        servers.missing_server("Redis Cluster", "(no variable: needs redis-server)")
        return
    try:
        yield cluster
    finally:
        cluster.destroy()


_REBUILD_FAILED: list[BaseException] = []


@pytest.fixture(autouse=True)
def _whole_cluster(cluster: servers.TempRedisCluster) -> None:
    """Each test starts on a cluster whose nodes all run, whose replicas are linked and
    whose slots are all settled (a new one if the last test left it beyond repair; once a
    new one could not be made, every later test fails at once, naming why)."""
    if _REBUILD_FAILED:
        pytest.fail(f"the Redis Cluster could not be rebuilt: {_REBUILD_FAILED[0]!r}")
    try:
        cluster.heal(timeout=60)
    except (RuntimeError, subprocess.SubprocessError):
        try:
            cluster.rebuild()
        except BaseException as exc:
            _REBUILD_FAILED.append(exc)
            raise


class TestRedisClusterConformance(BackendConformance):
    """The backend conformance suite against redis+cluster://."""

    @pytest.fixture
    def storage_url(self, cluster: servers.TempRedisCluster) -> str:  # type: ignore[override]
        """A fresh key prefix on the cluster."""
        return cluster.url(f"conf{uuid4().hex[:10]}")


def _records(count: int, class_name: str = "Item") -> list[StoredRecord]:
    now = datetime.now(UTC)
    return [
        StoredRecord(
            class_name=class_name,
            id=uuid4(),
            data=b'{"n":%d}' % i,
            schema_version=1,
            created_at=now,
            updated_at=now,
        )
        for i in range(count)
    ]


@contextlib.asynccontextmanager
async def _connected(url: str) -> AsyncIterator[RedisClusterBackend]:
    """A connected backend of ``url``, disconnected on leaving."""
    backend = RedisClusterBackend(url)
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.disconnect()


def test_key_layout_spreads_a_class_over_bucket_slots(cluster: servers.TempRedisCluster) -> None:
    """A record and its bucket's index share a slot; a class's buckets land on every primary."""

    async def main() -> None:
        async with _connected(cluster.url("layout", buckets=16)) as backend:
            (record,) = _records(1)
            await backend.save_records([record])
            bucket = record.id.int % 16
            assert backend.key("Item", record.id) == f"{{layout:Item:{bucket}}}:{record.id}"
            client = backend._connected_cluster()
            slot = await client.cluster_keyslot(backend.key("Item", record.id))
            assert slot == await client.cluster_keyslot(backend.index_key("Item", bucket))
            owners = {
                client.get_node_from_key(backend.index_key("Item", b)).name for b in range(16)
            }
            assert len(owners) == 3

    asyncio.run(main())


def test_a_value_that_is_no_record_is_skipped_with_skip_invalid(
    cluster: servers.TempRedisCluster,
) -> None:
    """MessageStore(skip_invalid=True) leaves out a batch whose value is no record (a string
    SET under its key) on a cluster too, whichever buckets hold it and the turns newer than
    it: every other turn loads, in order (a bucket's page stops at such a value, so a page
    of one is told apart across the buckets before the listing goes on past it)."""
    from pydantic_ai.messages import ModelRequest, UserPromptPart

    from pydantic_toast.ai import MessageStore
    from pydantic_toast.ai._storage import backend

    url = cluster.url(f"skip{uuid4().hex[:8]}")

    async def main() -> list[str]:
        store = MessageStore(url, skip_invalid=True, page_size=3)
        ids = []
        for turn in range(12):
            request = ModelRequest(parts=[UserPromptPart(f"t{turn}")])
            appended = await store.aappend("c", [request])
            assert appended is not None
            ids.append(appended.batch_id)
        connected = await backend(url)
        redis_backend: Any = connected.backend
        client = redis_backend._connected_cluster()
        await client.set(redis_backend.key(store._batch_class("c"), ids[7]), b"not a record")
        history = await store.aload("c")
        return [message.parts[0].content for message in history.messages]  # type: ignore[misc]

    try:
        assert asyncio.run(main()) == [f"t{turn}" for turn in range(12) if turn != 7]
    finally:
        pydantic_toast.close_storage()


def test_a_record_locked_by_a_batch_in_progress_is_not_written(
    cluster: servers.TempRedisCluster,
) -> None:
    """Between a batch's two phases its records are locked: a single save or a delete of one
    of them is refused as busy (nothing written), and goes through once the lock is gone."""

    async def main() -> None:
        async with _connected(cluster.url(f"lock{uuid4().hex[:8]}")) as backend:
            (record,) = _records(1)
            await backend.save_records([record])
            client = backend._connected_cluster()
            lock = backend.lock_key("Item", record.id)
            await client.set(lock, "another-batch", px=5000)
            changed = dataclasses.replace(record, data=b'{"n":-1}', revision=None)
            with pytest.raises(StorageBusyError, match="batch in progress"):
                await backend.save_records([changed])
            with pytest.raises(StorageBusyError, match="batch in progress"):
                await backend.delete(record.id, "Item")
            (stored,) = await backend.load_records([("Item", record.id)])
            assert stored is not None
            assert stored.data == record.data
            await client.delete(lock)
            assert await backend.save_records([changed]) == [2]

    asyncio.run(main())


def test_a_stale_batch_across_slots_writes_nothing(cluster: servers.TempRedisCluster) -> None:
    """One stale record in a batch spanning several slots: no record of the batch is written,
    and no lock is left behind."""

    async def main() -> None:
        async with _connected(cluster.url(f"stale{uuid4().hex[:8]}")) as backend:
            records = _records(40)
            assert len({backend.bucket(r.id) for r in records}) > 1
            await backend.save_records(records)
            updated = [dataclasses.replace(r, data=b'{"n":0}', revision=1) for r in records]
            updated[-1] = dataclasses.replace(updated[-1], revision=7)
            with pytest.raises(ConcurrencyError):
                await backend.save_records(updated)
            loaded = await backend.load_records([("Item", r.id) for r in records])
            assert [r.data for r in loaded if r is not None] == [r.data for r in records]
            client = backend._connected_cluster()
            locks = [backend.lock_key("Item", r.id) for r in records]
            assert await client.exists(*locks) == 0
            updated[-1] = dataclasses.replace(updated[-1], revision=1)
            assert await backend.save_records(updated) == [2] * 40

    asyncio.run(main())


def test_another_spelling_of_created_at_passes_a_batch_across_slots(
    cluster: servers.TempRedisCluster,
) -> None:
    """A batch spanning several slots (the prepare script checks each slot, then the save
    script writes) writes records whose stored created_at another tool spelt otherwise, and
    writes nothing, leaving no lock, when one record's created_at is another instant."""

    async def main() -> None:
        async with _connected(cluster.url(f"spelt{uuid4().hex[:8]}")) as backend:
            records = [dataclasses.replace(r, revision=2) for r in _records(40)]
            records = [
                dataclasses.replace(r, created_at=datetime(2026, 1, 2, 3, 4, 5, 600000, UTC))
                for r in records
            ]
            assert len({backend.bucket(r.id) for r in records}) > 1
            client = backend._connected_cluster()
            for index, record in enumerate(records):
                spelling = _SPELLINGS[index % len(_SPELLINGS)]
                await client.set(
                    backend.key("Item", record.id), _foreign_document(spelling, 2, "a")
                )
            assert await backend.save_records(records) == [3] * 40
            stale = [dataclasses.replace(r, revision=3, data=b'{"n":-1}') for r in records]
            later = records[-1].created_at + timedelta(microseconds=1)
            stale[-1] = dataclasses.replace(stale[-1], created_at=later)
            with pytest.raises(ConcurrencyError) as info:
                await backend.save_records(stale)
            assert (info.value.id, info.value.expected, info.value.current) == (
                records[-1].id,
                3,
                3,
            )
            loaded = await backend.load_records([("Item", r.id) for r in records])
            assert [r.data for r in loaded if r is not None] == [r.data for r in records]
            locks = [backend.lock_key("Item", r.id) for r in records]
            assert await client.exists(*locks) == 0

    asyncio.run(main())


def test_a_batch_of_10000_records(cluster: servers.TempRedisCluster) -> None:
    """10,000 records saved in one batch (split by slot) all load back, list and count."""

    async def main() -> None:
        async with _connected(cluster.url(f"big{uuid4().hex[:8]}")) as backend:
            records = _records(10_000)
            started = time.perf_counter()
            await backend.save_records(records)
            saved = time.perf_counter() - started
            loaded = await backend.load_records([("Item", r.id) for r in records])
            assert [r.data for r in loaded if r is not None] == [r.data for r in records]
            assert await backend.count("Item") == 10_000
            first = await backend.list_records("Item", limit=5000)
            rest = await backend.list_ids("Item", limit=6000, after=PageCursor.of(first[-1]))
            assert len({r.id for r in first} | set(rest)) == 10_000
            print(f"\n10,000 records saved in {saved:.2f} s")

    asyncio.run(main())


def _arguments(entry: list[Any]) -> list[bytes]:
    """A SLOWLOG entry's command line, its ``... (N more arguments)`` tail counted in."""
    line: list[bytes] = entry[3]
    more = re.fullmatch(rb"\.\.\. \((\d+) more arguments\)", line[-1])
    return line if more is None else line[:-1] + [b""] * int(more[1])


async def _calls_made(
    cluster: servers.TempRedisCluster,
    backend: RedisClusterBackend,
    action: Callable[[], Awaitable[None]],
) -> list[list[bytes]]:
    """The MGET and script calls the primaries ran during ``action`` (their SLOWLOG, logging
    every command meanwhile), each script call named: prepare, check or save."""
    scripts = {
        backend._prepare_script.sha.encode(): b"prepare",
        backend._check_script.sha.encode(): b"check",
        backend._script.sha.encode(): b"save",
    }
    nodes = [redis.Redis(port=int(p["port"])) for p in cluster.primaries()]
    try:
        for node in nodes:
            await node.config_set("slowlog-log-slower-than", 0)
            await node.config_set("slowlog-max-len", 100_000)
            await node.slowlog_reset()
        await action()
        commands = [
            _arguments(entry)
            for node in nodes
            for entry in await node.execute_command("SLOWLOG", "GET", -1)
        ]
    finally:
        for node in nodes:
            await node.config_set("slowlog-log-slower-than", 10_000)
            await node.config_set("slowlog-max-len", 128)
            await node.aclose()
    calls = [c for c in commands if c[0].upper() in (b"MGET", b"EVALSHA")]
    for call in calls:
        if call[0].upper() == b"EVALSHA":
            call[0] = scripts[call[1]]
    return calls


# Keys each script takes per record.
_KEYS_PER_RECORD = {b"prepare": 2, b"check": 1, b"save": 5}


def _records_per_call(calls: list[list[bytes]], script: bytes) -> list[int]:
    return [int(call[2]) // _KEYS_PER_RECORD[script] for call in calls if call[0] == script]


def test_batches_take_batch_size_records_per_server_call(
    cluster: servers.TempRedisCluster,
) -> None:
    """At batch_size=7, a batch of 60 records over 2 buckets is saved, updated and loaded
    exactly, and no server call takes more than 7 of them: each MGET reads 7 keys at most
    and each script call (phase 1 lock, revision check, save) is given 7 records at most."""

    async def main() -> list[list[bytes]]:
        url = cluster.url(f"size{uuid4().hex[:8]}", buckets=2, batch_size=7)
        async with _connected(url) as backend:
            records = _records(60)

            async def batches() -> None:
                assert await backend.save_records(records) == [1] * 60
                updated = [dataclasses.replace(r, data=b'{"n":0}', revision=1) for r in records]
                assert await backend.save_records(updated) == [2] * 60
                loaded = await backend.load_records([r.key for r in records])
                pairs = [(r.data, r.revision) if r else None for r in loaded]
                assert pairs == [(b'{"n":0}', 2)] * 60

            return await _calls_made(cluster, backend, batches)

    calls = asyncio.run(main())
    mgets = [len(call) - 1 for call in calls if call[0].upper() == b"MGET"]
    assert sum(mgets) == 60
    assert max(mgets) <= 7, mgets
    for script in _KEYS_PER_RECORD:
        records = _records_per_call(calls, script)
        assert records, f"no {script!r} script call"
        assert max(records) <= 7, (script, records)


def test_a_save_script_call_carries_1_mib_of_documents_at_most(
    cluster: servers.TempRedisCluster,
) -> None:
    """25 records of 100 KB in one bucket (documents up to 1 MiB travel in the script's
    arguments here) are saved and updated in script calls of 10 records at most, not one
    call of 25 (whose Lua copies made it block the node for milliseconds), and load back
    exactly."""

    async def main() -> list[list[bytes]]:
        async with _connected(cluster.url(f"bytes{uuid4().hex[:8]}", buckets=1)) as backend:
            records = [_large(_multibyte(0.1, str(i))) for i in range(25)]
            assert all(100_000 < len(r.data) < single._PIECE for r in records)

            async def batches() -> None:
                assert await backend.save_records(records) == [1] * 25
                updated = [dataclasses.replace(r, revision=1) for r in records]
                assert await backend.save_records(updated) == [2] * 25
                loaded = await backend.load_records([r.key for r in records])
                assert [r.data if r else None for r in loaded] == [r.data for r in records]

            return await _calls_made(cluster, backend, batches)

    saves = _records_per_call(asyncio.run(main()), b"save")
    assert sum(saves) >= 50  # more when the script was loaded first (NOSCRIPT, then again)
    assert max(saves) <= 10, saves


def test_many_buckets_need_no_more_connections(cluster: servers.TempRedisCluster) -> None:
    """With more buckets than connections (1,024 buckets, max_connections=8 per node) a
    batch across hundreds of buckets, a page and a count work: each keeps at most 8 calls in
    flight (one per bucket, all at once, failed at once with StorageBusyError: the cluster
    client does not wait for a free connection)."""

    async def main() -> None:
        url = cluster.url(f"wide{uuid4().hex[:8]}", buckets=1024, max_connections=8)
        async with _connected(url) as backend:
            records = _records(600)
            assert len({backend.bucket(r.id) for r in records}) > 300
            await backend.save_records(records)
            assert await backend.count("Item") == 600
            page = await backend.list_records("Item", limit=600)
            assert {r.id for r in page} == {r.id for r in records}

    asyncio.run(main())


@pytest.mark.parametrize(
    "options",
    [{}, {"buckets": 16384}, {"buckets": 16384, "wait_replicas": 1, "wait_timeout": 500}],
    ids=["16-buckets", "a-slot-per-record", "a-slot-per-record-wait-1-replica"],
)
def test_resharding_during_a_workload(
    cluster: servers.TempRedisCluster, options: dict[str, int]
) -> None:
    """Slots migrating between primaries under writes: no error, no acknowledged write lost.

    With a slot per record most saves meet a slot being migrated or just moved (MOVED);
    redis-py's default closed every connection on each 5th MOVED, and the commands other
    writers had in flight were sent again: about 20 saves per run failed (ConcurrencyError
    for a new record written twice, or a TypeError/AttributeError from a connection closed
    under it).
    """
    primaries = cluster.primaries()
    source, target = primaries[0], primaries[1]

    def reshard() -> None:
        cluster.redis_cli(
            "--cluster", "reshard", f"127.0.0.1:{source['port']}",
            "--cluster-from", source["id"], "--cluster-to", target["id"],
            "--cluster-slots", "1000", "--cluster-yes",
        )  # fmt: skip

    figures = run_with(reshard, cluster.url(f"reshard{uuid4().hex[:8]}", **options))
    print(f"\nresharding 1000 slots ({options}): {figures}")
    cluster.wait_ok()
    assert figures["errors"] == 0, figures["error_kinds"]
    assert figures["lost"] == 0


def test_a_save_waiting_for_a_replica_returns_once_one_has_it(
    cluster: servers.TempRedisCluster,
) -> None:
    """With wait_replicas=1 a save is acknowledged only once a replica of the record's
    primary has it: refused while that replica is stopped, also when the slot moved to
    another primary since the client last looked (MOVED: the write and WAIT go there
    together; WAIT on the old primary would confirm nothing); without the option the
    same save is acknowledged."""

    async def main() -> None:
        prefix = f"wait{uuid4().hex[:8]}"
        waiting_url = cluster.url(prefix, buckets=1, wait_replicas=1, wait_timeout=300)
        async with (
            _connected(waiting_url) as waiting,
            _connected(cluster.url(prefix, buckets=1)) as plain,
        ):
            await waiting.save_records(_records(1))  # learns the topology
            client = waiting._connected_cluster()
            index = waiting.index_key("Item")
            slot = await client.cluster_keyslot(index)
            owner = client.get_node_from_key(index)
            assert owner is not None
            target = next(
                int(p["port"]) for p in cluster.primaries() if int(p["port"]) != owner.port
            )
            for primary in (owner.port, target):
                replica = cluster.replica_of(primary)
                with cluster.paused(replica):
                    with pytest.raises(StorageOperationError, match="on 0 of 1 replica"):
                        await waiting.save_records(_records(1))
                    await plain.save_records(_records(1))
                (record,) = _records(1)
                await waiting.save_records([record])
                on_replica = redis.Redis(port=replica)
                try:
                    await on_replica.execute_command("READONLY")
                    assert await on_replica.exists(waiting.key("Item", record.id)) == 1
                finally:
                    await on_replica.aclose()
                if primary == owner.port:  # then the same through a MOVED reply
                    await asyncio.to_thread(cluster.move_slot, slot, owner.port, target)

    asyncio.run(main())


def test_a_primary_demoted_under_a_waiting_save_is_a_lost_reply() -> None:
    """UNBLOCKED (a WAIT released because its primary was demoted in a failover, after the
    save script ran) is a connection lost after sending, settled by reading back, not a
    refusal: "refused the save" was false, and saving the record again then conflicted with
    the write that had landed."""
    failure = Failure("RedisCluster", StorageURL.parse("redis+cluster://127.0.0.1:7000/"), "save")
    unblocked = ResponseError(
        "UNBLOCKED force unblock from blocking operation, instance state changed "
        "(master -> replica?)"
    )
    mapped, lost = translate(unblocked, failure)
    assert (type(mapped), lost) == (StorageConnectionError, True)
    assert "demoted" in str(mapped)


def test_a_save_whose_primary_is_demoted_while_it_waits_for_replicas_is_settled(
    cluster: servers.TempRedisCluster,
) -> None:
    """A primary stopped with a save (script and WAIT) queued, its replica promoted, then
    resumed: it runs the script and its WAIT is released (UNBLOCKED), or it learns of the
    failover first and redirects the script. Either way the save ends written on the
    promoted primary, never reported refused."""
    options = {"buckets": 1, "wait_replicas": 1, "wait_timeout": 5000, "socket_timeout": 60}
    url = cluster.url(f"demoted{uuid4().hex[:8]}", **options)

    class Item(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=url, external_name="Item")
        n: int

    async def main() -> None:
        with Storage():
            await Item(n=0).asave()  # learns the topology
            async with _connected(url) as backend:
                owner = backend._connected_cluster().get_node_from_key(backend.index_key("Item"))
                assert owner is not None
            replica = cluster.replica_of(owner.port)
            with cluster.paused(owner.port):
                saving = asyncio.create_task(Item(n=1).asave())
                await asyncio.to_thread(_wait_promoted_seen_from, cluster, replica)
            reference = await saving
            assert (await Item.aload(reference)).n == 1  # type: ignore[attr-defined]
            await pydantic_toast.aclose_storage()

    asyncio.run(main())


def _wait_promoted_seen_from(cluster: servers.TempRedisCluster, port: int) -> None:
    """Until the replica on ``port`` calls itself a primary (asked of it: a stopped node
    would not answer ``cluster.nodes()``)."""
    deadline = time.monotonic() + 60
    while "myself,master" not in cluster.redis_cli("cluster", "nodes", port=port):
        assert time.monotonic() < deadline, f"the replica on {port} was not promoted"
        time.sleep(0.1)


@pytest.mark.parametrize("wait", [0, 1], ids=["async-replication", "wait-1-replica"])
def test_failover_during_a_workload(cluster: servers.TempRedisCluster, wait: int) -> None:
    """A primary killed under writes: its replica takes over and writes resume, no restart."""
    victim = int(cluster.primaries()[0]["port"])
    options = {"wait_replicas": wait, "wait_timeout": 500} if wait else {}
    url = cluster.url(f"failover{uuid4().hex[:8]}", **options)

    promoted: list[float] = []

    def fail_over() -> None:
        cluster.kill(victim)
        promoted.append(cluster.wait_promoted(victim))
        # The old primary comes back as a replica of the promoted one (with wait_replicas=1
        # the promoted primary's writes fail until it has a replica again).
        cluster.start_node(victim)

    figures = run_with(fail_over, url, seconds_after=3.0)
    print(f"\nfailover (wait_replicas={wait}): {figures}, promoted after {promoted[0]:.2f} s")
    cluster.wait_ok()
    assert figures["acknowledged"] > 0
    if wait:
        assert figures["lost"] == 0  # a write a replica confirmed survives the failover
    else:  # asynchronous replication: a few acknowledged writes may be lost
        assert figures["lost"] < figures["acknowledged"]


def test_wait_for_a_replica_costs_a_round_trip(cluster: servers.TempRedisCluster) -> None:
    """wait_replicas=1 saves reach a replica; its cost, interleaved with plain saves."""

    async def timed(backend: RedisClusterBackend) -> float:
        records = _records(1)
        started = time.perf_counter()
        await backend.save_records(records)
        return time.perf_counter() - started

    async def main() -> tuple[float, float, list[float], list[float]]:
        async with (
            _connected(cluster.url("costplain")) as plain,
            _connected(cluster.url("costwait", wait_replicas=1, wait_timeout=1000)) as waiting,
        ):
            a: list[float] = []
            b: list[float] = []
            for _ in range(300):
                a.append(await timed(plain))
                b.append(await timed(waiting))
            return statistics.median(a), statistics.median(b), a, b

    plain, waiting, a, b = asyncio.run(main())
    quartiles = [round(q * 1e6) for q in statistics.quantiles(a, n=4)]
    quartiles_wait = [round(q * 1e6) for q in statistics.quantiles(b, n=4)]
    print(
        f"\nsave p50 plain {plain * 1e6:.0f} us (quartiles {quartiles}), "
        f"wait_replicas=1 {waiting * 1e6:.0f} us (quartiles {quartiles_wait})"
    )
    assert waiting > 0
    assert plain > 0


def test_an_identical_record_is_a_rivals_on_the_cluster_too(
    cluster: servers.TempRedisCluster,
) -> None:
    """The cluster backend sends its save script itself, never through redis-py's cluster
    client (which resends a command after a lost connection): the same script call sent
    twice is a conflict, as on a plain server, so two writers who read the same revision and
    wrote the same document in the same microsecond never both succeed. One bucket, so each
    save is one script call."""
    from tests.integration.test_lost_replies import identical_record_scenario

    async def main() -> None:
        async with _connected(cluster.url(f"repeat{uuid4().hex[:8]}", buckets=1)) as backend:
            await identical_record_scenario(backend)

    asyncio.run(main())


def test_a_command_redis_py_gave_up_on_during_a_migration_is_busy() -> None:
    """redis-py's cluster client raises ClusterError after 16 redirections or TRYAGAIN
    replies (reads still go through it): StorageBusyError, "retry", never retried here."""
    failure = Failure("RedisCluster", StorageURL.parse("redis+cluster://127.0.0.1:7000/"), "load")
    mapped, retried = translate(ClusterError("TTL exhausted."), failure)
    assert (type(mapped), retried) == (StorageBusyError, False)
    assert "slot is being migrated" in str(mapped)
    assert "retry" in str(mapped)


def test_writes_whose_reply_is_lost_are_never_resent() -> None:
    """A one-node cluster announcing a fault proxy's port, so that every command goes through
    the proxy, which loses one reply after the server ran the command. A delete whose reply
    is lost raises OutcomeUnknownError (before: redis-py's cluster client resent it, and the
    resend of the delete that had landed answered "not found"); a save whose reply is lost
    is settled by reading back (stored as written: it succeeded, once)."""
    from tests.fault_proxy import FaultProxy

    try:
        node = servers.TempRedisCluster(primaries=1, replicas=0)
    except FileNotFoundError:
        servers.missing_server("Redis Cluster", "(no variable: needs redis-server)")
        return
    try:
        (port,) = node.ports
        with FaultProxy("127.0.0.1", port) as proxy:
            node.redis_cli("config", "set", "cluster-announce-port", str(proxy.port), port=port)
            url = f"redis+cluster://127.0.0.1:{proxy.port}/?prefix=lost{uuid4().hex[:8]}"

            class Note(ExternalBaseModel):
                model_config = ExternalConfigDict(storage=url, external_name="Note")
                text: str

            async def main() -> None:
                with Storage():
                    reference = await Note(text="first").asave()
                    note = await Note.aload(reference)
                    note.text = "second"  # type: ignore[attr-defined]
                    proxy.lose_reply_to(_sha(cluster_backend._SAVE_SCRIPT))
                    await note.asave()  # settled by reading back
                    assert proxy.replies_lost == 1
                    loaded = await Note.aload(reference)
                    assert (loaded.text, loaded.external_revision) == ("second", 2)  # type: ignore[attr-defined]
                    # Another delete first: the script loaded (a NOSCRIPT reply runs nothing).
                    await pydantic_toast.adelete(Note, await Note(text="other").asave())
                    proxy.lose_reply_to(_sha(cluster_backend._DELETE_SCRIPT))
                    with pytest.raises(OutcomeUnknownError, match="lost after the delete"):
                        await pydantic_toast.adelete(Note, reference)
                    assert proxy.replies_lost == 2
                    with pytest.raises(RecordNotFoundError):  # the delete ran, once
                        await Note.aload(reference)

            asyncio.run(main())
    finally:
        node.destroy()


def _sha(script: str) -> bytes:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest().encode()


def _large(text: str, *, ttl: float | None = None, revision: int | None = 0) -> StoredRecord:
    now = datetime.now(UTC)
    data = json.dumps({"b": text}, ensure_ascii=False).encode()
    return StoredRecord("Scan", uuid4(), data, 1, now, now, ttl, revision)


def _data(text: str) -> bytes:
    return json.dumps({"b": text}, ensure_ascii=False).encode()


async def _staged_keys(backend: RedisClusterBackend) -> list[bytes]:
    client = backend._connected_cluster()
    # A large COUNT: the module's earlier tests leave tens of thousands of keys to scan past.
    pattern = f"{{{backend._prefix}:*:staged:*"
    return [key async for key in client.scan_iter(match=pattern, count=100_000)]


def test_a_large_record_is_staged_in_its_slot_and_read_in_pieces(
    cluster: servers.TempRedisCluster,
) -> None:
    """A 3 MB record of multi-byte text (staged in 1 MiB pieces on its slot's primary, read
    back in pieces) is one permanent JSON document that loads exactly; an update counts its
    revision and keeps created_at, a stale one is refused; with wait_replicas=1 the large
    write reaches a replica; nothing staged is left behind."""

    async def main() -> None:
        prefix = f"large{uuid4().hex[:8]}"
        async with (
            _connected(cluster.url(prefix)) as backend,
            _connected(cluster.url(prefix, wait_replicas=1, wait_timeout=2000)) as waiting,
        ):
            client = backend._connected_cluster()
            record = _large(_multibyte(3))
            assert await backend.save_records([record]) == [1]
            key = backend.key("Scan", record.id)
            stored = json.loads(await client.get(key))
            assert (stored["revision"], stored["data"]) == (1, json.loads(record.data))
            assert await client.pttl(key) == -1, "the staged copy's expiry is not kept"
            (loaded,) = await backend.load_records([record.key])
            assert loaded is not None
            assert (loaded.data, loaded.revision) == (record.data, 1)
            update = dataclasses.replace(record, data=_data(_multibyte(3, "two")), revision=1)
            assert await waiting.save_records([update]) == [2]
            again = json.loads(await client.get(key))
            assert (again["revision"], again["created_at"]) == (2, stored["created_at"])
            (loaded,) = await waiting.load_records([record.key])
            assert loaded is not None
            assert (loaded.data, loaded.revision) == (update.data, 2)
            with pytest.raises(ConcurrencyError):
                await backend.save_records([dataclasses.replace(record, revision=1)])
            (loaded,) = await backend.load_records([record.key])
            assert loaded is not None
            assert loaded.data == update.data
            assert await _staged_keys(backend) == []

    asyncio.run(main())


def test_large_records_keep_ttl_and_batch_with_small_ones(
    cluster: servers.TempRedisCluster,
) -> None:
    """Batches with large records (staged in pieces) and small ones (in the script's
    arguments), within one bucket and across buckets, write them all with the model's expiry
    and count them; each loads exactly; a stale batch writes nothing; nothing staged is left
    behind."""

    async def main() -> None:
        async with (
            _connected(cluster.url(f"mixone{uuid4().hex[:8]}", buckets=1)) as one,
            _connected(cluster.url(f"mixmany{uuid4().hex[:8]}")) as many,
        ):
            for backend in (one, many):
                client = backend._connected_cluster()
                records = [
                    _large(_multibyte(1.5, "a"), ttl=60.0),
                    _large("small", ttl=60.0),
                    _large(_multibyte(2, "b"), ttl=60.0),
                ]
                # Random ids: all three in one of many's buckets now and then (CI met it).
                while backend is many and len({backend.bucket(r.id) for r in records}) == 1:
                    records[0] = _large(_multibyte(1.5, "a"), ttl=60.0)
                assert await backend.save_records(records) == [1, 1, 1]
                for record in records:
                    assert 0 < await client.pttl(backend.key("Scan", record.id)) <= 60_000
                    (loaded,) = await backend.load_records([record.key])
                    assert loaded is not None
                    assert loaded.data == record.data
                assert await backend.count("Scan") == 3
                stale = [dataclasses.replace(r, data=b'{"b":"lost"}') for r in records]
                stale[0] = dataclasses.replace(stale[0], revision=1)
                stale[-1] = dataclasses.replace(stale[-1], revision=5)
                with pytest.raises(ConcurrencyError):
                    await backend.save_records(stale)
                loaded_all = await backend.load_records([r.key for r in records])
                assert [r.data for r in loaded_all if r is not None] == [r.data for r in records]
                assert await _staged_keys(backend) == []

    asyncio.run(main())


def test_a_large_save_cancelled_while_staging_leaves_the_record_and_no_staged_copy(
    cluster: servers.TempRedisCluster,
) -> None:
    """Cancelled while its pieces are being written, a save of a large record leaves the
    record as it was and deletes its staged copy (staged under the record's hash tag, in its
    slot); the next save writes."""

    async def main() -> None:
        async with _connected(cluster.url(f"cancel{uuid4().hex[:8]}")) as backend:
            client = backend._connected_cluster()
            for _ in range(5):
                record = _large("a" * 2_000_000)
                await backend.save_records([record])
                key = backend.key("Scan", record.id)
                big = b'{"b":"%b"}' % (b"b" * 60_000_000)
                big_record = dataclasses.replace(record, data=big, revision=1)
                task = asyncio.create_task(backend.save_records([big_record]))
                staged = []
                while not task.done():
                    staged = await _staged_keys(backend)
                    if staged:
                        task.cancel()  # at once: no await between seeing the copy and this
                        break
                    await asyncio.sleep(0.001)
                try:
                    await task  # raises the save's error, if it failed
                except asyncio.CancelledError:
                    assert await _staged_keys(backend) == [], "staged copy left"
                    (loaded,) = await backend.load_records([record.key])
                    assert loaded is not None
                    if loaded.revision == 1:
                        break
                    # Landed once the script moving the staged copy in was sent: whole.
                    assert (loaded.revision, len(loaded.data)) == (2, len(big)), "mixed"
                # The save finished before its staged copy was seen, or before the cancellation
                # landed (the machine was fast, or busy): once more, on a record of its own.
            else:
                pytest.fail("five saves finished before their cancellation landed")
            assert staged[0].startswith(key.encode() + b":staged:")
            slot = await client.cluster_keyslot(key)
            assert await client.cluster_keyslot(staged[0].decode()) == slot
            assert loaded.data == record.data, "the record changed"
            final = dataclasses.replace(record, data=b'{"b":"%b"}' % (b"c" * 3_000_000), revision=1)
            assert await backend.save_records([final]) == [2]
            (loaded,) = await backend.load_records([record.key])
            assert loaded is not None
            assert loaded.data == final.data

    asyncio.run(main())


def test_a_large_record_rewritten_while_it_is_read_loads_one_whole_version(
    cluster: servers.TempRedisCluster,
) -> None:
    """Loads in pieces racing a writer that keeps replacing the record each return one
    version whole (a load that saw the record change reads it again), never a mix."""

    async def main() -> None:
        async with _connected(cluster.url(f"race{uuid4().hex[:8]}")) as backend:
            versions = [b'{"b":"%b"}' % (letter * 3_000_000) for letter in (b"x", b"y")]
            loads = await loads_while_rewritten(backend, _large("", revision=None), versions)
            assert all(loaded.data in versions for loaded in loads)
            assert len({loaded.revision for loaded in loads}) > 1, "no load met a rewrite"

    asyncio.run(main())


def test_a_large_record_follows_its_slot_moved_behind_the_clients_back(
    cluster: servers.TempRedisCluster,
) -> None:
    """The slot of a large record moved to another primary without the client knowing: the
    staging, answered MOVED, is sent again to the new owner and the save writes; a load after
    a second move reads the record exactly from its new owner; nothing staged is left."""

    async def main() -> None:
        async with _connected(cluster.url(f"moved{uuid4().hex[:8]}")) as backend:
            client = backend._connected_cluster()
            record = _large(_multibyte(2, "one"))
            assert await backend.save_records([record]) == [1]
            key = backend.key("Scan", record.id)
            slot = await client.cluster_keyslot(key)
            ports = [int(p["port"]) for p in cluster.primaries()]

            async def move() -> None:
                owner = client.get_node_from_key(key)
                assert owner is not None
                target = next(port for port in ports if port != owner.port)
                await asyncio.to_thread(cluster.move_slot, slot, owner.port, target)

            await move()
            update = dataclasses.replace(record, data=_data(_multibyte(2, "two")), revision=1)
            assert await backend.save_records([update]) == [2]
            await move()
            (loaded,) = await backend.load_records([record.key])
            assert loaded is not None
            assert (loaded.data, loaded.revision) == (update.data, 2)
            assert await _staged_keys(backend) == []

    asyncio.run(main())


@pytest.mark.parametrize("wait", [0, 1], ids=["no-wait", "wait-1-replica"])
def test_large_saves_and_loads_go_through_a_slot_migration(
    cluster: servers.TempRedisCluster, wait: int
) -> None:
    """Large saves into a slot held MIGRATING (their staging answered ASK, their script
    TRYAGAIN) wait for the migration and write once it ends, whole: an update of a record
    still on the old owner, a new record, an update of a record already moved to the new
    owner; a load of a moved record (ASK) reads it exactly; nothing staged is left."""

    async def main() -> None:
        async with _connected(cluster.url(f"ask{uuid4().hex[:8]}", wait_replicas=wait)) as backend:
            client = backend._connected_cluster()
            record = _large(_multibyte(2, "one"))
            assert await backend.save_records([record]) == [1]
            key = backend.key("Scan", record.id)
            slot = await client.cluster_keyslot(key)
            owner = client.get_node_from_key(key)
            assert owner is not None
            target = next(
                int(p["port"]) for p in cluster.primaries() if p["port"] != str(owner.port)
            )
            # A new record in the same bucket (the same slot).
            fresh = dataclasses.replace(_large(_multibyte(1.5, "new")), id=record.id)
            while True:
                fresh = dataclasses.replace(fresh, id=uuid4())
                if backend.bucket(fresh.id) == backend.bucket(record.id):
                    break
            update = dataclasses.replace(record, data=_data(_multibyte(2, "two")), revision=1)
            await asyncio.to_thread(cluster.start_migration, slot, owner.port, target)
            try:
                saves = asyncio.gather(
                    backend.save_records([update]), backend.save_records([fresh])
                )
                await asyncio.sleep(0.5)
                assert not saves.done(), "the saves did not meet the migration"
                await asyncio.to_thread(cluster.migrate_keys, slot, owner.port, target)
                (loaded,) = await backend.load_records([record.key])  # on the target: ASK
                assert loaded is not None
                assert (loaded.data, loaded.revision) == (record.data, 1)
            finally:
                await asyncio.to_thread(cluster.finish_migration, slot, owner.port, target)
            assert await saves == [[2], [1]]
            for expected, revision in ((update, 2), (fresh, 1)):
                stored = json.loads(await client.get(backend.key("Scan", expected.id)))
                assert (stored["revision"], stored["data"]) == (revision, json.loads(expected.data))
            assert await _staged_keys(backend) == []
            # Again while the record is already on the new owner, the slot still migrating.
            await asyncio.to_thread(cluster.start_migration, slot, target, owner.port)
            again = dataclasses.replace(update, data=_data(_multibyte(2, "three")), revision=2)
            try:
                saving = asyncio.ensure_future(backend.save_records([again]))
                await asyncio.to_thread(cluster.migrate_keys, slot, target, owner.port)
                await asyncio.sleep(0.5)
                assert not saving.done(), "the save did not meet the migration"
            finally:
                await asyncio.to_thread(cluster.finish_migration, slot, target, owner.port)
            assert await saving == [3]
            (loaded,) = await backend.load_records([record.key])
            assert loaded is not None
            assert (loaded.data, loaded.revision) == (again.data, 3)
            assert await _staged_keys(backend) == []

    asyncio.run(main())


def test_a_batch_load_reads_large_documents_in_pieces_on_each_slot(
    cluster: servers.TempRedisCluster,
) -> None:
    """A batch load of records above 1 MiB and small ones over several slots returns each
    exactly, holding a 20 MB document about twice at most (pieces, then the joined data),
    not three times; batch loads racing a writer that keeps replacing a large record each
    return one version whole; after the record's slot moved behind the client's back, and
    while it is being migrated back (ASK), the batch reads it from its new owner."""

    async def main() -> None:
        async with _connected(cluster.url(f"batch{uuid4().hex[:8]}")) as backend:
            client = backend._connected_cluster()
            texts = [_multibyte(20, "a"), "small", _multibyte(2, "b"), "tiny", "s"]
            records = [_large(text) for text in texts]
            for record in records:
                await backend.save_records([record])
            assert (
                len({await client.cluster_keyslot(backend.key("Scan", r.id)) for r in records}) > 1
            )
            wanted = [r.key for r in records] + [("Scan", uuid4())]
            loaded, peak = await traced_peak(lambda: backend.load_records(wanted))
            assert [r.data if r else None for r in loaded] == [r.data for r in records] + [None]
            largest = len(records[0].data)
            assert peak < 2.3 * largest + 3 * len(records[2].data), f"{peak / largest:.2f}x"

            versions = [b'{"b":"%b"}' % (letter * 3_000_000) for letter in (b"x", b"y")]
            raced = dataclasses.replace(records[2], revision=None)
            loads = await loads_while_rewritten(
                backend, raced, versions, 20, alongside=[records[1].key]
            )
            assert all(r.data in versions for r in loads)
            assert len({r.revision for r in loads}) > 1, "no load met a rewrite"

            key = backend.key("Scan", raced.id)
            slot = await client.cluster_keyslot(key)
            owner = client.get_node_from_key(key)
            assert owner is not None
            target = next(
                int(p["port"]) for p in cluster.primaries() if int(p["port"]) != owner.port
            )
            await asyncio.to_thread(cluster.move_slot, slot, owner.port, target)
            batch = await backend.load_records([raced.key, records[1].key])
            (current,) = await backend.load_records([raced.key])
            assert current is not None
            assert [r.data if r else None for r in batch] == [current.data, records[1].data]
            await asyncio.to_thread(cluster.start_migration, slot, target, owner.port)
            try:
                await asyncio.to_thread(cluster.migrate_keys, slot, target, owner.port)
                batch = await backend.load_records([raced.key, records[1].key])  # ASK
            finally:
                await asyncio.to_thread(cluster.finish_migration, slot, target, owner.port)
            assert [r.data if r else None for r in batch] == [current.data, records[1].data]

    asyncio.run(main())


def test_small_saves_batch_loads_and_pages_go_through_a_slot_migration(
    cluster: servers.TempRedisCluster,
) -> None:
    """While a slot is held migrating, with its keys on the old owner, split between the
    two nodes (the index on either side) and all moved: small saves wait for the migration
    and write once it ends; batch and single loads return every record exactly at once
    (a large one found on the new node too); pages
    wait for the migration (their script, run on either node, would miss or be refused
    records not on it) and list every record exactly once it ends; a delete waits too."""

    async def main() -> None:
        async with _connected(cluster.url(f"mig{uuid4().hex[:8]}", buckets=1)) as backend:
            client = backend._connected_cluster()
            start = datetime.now(UTC)
            texts = ["a", "b", _multibyte(3, "big"), "c", "d", "e"]
            records = [
                dataclasses.replace(_large(text), created_at=start + timedelta(seconds=offset))
                for offset, text in enumerate(texts)
            ]
            big = records[2]
            fresh = dataclasses.replace(_large("fresh"), created_at=start - timedelta(hours=1))
            updates = [
                dataclasses.replace(records[0], data=_data("a2"), revision=1),
                dataclasses.replace(records[3], data=_data("c2"), revision=1),
                fresh,
            ]
            for record in records:
                assert await backend.save_records([record]) == [1]
            names = [backend.key("Scan", r.id) for r in records]
            slot = await client.cluster_keyslot(names[0])
            owner = client.get_node_from_key(names[0])
            assert owner is not None
            target = next(
                int(p["port"]) for p in cluster.primaries() if int(p["port"]) != owner.port
            )
            wanted = [r.key for r in records] + [("Scan", uuid4())]
            saves: list[asyncio.Future[Any]] = []
            pages: list[asyncio.Future[list[StoredRecord]]] = []

            def save() -> None:
                record = updates[len(saves)]
                saves.append(asyncio.ensure_future(backend.save_records([record])))

            def page(limit: int) -> None:
                pages.append(asyncio.ensure_future(backend.list_records("Scan", limit=limit)))

            async def exactly(keys: list[RecordKey]) -> None:
                loaded = await backend.load_records(keys)
                expected = {r.key: r.data for r in records}
                assert [r.data if r else None for r in loaded] == [expected.get(k) for k in keys]

            await asyncio.to_thread(cluster.start_migration, slot, owner.port, target)
            try:
                save()  # every key still on the old owner
                await exactly(wanted)
                # Split: two records moved, the index not yet (a page's script on the old
                # owner is refused them), then the index too (a page's script on the new
                # owner would read the newest record, not moved, as missing).
                await asyncio.to_thread(cluster.migrate_keys, slot, owner.port, target, names[1:3])
                save()
                await exactly(wanted)
                await exactly([big.key])
                page(10)
                index = backend.index_key("Scan")
                await asyncio.to_thread(cluster.migrate_keys, slot, owner.port, target, [index])
                await exactly(wanted)
                page(10)
                page(1)
                # Every key moved, the slot still migrating.
                await asyncio.to_thread(cluster.migrate_keys, slot, owner.port, target)
                save()
                await exactly(wanted)
                page(10)
                # A delete waits too (sent by the backend itself, as saves are).
                doomed = records[4]
                deleted = asyncio.ensure_future(backend.delete(doomed.id, "Scan"))
                await asyncio.sleep(0.5)
                waiting = (*saves, *pages, deleted)
                assert [task for task in waiting if task.done()] == [], "no wait"
            finally:
                await asyncio.to_thread(cluster.finish_migration, slot, owner.port, target)
            assert await asyncio.gather(*saves) == [[2], [2], [1]]
            assert await deleted is True
            assert await backend.load_records([doomed.key]) == [None]
            # Pages and the delete waited for the same migration: a page lists the
            # deleted record or not, and every other one in order.
            newest = [r.id for r in reversed(records) if r.id != doomed.id]
            versions = {r.id: {r.data} for r in records}
            for update in updates[:2]:
                versions[update.id].add(update.data)
            for listed in await asyncio.gather(*pages):
                ids = [r.id for r in listed if r.id not in (fresh.id, doomed.id)]
                assert ids == newest[: len(ids)], "a page missed a record"
                assert all(r.data in versions.get(r.id, {fresh.data}) for r in listed)
            loaded = await backend.load_records([u.key for u in updates])
            assert [(r.data, r.revision) if r else None for r in loaded] == [
                (u.data, 1 if u is fresh else 2) for u in updates
            ]

    asyncio.run(main())


def test_a_page_reads_large_documents_in_pieces_exactly(cluster: servers.TempRedisCluster) -> None:
    """A page over every bucket holding records above 1 MiB and small ones lists them all,
    newest first, each exactly (the rest of each large one read on its slot's primary)."""

    async def main() -> None:
        async with _connected(cluster.url(f"page{uuid4().hex[:8]}")) as backend:
            start = datetime.now(UTC)
            texts = [_multibyte(3, "a"), "small", _multibyte(2, "b"), _multibyte(1.5, "c")]
            records = [
                dataclasses.replace(_large(text), created_at=start + timedelta(seconds=offset))
                for offset, text in enumerate(texts)
            ]
            for record in records:
                await backend.save_records([record])
            assert len({backend.bucket(r.id) for r in records}) > 1
            page = await backend.list_records("Scan", limit=10)
            newest = list(reversed(records))
            assert [(r.id, r.data) for r in page] == [(r.id, r.data) for r in newest]
            first = await backend.list_records("Scan", limit=2)
            second = await backend.list_records("Scan", limit=2, after=PageCursor.of(first[-1]))
            assert [r.data for r in first + second] == [r.data for r in newest]

    asyncio.run(main())
