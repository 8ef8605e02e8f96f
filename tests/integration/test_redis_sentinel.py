"""redis+sentinel:// on a real local setup: 1 primary, 1 replica and 3 sentinels."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Iterator
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageConnectionError
from pydantic_toast.backends.redis_sentinel import PRIMARY_CHECK_EVERY
from pydantic_toast.runtime.storage import Storage
from pydantic_toast.testing.conformance import BackendConformance
from tests import servers
from tests.failover import run_with

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@contextlib.contextmanager
def sentinel_setup(**passwords: str) -> Iterator[servers.TempRedisSentinel]:
    """A primary, a replica and 3 sentinels of their own (``password``, ``sentinel_password``),
    torn down afterwards; without redis-server, the test is skipped (failed in CI)."""
    try:
        setup = servers.TempRedisSentinel(**passwords)
    except FileNotFoundError:
        servers.missing_server("Redis Sentinel", "(no variable: needs redis-server)")
        raise
    try:
        yield setup
    finally:
        setup.destroy()


@pytest.fixture(scope="module")
def sentinel() -> Iterator[servers.TempRedisSentinel]:
    """The module's Sentinel setup, shared by the tests that leave its roles as they were."""
    with sentinel_setup() as setup:
        yield setup


class TestRedisSentinelConformance(BackendConformance):
    """The backend conformance suite against redis+sentinel://."""

    @pytest.fixture
    def storage_url(self, sentinel: servers.TempRedisSentinel) -> str:  # type: ignore[override]
        """A fresh key prefix on the Sentinel-managed primary."""
        return sentinel.url(f"conf{uuid4().hex[:10]}")


def test_records_are_written_on_the_primary_the_sentinels_name(
    sentinel: servers.TempRedisSentinel,
) -> None:
    """A save lands on the current primary, under the Redis backend's key layout."""
    prefix = f"where{uuid4().hex[:8]}"

    class Note(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=sentinel.url(prefix), external_name="Note")
        text: str

    with Storage():
        reference = Note(text="hello").model_dump()
    key = f"{prefix}:Note:{reference['id']}"
    assert sentinel.redis_cli("exists", key, port=sentinel.primary_port()).strip() == "1"


def test_an_unknown_service_names_the_fix(sentinel: servers.TempRedisSentinel) -> None:
    """A service no sentinel monitors fails with a connection error that says what to check."""
    url = sentinel.url("x").replace(f"/{sentinel.SERVICE}/", "/nosuchservice/")

    class Lost(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=url, external_name="Lost")
        text: str

    with Storage(), pytest.raises(StorageConnectionError, match="service name"):
        Lost(text="x").model_dump()


def test_failover_during_a_workload(sentinel: servers.TempRedisSentinel) -> None:
    """The primary killed under writes: the sentinels promote the replica and writes resume
    on it without an app restart; the old primary comes back as a replica."""
    victim = sentinel.primary_port()
    promoted: list[float] = []

    def fail_over() -> None:
        sentinel.kill(victim)
        promoted.append(sentinel.wait_promoted(victim))
        sentinel.start_data_node(victim)

    figures = run_with(fail_over, sentinel.url(f"failover{uuid4().hex[:8]}"), seconds_after=3.0)
    print(f"\nSentinel failover: {figures}, promoted after {promoted[0]:.2f} s")
    assert promoted, sentinel.switches()  # every sentinel named a primary other than the victim
    # Under load the sentinels may fail over again later (back to the restarted node, seen in
    # CI at load ~15): what must hold then is that the pair is whole, one primary and a synced
    # replica, whichever node is which.
    new_primary = sentinel.primary_port()
    replica = next(port for port in sentinel.data_ports if port != new_primary)
    sentinel.wait_replica_synced(replica)
    assert figures["acknowledged"] > 0
    assert figures["lost"] < figures["acknowledged"]  # asynchronous replication: a few may go
    assert asyncio.run(_ping(sentinel)) is True
    gc.collect()  # a connection left open fails the test here (a ResourceWarning), not later


def test_sentinels_and_data_nodes_with_different_passwords() -> None:
    """The URL's password reaches the data nodes and sentinel_password the sentinels (each
    requires its own): records round-trip, and neither password shows in the backend."""
    with sentinel_setup(password="data-pw-1", sentinel_password="watch-pw-2") as setup:
        url = setup.url(f"auth{uuid4().hex[:8]}")

        class Secret(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=url, external_name="Secret")
            text: str

        with Storage() as storage:
            reference = Secret(text="kept").model_dump()
            assert Secret.model_validate(reference).text == "kept"
            shown = repr(storage) + repr(Secret.model_config)
    for secret in ("data-pw-1", "watch-pw-2"):
        assert secret not in shown


