"""The Redis backend's connection pool under cancellation: no connection lost, no waiter left
asleep while a connection is idle, first come first served."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
import redis

from pydantic_toast._records import StoredRecord
from pydantic_toast.backends.redis import RedisBackend

pytestmark = pytest.mark.redis


@pytest.fixture
def url(redis_base_url: str) -> Iterator[str]:
    """A URL with a key prefix of this test's own (its keys removed after)."""
    prefix = f"toast_test_{uuid4().hex[:10]}"
    yield f"{redis_base_url}?prefix={prefix}"
    client = redis.Redis.from_url(redis_base_url)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def opened(url: str, request: pytest.FixtureRequest) -> AsyncIterator[RedisBackend]:
    """A backend on a pool of ``request.param`` connections (pool_timeout 5 s)."""
    backend = RedisBackend(f"{url}&max_connections={request.param}&pool_timeout=5")
    await backend.connect()
    yield backend
    await backend.disconnect()


def _record(n: int, revision: int = 0) -> StoredRecord:
    """A record holding ``n``, expected at ``revision`` (0: a first save)."""
    now = datetime.now(UTC)
    return StoredRecord("Pooled", uuid4(), b'{"n":%d}' % n, 1, now, now, None, revision)


async def _checkout_times(pool: Any, waiting: dict[object, float]) -> None:
    """Make ``pool`` note in ``waiting`` when each checkout under way started."""
    checkout = pool.get_connection
    loop = asyncio.get_running_loop()

    async def timed() -> Any:
        token = object()
        waiting[token] = loop.time()
        try:
            return await checkout()
        finally:
            del waiting[token]

    pool.get_connection = timed


@pytest.mark.parametrize("opened", [1, 3], indirect=True)
async def test_a_cancellation_storm_loses_no_connection_and_strands_no_waiter(
    opened: RedisBackend,
) -> None:
    """Bursts of saves and loads on a small pool, a third of them cancelled (often twice) at
    random points: the others succeed, each reading its own replies; no waiter sleeps 0.3 s
    while a connection is idle; and afterwards every connection is idle and taken at once."""
    backend = opened
    pool: Any = backend._connected().connection_pool
    waiting: dict[object, float] = {}
    await _checkout_times(pool, waiting)
    loop = asyncio.get_running_loop()
    rng = random.Random(1405)
    stranded: list[float] = []

    async def worker(n: int) -> None:
        record = _record(n)
        assert await backend.save_records([record]) == [1]
        (loaded,) = await backend.load_records([record.key])
        assert loaded is not None
        assert (loaded.id, loaded.data) == (record.id, record.data)  # its own reply
        assert await backend.save_records([dataclasses.replace(record, revision=1)]) == [2]
        assert await backend.save_records([_record(n), _record(n + 1)]) == [1, 1]

    async def watch() -> None:
        since: float | None = None
        while True:
            await asyncio.sleep(0.002)
            if pool._available_connections and waiting:
                since = loop.time() if since is None else since
                if loop.time() - since > 0.3:
                    stranded.append(loop.time() - since)
                    since = None
            else:
                since = None

    watcher = asyncio.create_task(watch())
    try:
        for burst in range(100):
            tasks = [asyncio.create_task(worker(2 * n)) for n in range(20)]
            for victim in rng.sample(tasks, 7):
                for _ in range(rng.randrange(40)):
                    await asyncio.sleep(0)
                victim.cancel()
                for _ in range(rng.randrange(3)):
                    await asyncio.sleep(0)
                victim.cancel()  # again, in whatever the first cancellation led to
            await asyncio.wait(tasks, timeout=10)
            assert all(task.done() for task in tasks), "saves still waiting after 10 s"
            assert stranded == [], f"a waiter slept while a connection was idle (burst {burst})"
            finished = [task for task in tasks if not task.cancelled()]
            assert [task.exception() for task in finished] == [None] * len(finished)
    finally:
        watcher.cancel()
    in_use, idle = backend.pool_connections() or (None, None)
    assert in_use == 0, "connections never given back"
    size = pool.max_connections
    taken = await asyncio.wait_for(
        asyncio.gather(*(pool.get_connection() for _ in range(size))), 0.5
    )
    for connection in taken:
        await pool.release(connection)
    assert backend.pool_connections() == (0, idle)


