"""postgresql:// with replicas=: reads on a streaming replica made by pg_basebackup -R.

A throwaway primary and its hot standby, both local. Pausing the standby's replay makes
"which server answered" visible: a record written since the pause exists on the primary only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    read_primary,
)
from pydantic_toast.backends.postgresql_replicas import RETRY_AFTER
from pydantic_toast.backends.sql_table import TABLE_NAME
from pydantic_toast.integrations.cli import main as toast_cli
from pydantic_toast.runtime.storage import Storage
from tests import servers

pytestmark = [pytest.mark.slow, pytest.mark.postgresql]


class Pair:
    """The primary and its replica, and helpers to keep them in step."""

    def __init__(self) -> None:
        self.primary = servers.TempPostgres()
        self.replica: servers.TempPostgresReplica | None = None
        self.primary.start()
        assert toast_cli(["migrate", self.primary.url()]) == 0
        self.replica = servers.TempPostgresReplica(self.primary)
        self.replica.start()
        self.caught_up()

    def url(self, **options: object) -> str:
        assert self.replica is not None
        extra = "".join(f"&{name}={value}" for name, value in options.items())
        return f"{self.primary.url()}?replicas=127.0.0.1:{self.replica.port}{extra}"

    def caught_up(self, timeout: float = 30) -> None:
        """Wait until the replica has replayed everything the primary wrote so far."""
        assert self.replica is not None

        async def run() -> None:
            primary = await asyncpg.connect(self.primary.url())
            replica = await asyncpg.connect(self.replica.url())  # type: ignore[union-attr]
            try:
                target = await primary.fetchval("SELECT pg_current_wal_lsn()")
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    done = await replica.fetchval(
                        "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target
                    )
                    if done:
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError("the replica did not catch up")
            finally:
                await primary.close()
                await replica.close()

        asyncio.run(run())

    def destroy(self) -> None:
        if self.replica is not None:
            self.replica.destroy()
        self.primary.destroy()


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    try:
        pair = Pair()
    except (FileNotFoundError, KeyError):
        servers.missing_server("PostgreSQL (initdb, pg_basebackup)", "(no variable)")
        return
    try:
        yield pair
    finally:
        pydantic_toast.close_storage()
        pair.destroy()


def _model(url: str) -> Any:
    class Order(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=url, external_name=f"Order{uuid4().hex[:8]}")
        total: int

    return Order


def _paused(pair: Pair) -> Any:
    assert pair.replica is not None
    return _Paused(pair.replica)


class _Paused:
    def __init__(self, replica: servers.TempPostgresReplica) -> None:
        self.replica = replica

    def __enter__(self) -> None:
        self.replica.replay(paused=True)

    def __exit__(self, *exc: object) -> None:
        self.replica.replay(paused=False)


def test_reads_go_to_the_replica(pair: Pair) -> None:
    """With read_your_writes=0, a record written while replay is paused is not found (the
    replica answered), and is found once replay resumes."""
    Order = _model(pair.url(read_your_writes=0))
    with Storage():
        with _paused(pair):
            reference = Order(total=1).model_dump()
            with pytest.raises(RecordNotFoundError):
                Order.model_validate(reference)
            assert pydantic_toast.count(Order) == 0
            assert pydantic_toast.page(Order, limit=10).items == []
        pair.caught_up()
        assert Order.model_validate(reference).total == 1
        assert pydantic_toast.count(Order) == 1


def test_batch_loads_of_one_class_go_to_the_replica(pair: Pair) -> None:
    """A batch load of one class (its own statement) reads from the replica, and from the
    primary while one of its records was written within the read-your-writes window."""
    Order = _model(pair.url(read_your_writes=0))
    with Storage():
        with _paused(pair):
            references = pydantic_toast.dump([Order(total=n) for n in range(3)])
            with pytest.raises(RecordNotFoundError):
                pydantic_toast.validate(list[Order], references)
        pair.caught_up()
        assert [o.total for o in pydantic_toast.validate(list[Order], references)] == [0, 1, 2]
    Recent = _model(pair.url(read_your_writes=30))
    with Storage(), _paused(pair):
        written = pydantic_toast.dump([Recent(total=n) for n in range(3)])
        assert [o.total for o in pydantic_toast.validate(list[Recent], written)] == [0, 1, 2]


def test_read_your_writes_sends_recent_records_to_the_primary(pair: Pair) -> None:
    """Within the window, this process's own records, and pages and counts of their class, are
    read from the primary; another class still reads from the replica."""
    url = pair.url(read_your_writes=30)
    Order, Other = _model(url), _model(url)
    with Storage(), _paused(pair):
        reference = Order(total=7).model_dump()
        assert Order.model_validate(reference).total == 7
        assert pydantic_toast.count(Order) == 1
        assert [o.total for o in pydantic_toast.page(Order, limit=10).items] == [7]
        assert pydantic_toast.count(Other) == 0


def test_read_your_writes_counts_from_the_end_of_a_slow_write(pair: Pair) -> None:
    """A save that waited for a row lock longer than the read_your_writes window is still
    read back from the primary right after it returns (the window was counted from its
    start: the read went to the paused replica and found the old data)."""
    assert pair.replica is not None
    replica = pair.replica
    Order = _model(pair.url(read_your_writes=1))

    async def main() -> None:
        with Storage():
            order = Order(total=1)
            await order.asave()
            await asyncio.to_thread(pair.caught_up)
            locker = await asyncpg.connect(pair.primary.url())
            await asyncio.to_thread(replica.replay, paused=True)
            try:
                held = locker.transaction()
                await held.start()
                await locker.execute(
                    f"SELECT 1 FROM {TABLE_NAME} WHERE id = $1 FOR UPDATE", order.external_id
                )

                async def release() -> None:
                    await asyncio.sleep(2)
                    await held.rollback()

                releasing = asyncio.create_task(release())
                order.total = 2
                await order.asave()  # waits for the lock, past the 1 s window
                await releasing
                assert (await Order.aload(order.external_id)).total == 2
            finally:
                await asyncio.to_thread(replica.replay, paused=False)
                await locker.close()
                await pydantic_toast.aclose_storage()

    asyncio.run(main())
    pair.caught_up()


def test_reads_inside_a_transaction_run_on_its_connection(pair: Pair) -> None:
    """Inside transaction(), with read_your_writes=0 and replay paused, loads, a batch load, a
    page and a count see the transaction's uncommitted save and a record the replica has not
    replayed: they run on the transaction's connection, never on a replica."""
    Order = _model(pair.url(read_your_writes=0))
    engine = create_async_engine(
        pair.primary.url().replace("postgresql://", "postgresql+asyncpg://")
    )

    async def main() -> None:
        committed = Order(total=1)
        await committed.asave()
        with pytest.raises(RecordNotFoundError):  # outside the transaction: the replica answers
            await Order.aload(committed.external_id)
        async with engine.connect() as connection, connection.begin() as begun:
            async with pydantic_toast.transaction(connection):
                pending = Order(total=2)
                await pending.asave()
                assert (await Order.aload(pending.external_id)).total == 2
                assert (await Order.aload(committed.external_id)).total == 1
                both = await pydantic_toast.avalidate(
                    list[Order], [committed.model_dump(), pending.model_dump()]
                )
                assert [order.total for order in both] == [1, 2]
                assert sorted(order.total for order in await pydantic_toast.apage(Order)) == [1, 2]
                assert await pydantic_toast.acount(Order) == 2
            await begun.rollback()
        await engine.dispose()
        await pydantic_toast.aclose_storage()

    with Storage(), _paused(pair):
        asyncio.run(main())
    pair.caught_up()