def test_concurrent_discoveries_keep_every_sentinel(sentinel: servers.TempRedisSentinel) -> None:
    """Twenty connections asking for the primary at once (10 rounds), the first sentinel
    listed down: every sentinel client stays in the list, once (redis-py's discovery, run
    concurrently, wrote the answering client over another, which was never asked again nor
    closed: the sockets left open after a failover), and the primary is found each time."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from pydantic_toast.backends.redis_sentinel import _OrderlySentinel

    async def main() -> tuple[list[int], list[list[int]], set[int]]:
        addresses = [("127.0.0.1", servers.free_port())]  # nothing listens there
        addresses += [("127.0.0.1", port) for port in sentinel.sentinel_ports]
        no_retry = {"retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 2}
        manager = _OrderlySentinel(addresses, sentinel_kwargs=no_retry)
        listed = list(manager.sentinels)
        orders, primaries = [], set()
        try:
            for _ in range(10):  # each round from the listed order, the dead sentinel first
                manager.sentinels[:] = listed
                found = await asyncio.gather(
                    *(manager.discover_master(sentinel.SERVICE) for _ in range(20))
                )
                orders.append(sorted(id(client) for client in manager.sentinels))
                primaries |= {port for _, port in found}
            return sorted(id(client) for client in listed), orders, primaries
        finally:
            manager.sentinels[:] = listed
            await manager.aclose()

    # After the failover test the sentinels may still be switching (under load they were seen
    # to fail over again, back to the restarted node): start from a primary they all name.
    settled = sentinel.primary_port()
    sentinel.wait_primary_known(settled)
    clients, orders, primaries = asyncio.run(main())
    assert orders == [clients] * 10
    if sentinel.primary_port() == settled:  # no failover during the rounds
        assert primaries == {settled}
    else:
        assert primaries <= set(sentinel.data_ports)


async def _ping(sentinel: servers.TempRedisSentinel) -> bool:
    from pydantic_toast.backends.redis_sentinel import RedisSentinelBackend

    backend = RedisSentinelBackend(sentinel.url("ping"))
    await backend.connect()
    try:
        return bool(await backend._connected().ping())
    finally:
        await backend.disconnect()


def test_a_save_on_a_connection_to_a_demoted_primary_lands_on_the_new_one() -> None:
    """The primary demoted while the pool holds a connection to it (no disconnect: roles
    swapped by hand, the sentinels told): the save's READONLY reply drops that connection,
    as redis-py does, and the save is settled on the primary the sentinels now name, instead
    of failing with "a read-only replica: point the storage URL at the primary"."""
    with sentinel_setup() as setup:  # its own: the roles are swapped
        old, new = setup.data_ports
        setup.wait_primary_known(old)

        class Note(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=setup.url("demoted"), external_name="Note")
            text: str

        with Storage():
            first = Note(text="before").model_dump()  # the pool now holds a connection to old
            setup.redis_cli("replicaof", "no", "one", port=new)
            setup.redis_cli("replicaof", "127.0.0.1", str(new), port=old)
            for port in setup.sentinel_ports:
                setup.redis_cli("sentinel", "remove", setup.SERVICE, port=port)
                setup.redis_cli(
                    "sentinel", "monitor", setup.SERVICE, "127.0.0.1", str(new), "2", port=port
                )
            assert setup.primary_port() == new
            second = Note(text="after").model_dump()
            assert Note.model_validate(second).text == "after"
            assert Note.model_validate(first).text == "before"
        key = f"demoted:Note:{second['id']}"
        assert setup.redis_cli("exists", key, port=new).strip() == "1"


def test_a_primary_back_from_a_pause_gets_no_writes_after_the_failover() -> None:
    """The primary stopped (a pause, a partition) while the sentinels promote its replica,
    then resumed: it stays a primary until the sentinels demote it (up to 10 s), and drops
    what it acknowledged meanwhile. Saves made once the sentinels were asked again go to the
    promoted primary and survive (pooled connections to the old one kept taking them, and
    every one was lost)."""
    with sentinel_setup() as setup:  # its own: the roles are swapped
        old = setup.data_ports[0]
        setup.wait_primary_known(old)
        url = setup.url(f"paused{uuid4().hex[:8]}")

        class Note(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=url, external_name="Note")
            text: str

        async def main() -> None:
            with Storage():
                # Several pooled connections to the primary, idle when it is paused.
                await asyncio.gather(*(Note(text="warm").asave() for _ in range(8)))
                process = setup.processes[old]
                process.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.to_thread(setup.wait_promoted, old)
                finally:
                    process.send_signal(signal.SIGCONT)
                await asyncio.sleep(PRIMARY_CHECK_EVERY)
                saved = await asyncio.gather(*(Note(text=f"n{i}").asave() for i in range(20)))
                await asyncio.to_thread(_demoted, setup, old)
                for reference in saved:
                    assert (await Note.aload(reference)).text.startswith("n")  # type: ignore[attr-defined]
                await pydantic_toast.aclose_storage()

        asyncio.run(main())


def _demoted(setup: servers.TempRedisSentinel, port: int) -> None:
    """Until the node on ``port`` is a replica again, synced (what it alone had is gone)."""
    deadline = time.monotonic() + 60
    while "role:slave" not in setup.redis_cli("info", "replication", port=port):
        assert time.monotonic() < deadline, f"the old primary on {port} was not demoted"
        time.sleep(0.1)
    setup.wait_replica_synced(port)