@pytest.mark.parametrize("opened", [1], indirect=True)
async def test_a_waiter_woken_and_cancelled_at_once_hands_the_connection_on(
    opened: RedisBackend,
) -> None:
    """Two saves wait for the one connection; the first is cancelled right after the
    connection is released for it: the second gets it at once, not after pool_timeout."""
    backend = opened
    pool: Any = backend._connected().connection_pool
    held = await pool.get_connection()
    first = asyncio.create_task(backend.save_records([_record(1)]))
    second = asyncio.create_task(backend.save_records([_record(2)]))
    await asyncio.sleep(0.05)
    await pool.release(held)
    first.cancel()
    assert await asyncio.wait_for(second, 1) == [1]
    with pytest.raises(asyncio.CancelledError):
        await first
    assert backend.pool_connections() == (0, 1)


@pytest.mark.parametrize("opened", [1], indirect=True)
async def test_a_release_cancelled_again_still_gives_the_connection_back(
    opened: RedisBackend,
) -> None:
    """A save cancelled while it runs, and again while its connection is given back, leaves
    the connection to the save waiting for it."""
    backend = opened
    for delay in range(8):  # each a different point of the first save
        saving = asyncio.create_task(backend.save_records([_record(1)]))
        waiting = asyncio.create_task(backend.save_records([_record(2)]))
        for _ in range(delay):
            await asyncio.sleep(0)
        saving.cancel()
        await asyncio.sleep(0)
        saving.cancel()
        await asyncio.gather(saving, return_exceptions=True)
        assert await asyncio.wait_for(waiting, 1) == [1]
        assert backend.pool_connections() == (0, 1)


async def _client_ids(connections: list[Any]) -> list[int]:
    """The server's id of each of ``connections`` (CLIENT ID)."""
    ids = []
    for connection in connections:
        await connection.send_command("CLIENT", "ID")
        ids.append(int(await connection.read_response()))
    return ids


@pytest.mark.parametrize("opened", [2], indirect=True)
async def test_connections_the_server_killed_are_opened_afresh(
    opened: RedisBackend, redis_base_url: str
) -> None:
    """Connections killed by the server (CLIENT KILL) while held, then handed to waiting
    saves, and again while idle, are opened afresh as they are taken: every save succeeds."""
    backend = opened
    pool: Any = backend._connected().connection_pool
    killer = redis.Redis.from_url(redis_base_url)
    try:
        held = [await pool.get_connection(), await pool.get_connection()]
        saves = [asyncio.create_task(backend.save_records([_record(n)])) for n in range(6)]
        for client_id in await _client_ids(held):
            killer.client_kill_filter(_id=client_id)
        await asyncio.sleep(0.05)  # the server's close reaches the client
        for connection in held:
            await pool.release(connection)
        assert await asyncio.wait_for(asyncio.gather(*saves), 5) == [[1]] * 6
        idle = list(pool._available_connections)
        for client_id in await _client_ids(idle):
            killer.client_kill_filter(_id=client_id)
        await asyncio.sleep(0.05)
        record = _record(7)
        assert await backend.save_records([record]) == [1]
        loaded = await backend.load_records([record.key])
        assert [found.data if found else None for found in loaded] == [record.data]
        assert backend.pool_connections() == (0, 2)
    finally:
        killer.close()


async def test_waiters_cancelled_or_timed_out_leave_the_others_in_order(url: str) -> None:
    """On a one-connection pool, of four waiting saves the middle two are cancelled: the first
    and the last get the connection, in order; a save that then waits past pool_timeout fails
    as redis-py's pool fails, and the next save gets the connection at once."""
    backend = RedisBackend(f"{url}&max_connections=1&pool_timeout=0.3")
    await backend.connect()
    try:
        pool: Any = backend._connected().connection_pool
        order: list[int] = []
        held = await pool.get_connection()

        async def save(n: int) -> None:
            await backend.save_records([_record(n)])
            order.append(n)

        waiting = [asyncio.create_task(save(n)) for n in range(4)]
        await asyncio.sleep(0.05)
        waiting[1].cancel()
        waiting[2].cancel()
        await asyncio.sleep(0)
        await pool.release(held)
        await asyncio.wait_for(asyncio.gather(waiting[0], waiting[3]), 1)
        assert order == [0, 3]
        assert waiting[1].cancelled()
        assert waiting[2].cancelled()
        held = await pool.get_connection()
        with pytest.raises(redis.ConnectionError, match="No connection available"):
            await backend.save_records([_record(4)])
        await pool.release(held)
        assert await asyncio.wait_for(backend.save_records([_record(5)]), 0.1) == [1]
        assert backend.pool_connections() == (0, 1)
    finally:
        await backend.disconnect()