def test_read_your_writes_counts_from_the_commit_of_a_transaction(pair: Pair) -> None:
    """A record saved in a transaction committed longer than read_your_writes after the save
    is read back from the primary right after the commit (the window was counted from the
    save: the read went to the paused replica, which had not seen the commit)."""
    Order = _model(pair.url(read_your_writes=1))
    engine = create_async_engine(
        pair.primary.url().replace("postgresql://", "postgresql+asyncpg://")
    )

    async def main() -> None:
        async with engine.connect() as connection:
            async with connection.begin(), pydantic_toast.transaction(connection):
                order = Order(total=5)
                await order.asave()
                await asyncio.sleep(1.5)  # past the window, before the commit
            assert (await Order.aload(order.external_id)).total == 5
        await engine.dispose()
        await pydantic_toast.aclose_storage()

    with Storage(), _paused(pair):
        asyncio.run(main())
    pair.caught_up()


def test_read_primary_block_reads_the_primary(pair: Pair) -> None:
    """Inside read_primary(), even read_your_writes=0 reads see the primary's latest data."""
    Order = _model(pair.url(read_your_writes=0))
    with Storage(), _paused(pair):
        reference = Order(total=3).model_dump()
        with read_primary():
            assert Order.model_validate(reference).total == 3
            assert pydantic_toast.count(Order) == 1
        with pytest.raises(RecordNotFoundError):
            Order.model_validate(reference)


def test_reads_fail_over_to_the_primary_while_the_replica_is_down(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica stopped: every read is served by the primary, without an error; once it is
    back and RETRY_AFTER has passed, reads go to the replica again."""
    assert pair.replica is not None
    Order = _model(pair.url(read_your_writes=0))
    with Storage():
        references = [Order(total=i).model_dump() for i in range(20)]
        pair.caught_up()
        assert Order.model_validate(references[0]).total == 0  # the replica is in use
        pair.replica.stop()
        try:
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="pydantic_toast"):
                loaded = [Order.model_validate(r).total for r in references]
            first_round = time.monotonic() - started
            assert loaded == list(range(20))
            assert pydantic_toast.count(Order) == 20
            assert any("read replica" in m and "unavailable" in m for m in caplog.messages)
            assert all("postgres:postgres" not in m for m in caplog.messages)
        finally:
            pair.replica.start()
        print(f"\n20 loads with the replica down: {first_round:.3f} s, 0 errors")
        pair.caught_up()
        time.sleep(RETRY_AFTER)
        with _paused(pair):
            fresh = Order(total=99).model_dump()
            with pytest.raises(RecordNotFoundError):  # the replica answers again
                Order.model_validate(fresh)
        pair.caught_up()
